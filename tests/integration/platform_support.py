"""The whole platform on the local environment, for end-to-end tests and benchmarks.

Real processes (``python -m controller serve|listen|provision``) against the real API
server + scheduler + KWOK (nodes built per pool from the stack's own builders), Redis,
the GitHub emulators (webhooks, teams, runner groups, JIT, runners) and the runner
stand-in. The dev stack's spec; the emulators are set up to match it.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis as redis_sync
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from components.controller_manifests import CONTROLLER_NAME, namespaces, rbac, service_accounts
from components.node_pools import daemonset_pods, runner_priority_class
from controller.model import PlatformSpec, load_spec
from controller.provision.leader import KIND_LABEL, SCALE_SET_ANNOTATION
from controller.provision.pod import selector
from localenv.controller_files import install_apps, prepare_teams, write_controller_files
from localenv.dry_run import Rejected, submit
from localenv.github import GitHubEmulator
from localenv.kube import ControlPlane
from localenv.kube_objects import pool_node
from localenv.process import free_port, wait_for
from tests.conftest import DEV_DOCUMENT, ROOT
from tests.integration.router_support import SECRETS

Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def kwok_spec() -> PlatformSpec:
    """The dev stack with every team's runners in container mode ``none`` (the work folder
    on an emptyDir): KWOK runs no containers and the session's cluster provisions no work
    volumes. The container modes have their own tests (test_container_*)."""
    document = copy.deepcopy(DEV_DOCUMENT)
    for team in document["teams"]:
        team["container_mode"] = "none"
        team.pop("container_modes", None)
    return load_spec(document)


def module_platform(
    request: Any,
    name: str,
    *,
    redis_url: str | None = None,
    proxy: Any = None,
    **options: Any,
) -> Iterator[Platform]:
    """A test module's platform on the session's cluster (KWOK nodes), Redis (or
    ``redis_url``), GitHub emulators and runner stand-in; with ``proxy`` (a
    ``localenv.fault_proxy.FaultProxy``) the processes reach Kubernetes through it, as the
    controller does. ``options`` go to :func:`running_platform`."""
    fixture = request.getfixturevalue
    fixture("runner_standin")  # plays the runner binary in the KWOK pods
    configure = options.pop("configure", None)

    def through_proxy(platform: Platform) -> None:
        if proxy is not None:
            kubeconfig = platform.kubeconfig_via(proxy.url)
            platform.extra_env["RUNNER_PLATFORM_KUBECONFIG"] = str(kubeconfig)
        if configure is not None:
            configure(platform)

    yield from running_platform(
        fixture("kube_nodes"),
        redis_url or fixture("redis_server").url,
        {"cloud": fixture("github_cloud"), "ghes": fixture("github_ghes")},
        fixture("tmp_path_factory").mktemp(name),
        configure=through_proxy,
        **options,
    )


def running_platform(
    kube: ControlPlane,
    redis_url: str,
    emulators: dict[str, GitHubEmulator],
    workdir: Path,
    *,
    extra_env: dict[str, str] | None = None,
    start: bool = True,
    configure: Callable[[Platform], None] | None = None,
    spec: PlatformSpec | None = None,
    nodes_per_pool: dict[str, int] | None = None,
) -> Iterator[Platform]:
    """A module's platform: Redis flushed, the cluster and emulators cleaned of runners
    before and after, the processes started (unless ``start`` is false) and stopped.
    ``spec`` replaces :func:`kwok_spec`; ``nodes_per_pool`` adds KWOK nodes (default one
    per pool; nodes stay for the session, like the first)."""
    redis_sync.Redis.from_url(redis_url).flushdb()
    platform = Platform(
        spec or kwok_spec(), kube, redis_url, emulators, workdir, dict(extra_env or {})
    )
    platform.prepare(nodes_per_pool)
    if configure is not None:
        configure(platform)
    platform.cleanup()
    if start:
        platform.start()
    try:
        yield platform
    finally:
        platform.stop()
        platform.cleanup()


ROLE_ARNS = {
    team: f"arn:aws:iam::123456789012:role/github-runner-{team}-role"
    for team in ("web", "ml", "infra")
}
MEMBERS = {"web": "alice", "ml": "rob", "infra": "sam"}
# Repositories the tests queue jobs in, per team: each team's runner group admits these.
TEAM_REPOSITORIES = {
    "web": ("acme-corp/storefront", "acme-corp/web-shop"),
    "ml": ("research/models", "research/training-gpt"),
    "infra": ("platform/deploy",),
}


@dataclass
class Platform:
    spec: PlatformSpec
    plane: ControlPlane
    redis_url: str
    emulators: dict[str, GitHubEmulator]
    workdir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    port: int = 0
    hooked: bool = False
    metrics_ports: dict[str, int] = field(default_factory=dict)  # provision process → port
    kubeconfig: Path | None = None
    token: str = ""

    # -- setting the world up --

    def prepare(self, nodes_per_pool: dict[str, int] | None = None) -> Platform:
        api = self.plane.api_client()
        core = client.CoreV1Api(api)
        objects = [
            *namespaces(self.spec),
            *service_accounts(self.spec, "arn:unused"),
            *rbac(self.spec),
        ]
        for manifest in [runner_priority_class(), *objects]:
            try:
                submit(api, manifest, dry_run=False)
            except Rejected as error:
                if error.status != 409:  # already there from an earlier test
                    raise
        for pool in self.spec.pools:
            for index in range((nodes_per_pool or {}).get(pool.name, 1)):
                node = pool_node(self.spec, pool, f"{pool.name}-node-{index}")
                try:
                    core.create_node(node)
                except client.ApiException as error:
                    if error.status != 409:
                        raise
                    continue
                # maxPods counts the pool's DaemonSet pods: occupy those slots as a real
                # node's DaemonSets do, so only the runner share is left for runners.
                for daemon in daemonset_pods(self.spec, pool):
                    core.create_namespaced_pod("kube-system", _daemon_pod(daemon, node))
        self._secrets()
        self._github()
        self._controller_kubeconfig()
        return self

    def _controller_kubeconfig(self) -> None:
        """A kubeconfig with the controller ServiceAccount's token: the processes run with
        exactly the RBAC the stack grants (controller_manifests.rbac), not as admin."""
        self.token = self.plane.service_account_token(
            self.spec.controller.namespace, CONTROLLER_NAME
        )
        self.kubeconfig = self.plane.write_kubeconfig(
            self.workdir / "controller-kubeconfig", CONTROLLER_NAME, {"token": self.token}
        )

    def kubeconfig_via(self, server: str) -> Path:
        """The controller's kubeconfig (same token) with another server, e.g. a
        ``localenv.fault_proxy`` in front of the API server; pass it to the processes as
        ``extra_env["RUNNER_PLATFORM_KUBECONFIG"]``."""
        assert self.token, "prepare() first"
        path = self.workdir / f"controller-kubeconfig-{abs(hash(server)) % 10**8}"
        return self.plane.write_kubeconfig(
            path, CONTROLLER_NAME, {"token": self.token}, server=server
        )

    def _secrets(self) -> None:
        keys = install_apps(self.spec, self.emulators)
        write_controller_files(self.workdir, self.spec, keys, SECRETS, ROLE_ARNS)

    def _github(self) -> None:
        # Only the team's repositories may use its group (the provisioner checks); an
        # earlier module of the session may have made the group open to all.
        prepare_teams(
            self.spec,
            self.emulators,
            TEAM_REPOSITORIES,
            {team: [login] for team, login in MEMBERS.items()},
        )

    def cleanup(self) -> None:
        """Leave no runner behind for the next module: the cluster and the emulators are
        shared by the whole session. Queued and running jobs are cancelled first."""
        for team in self.spec.teams:
            world = self.emulators[team.instance].world
            for job in list(world.jobs.values()):
                if job.org == team.org and job.status != "completed":
                    world.complete_job(job.id, "cancelled")
            for runner in world.org_runners(team.org):
                world.runners.pop(runner.id, None)
        core = client.CoreV1Api(self.plane.api_client())
        for team in self.spec.teams:
            core.delete_collection_namespaced_pod(
                team.namespace, label_selector=selector(), grace_period_seconds=0
            )
            core.delete_collection_namespaced_secret(team.namespace, label_selector=selector())
        wait_for(lambda: not self.pods(), 60, "runner pods deleted")

    # -- the controller processes --

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RUNNER_PLATFORM_SPEC": str(self.workdir / "spec.json"),
            "RUNNER_PLATFORM_RUNTIME": str(self.workdir / "runtime.json"),
            "RUNNER_PLATFORM_SECRETS_DIR": str(self.workdir / "secrets"),
            "RUNNER_PLATFORM_REDIS_URL": self.redis_url,
            "RUNNER_PLATFORM_HOST": "127.0.0.1",
            "RUNNER_PLATFORM_PORT": str(self.port),
            # The hooks registered below point here: the reconciler redelivers only those.
            "RUNNER_PLATFORM_PUBLIC_URL": f"http://127.0.0.1:{self.port}",
            "RUNNER_PLATFORM_KUBECONFIG": str(self.kubeconfig or self.plane.kubeconfig),
            "RUNNER_PLATFORM_GITHUB_API_URLS": ",".join(
                f"{name}={emulator.api_url}" for name, emulator in self.emulators.items()
            ),
            "RUNNER_PLATFORM_PROVISION_METRICS_PORT": str(free_port()),
            "RUNNER_PLATFORM_RESYNC": "2",
            **self.extra_env,
        }

    def start(self, *commands: str, name: str | None = None) -> Platform:
        """Start ``commands`` (default: all three); ``name`` keys a second process of one
        command (a standby replica)."""
        if not self.port:
            self.port = free_port()
        for command in commands or ("serve", "listen", "provision"):
            key = name or command
            env = self.env()
            if command == "provision":
                self.metrics_ports[key] = int(env["RUNNER_PLATFORM_PROVISION_METRICS_PORT"])
            with (self.workdir / f"{key}.log").open("ab") as log:
                self.processes[key] = subprocess.Popen(
                    [sys.executable, "-m", "controller", command],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                    start_new_session=True,
                )
        if "serve" in self.processes and (not commands or "serve" in commands):
            wait_for(self._ready, 30, "controller /readyz")
            if not self.hooked:
                for name, emulator in self.emulators.items():
                    for org in self.spec.instance(name).orgs:
                        emulator.world.add_hook(
                            f"http://127.0.0.1:{self.port}/webhooks/github/{name}",
                            SECRETS[name].decode(),
                            org=org,
                        )
                self.hooked = True
        return self

    def provision_metrics(self, key: str = "provision") -> Metrics:
        """Every sample a provision process exposes, keyed by name and sorted labels."""
        port = self.metrics_ports[key]
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def passes(self, scale_set: str, key: str = "provision") -> float:
        """Passes the provision process ``key`` has made over ``scale_set`` without error."""
        try:
            metrics = self.provision_metrics(key)
        except httpx.TransportError:
            return 0.0  # not serving yet (just started)
        labels = (("result", "ok"), ("scale_set", scale_set))
        return metrics.get(("runner_platform_provision_passes_total", labels), 0.0)

    def settle(self, scale_set: str, passes: int = 3, key: str = "provision") -> None:
        """Wait for ``passes`` more provisioner passes over ``scale_set`` (so an assertion
        that nothing more is created has seen the provisioner look, on any machine)."""
        before = self.passes(scale_set, key)
        self.wait(
            lambda: self.passes(scale_set, key) >= before + passes,
            60,
            f"{passes} more provisioner passes over {scale_set}",
        )

    def _ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self, command: str, sig: int = signal.SIGKILL) -> int:
        process = self.processes.pop(command)
        os.killpg(process.pid, sig)
        return process.wait(timeout=30)

    def stop(self) -> None:
        for command in list(self.processes):
            self.kill(command, signal.SIGTERM)

    def log(self, command: str) -> str:
        return (self.workdir / f"{command}.log").read_text(errors="replace")[-4000:]

    # -- observing --

    def pods(self, scale_set: str | None = None) -> list[Any]:
        core = client.CoreV1Api(self.plane.api_client())
        items = core.list_pod_for_all_namespaces(label_selector=selector()).items
        return [p for p in items if scale_set is None or _scale_set(p) == scale_set]

    def live_pods(self, scale_set: str) -> list[Any]:
        return [
            p
            for p in self.pods(scale_set)
            if p.metadata.deletion_timestamp is None
            and p.status.phase not in ("Succeeded", "Failed")
        ]

    def lease_holders(self) -> dict[str, str]:
        """Scale set → the identity holding its Lease ("" when released)."""
        coordination = client.CoordinationV1Api(self.plane.api_client())
        leases = coordination.list_namespaced_lease(
            self.spec.controller.namespace, label_selector=f"{KIND_LABEL}=scale-set"
        ).items
        return {
            str((lease.metadata.annotations or {}).get(SCALE_SET_ANNOTATION, "")): str(
                lease.spec.holder_identity or ""
            )
            for lease in leases
        }

    def lease_holder(self, new: bool = False, process: str = "provision") -> str | None:
        """The one identity holding every scale set's Lease (with ``new``: only if it is
        ``process``), or None."""
        holders = self.lease_holders()
        everyone = set(holders.values())
        if len(holders) < len(self.spec.scale_sets()) or len(everyone) != 1:
            return None
        holder = everyone.pop()
        running = self.processes.get(process)
        if new and (running is None or not holder.endswith(f"-{running.pid}")):
            return None
        return holder or None

    def pid_of(self, process: str) -> int:
        return self.processes[process].pid

    def wait_live(self, scale_set: str, count: int, timeout: float = 60) -> None:
        self.wait(
            lambda: len(self.live_pods(scale_set)) == count,
            timeout,
            f"{count} live runner pods in {scale_set}",
        )

    def secrets(self, namespace: str) -> list[Any]:
        core = client.CoreV1Api(self.plane.api_client())
        return core.list_namespaced_secret(namespace, label_selector=selector()).items

    def runners(self, instance: str, org: str) -> list[Any]:
        return self.emulators[instance].world.org_runners(org)

    def queue(self, team: str, labels: list[str], repo: str, sender: str | None = None) -> int:
        spec_team = next(t for t in self.spec.teams if t.name == team)
        emulator = self.emulators[spec_team.instance]
        job = emulator.world.queue_job(
            spec_team.org, repo, labels, sender or MEMBERS[team], name=f"job-{time.time_ns()}"
        )
        emulator.flush()
        return job.id

    def redis(self) -> redis_sync.Redis:
        return redis_sync.Redis.from_url(self.redis_url)

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        try:
            return wait_for(predicate, timeout, what)
        except Exception as error:
            logs = "\n".join(f"--- {c}\n{self.log(c)}" for c in self.processes)
            raise AssertionError(f"{error}\n{logs}") from None


def _daemon_pod(daemon: str, node: dict[str, Any]) -> dict[str, Any]:
    name = node["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{daemon}-{name}"[:63], "labels": {"app": daemon}},
        "spec": {
            "nodeName": name,  # bound up front, as the DaemonSet controller does
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}],
        },
    }


def _scale_set(pod: Any) -> str:
    return str((pod.metadata.labels or {}).get("runner-platform.io/scale-set", ""))


def job_status(platform: Platform, instance: str, job_id: int) -> str:
    return str(platform.emulators[instance].world.jobs[job_id].status)


def dump(obj: Any) -> str:
    return json.dumps(obj, default=str)[:2000]
