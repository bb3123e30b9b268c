"""The local environment ``bench/provision.py`` runs the Pod Provisioner in.

A real ``python -m controller provision`` process against etcd + kube-apiserver (plus, on
request, the scheduler, KWOK nodes per pool and the runner stand-in), a real Redis and
the GitHub emulators (both instances of the dev stack). The spec is the dev stack's
(Pulumi.dev.yaml, as tests/conftest.py loads it), modified per scenario.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components.controller_manifests import namespaces  # noqa: E402
from components.node_pools import runner_priority_class  # noqa: E402
from controller.model import PlatformSpec, load_spec  # noqa: E402
from controller.provision.kube import Conflict, KubeApi, KubeConfig  # noqa: E402
from controller.streams import encode_entry  # noqa: E402
from localenv.controller_files import (  # noqa: E402
    install_apps,
    prepare_teams,
    write_controller_files,
)
from localenv.github import GitHubEmulator  # noqa: E402
from localenv.kube import ControlPlane, k8s_bins  # noqa: E402
from localenv.kube_objects import pool_node  # noqa: E402
from localenv.process import ManagedProcess, free_port, wait_for  # noqa: E402
from localenv.services import Redis  # noqa: E402

TEAM_REPOSITORIES = {  # the repositories the bench's jobs come from, one per team
    "web": ("acme-corp/storefront",),
    "ml": ("research/models",),
    "infra": ("platform/deploy",),
}
ROLE_ARNS = {
    team: f"arn:aws:iam::123456789012:role/github-runner-{team}-role"
    for team in ("web", "ml", "infra")
}


def spec_document(**teams: dict[str, Any]) -> dict[str, Any]:
    """The dev stack's spec document with ``teams[name]`` fields replaced, no team keeping
    idle runners, and pool limits that hold thousands of runners."""
    config = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
    document = {
        key.split(":", 1)[1]: copy.deepcopy(value)
        for key, value in config.items()
        if key.startswith("runner-platform:")
    }
    for pool in document["pools"]:
        pool["limits"] = {**pool["limits"], "cpu": 100_000, "memory": "400000Gi"}
        if "gpu" in pool["limits"]:
            pool["limits"]["gpu"] = 10_000
    for team in document["teams"]:
        team["min_idle"] = 0
        team.update(teams.get(team["name"], {}))
    return document


def iso_now(moment: float | None = None) -> str:
    """A ``created_at`` with milliseconds (GitHub's has seconds; the provisioner parses
    either), so the queued → created histogram is not rounded to a second."""
    when = datetime.fromtimestamp(time.time() if moment is None else moment, UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ready_entry(job_id: int, org: str, repo: str, sender: str, labels: list[str]) -> str:
    """An allowed queued job as the listener appends it to ``rp:ready:<scale set>`` (the
    fields the router stores, controller/ingest/app.py)."""
    now = time.time()
    return encode_entry(
        {
            "delivery": str(uuid.uuid4()),
            "instance": "",
            "action": "queued",
            "job_id": str(job_id),
            "run_id": str(job_id),
            "org": org,
            "repo": repo,
            "sender": sender,
            "labels": json.dumps(labels),
            "runner_name": "",
            "runner_group": "",
            "conclusion": "",
            "created_at": iso_now(now),
            "received_at": f"{now:.3f}",
        }
    )


def event_entry(job_id: int, action: str, runner_name: str = "") -> str:
    """An ``in_progress``/``completed`` event as the listener passes it on."""
    now = time.time()
    return encode_entry(
        {
            "delivery": str(uuid.uuid4()),
            "instance": "",
            "action": action,
            "job_id": str(job_id),
            "run_id": str(job_id),
            "org": "",
            "repo": "",
            "sender": "",
            "labels": "[]",
            "runner_name": runner_name,
            "runner_group": "",
            "conclusion": "success" if action == "completed" else "",
            "created_at": iso_now(now),
            "received_at": f"{now:.3f}",
        }
    )


@dataclass
class Env:
    """One scenario's servers; :meth:`stop` stops every one of them."""

    spec: PlatformSpec
    plane: ControlPlane
    redis: Redis
    emulators: dict[str, GitHubEmulator]
    workdir: Path
    components: list[str]
    provisioner: ManagedProcess | None = None
    metrics_port: int = 0
    extra: list[Any] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        document: dict[str, Any],
        *,
        scheduler: bool = False,
        kwok: bool = False,
        nodes: dict[str, int] | None = None,
    ) -> Env:
        spec = load_spec(document)
        workdir = Path(tempfile.mkdtemp(prefix="bench-provision-"))
        plane = ControlPlane(k8s_bins())
        redis: Redis | None = None
        emulators: dict[str, GitHubEmulator] = {}
        try:
            plane.start(scheduler=scheduler, kwok=kwok)
            redis = Redis().start()
            emulators = {
                "cloud": GitHubEmulator(kind="cloud").start(),
                "ghes": GitHubEmulator(kind="ghes", host="github.acme.internal").start(),
            }
        except BaseException:
            for emulator in emulators.values():
                emulator.stop()
            if redis is not None:
                redis.stop()
            plane.stop()
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        components = ["etcd", "kube-apiserver"]
        if scheduler or kwok:
            components.append("kube-scheduler")
        if kwok:
            components.append(f"kwok ({sum((nodes or {}).values())} nodes)")
        components += ["redis-server", "GitHub emulators (cloud, ghes)"]
        env = cls(spec, plane, redis, emulators, workdir, components)
        try:
            env._prepare(nodes or {})
        except BaseException:
            env.stop()
            raise
        return env

    def _prepare(self, nodes: dict[str, int]) -> None:
        asyncio.run(self._cluster_objects(nodes))
        keys = install_apps(self.spec, self.emulators)
        hooks = {i.name: b"x" for i in self.spec.github_instances}  # no webhooks here
        prepare_teams(self.spec, self.emulators, TEAM_REPOSITORIES, {})
        write_controller_files(self.workdir, self.spec, keys, hooks, ROLE_ARNS)

    async def _cluster_objects(self, nodes: dict[str, int]) -> None:
        kube = self.kube(qps=500)
        try:
            objects = [runner_priority_class(), *namespaces(self.spec)]
            for manifest in objects:
                kind = manifest["kind"]
                path = (
                    "/apis/scheduling.k8s.io/v1/priorityclasses"
                    if kind == "PriorityClass"
                    else "/api/v1/namespaces"
                )
                try:
                    await kube.request("POST", path, body=manifest)
                except Conflict:
                    pass
            for pool in self.spec.pools:
                for index in range(nodes.get(pool.name, 0)):
                    node = pool_node(self.spec, pool, f"{pool.name}-node-{index}")
                    await kube.request("POST", "/api/v1/nodes", body=node)
        finally:
            await kube.aclose()

    def kube(self, qps: float = 1000, concurrency: int = 32) -> KubeApi:
        """The controller's own client (plain JSON, paced), for the bench's requests."""
        return KubeApi(
            KubeConfig.load(self.plane.kubeconfig),
            qps=qps,
            burst=int(qps),
            concurrency=concurrency,
        )

    def pids(self) -> dict[str, int]:
        """Our processes: the bench (emulators, load generator, watches), the servers."""
        pids = {"bench": os.getpid()}
        for process in [*self.plane.processes, self.redis.process, self.provisioner]:
            if process is not None and process.popen is not None:
                pids[process.name] = process.popen.pid
        return pids

    # -- the provisioner process --

    def start_provisioner(self, profile: Path | None = None, **settings: str) -> ManagedProcess:
        """``python -m controller provision`` (under cProfile, writing ``profile`` when it
        stops, if given)."""
        self.metrics_port = free_port()
        env = self._provision_env(self.metrics_port, settings)
        self.provisioner = ManagedProcess(
            "provisioner",
            [
                sys.executable,
                *(["-m", "cProfile", "-o", str(profile)] if profile else []),
                "-m",
                "controller",
                "provision",
            ],
            self.workdir / "logs",
            env=env,
            cwd=ROOT,
        ).start()
        return self.provisioner

    def _provision_env(self, metrics_port: int, settings: dict[str, str]) -> dict[str, str]:
        return {
            "RUNNER_PLATFORM_SPEC": str(self.workdir / "spec.json"),
            "RUNNER_PLATFORM_RUNTIME": str(self.workdir / "runtime.json"),
            "RUNNER_PLATFORM_SECRETS_DIR": str(self.workdir / "secrets"),
            "RUNNER_PLATFORM_REDIS_URL": self.redis.url,
            "RUNNER_PLATFORM_KUBECONFIG": str(self.plane.kubeconfig),
            "RUNNER_PLATFORM_GITHUB_API_URLS": ",".join(
                f"{name}={emulator.api_url}" for name, emulator in self.emulators.items()
            ),
            "RUNNER_PLATFORM_PROVISION_METRICS_PORT": str(metrics_port),
            "RUNNER_PLATFORM_LOG_LEVEL": "INFO",
            **settings,
        }

    def start_provisioner_replica(self, **settings: str) -> ManagedProcess:
        """Another ``provision`` process (a second replica), with its own metrics port and
        log; stopped with the environment."""
        env = self._provision_env(free_port(), settings)
        replica = ManagedProcess(
            f"provisioner-{len(self.extra) + 2}",
            [sys.executable, "-m", "controller", "provision"],
            self.workdir / "logs",
            env=env,
            cwd=ROOT,
        ).start()
        self.extra.append(replica)
        return replica

    def wait_provisioner_synced(self, timeout: float = 120.0) -> None:
        """Until a reconcile pass ran (it runs only once every namespace was listed)."""
        assert self.provisioner is not None

        def synced() -> bool:
            if not self.provisioner or not self.provisioner.alive:
                raise RuntimeError(f"the provisioner exited:\n{self.provisioner_log()}")
            try:
                return "runner_platform_desired_runners{" in self.metrics_text()
            except httpx.TransportError:
                return False

        wait_for(synced, timeout, "the provisioner's first reconcile pass", interval=0.1)

    def metrics_text(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).text

    def metric(self, name: str, match: Callable[[dict[str, str]], bool] = lambda _: True) -> float:
        """Sum of the samples named ``name`` whose labels ``match``."""
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                if sample.name == name and match(sample.labels):
                    total += sample.value
        return total

    def histogram(self, name: str) -> list[tuple[float, float]]:
        """Cumulative (upper bound, count) of a histogram, summed over its label sets."""
        from prometheus_client.parser import text_string_to_metric_families

        buckets: dict[float, float] = {}
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                if sample.name == f"{name}_bucket":
                    bound = float(sample.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
        return sorted(buckets.items())

    def provisioner_log(self, lines: int = 40) -> str:
        path = self.workdir / "logs" / "provisioner.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def provisioner_warnings(self, most: int = 8) -> dict[str, int]:
        """The provisioner's WARNING/ERROR log lines, grouped (numbers blanked), top few."""
        import re

        path = self.workdir / "logs" / "provisioner.log"
        counts: dict[str, int] = {}
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("level") in ("WARNING", "ERROR", "CRITICAL"):
                text = re.sub(r"[0-9]+(\.[0-9]+)?", "N", str(record.get("message")))[:160]
                counts[text] = counts.get(text, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:most])

    def provisioner_rss_mb(self) -> float:
        assert self.provisioner is not None and self.provisioner.popen is not None
        for line in Path(f"/proc/{self.provisioner.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def stop_provisioner(self) -> None:
        if self.provisioner is not None:
            self.provisioner.stop(grace=30)
            self.provisioner = None

    def stop(self) -> None:
        for item in self.extra:
            item.stop()
        self.stop_provisioner()
        for emulator in self.emulators.values():
            emulator.stop()
        self.redis.stop()
        self.plane.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def quantile(histogram: list[tuple[float, float]], q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` (a cumulative histogram)."""
    if not histogram or histogram[-1][1] == 0:
        return None
    rank = q * histogram[-1][1]
    for bound, count in histogram:
        if count >= rank:
            return bound
    return histogram[-1][0]
