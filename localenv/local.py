"""``make local``: the whole platform on one machine, doing its job on a workload.

``python -m localenv.local [--workload FILE] [--fault NAME] [--keep] [--out DIR]``
(docs/local.md). Starts the local environment (API server, scheduler, controller-manager,
KWOK, Karpenter's KWOK provider, Redis with AOF, OpenBao, moto, the GitHub emulators and
the runner stand-in), applies the stack's Kubernetes objects and Vault configuration from
the stack's own builders (localenv/stack_objects.py), runs the controller as its real
processes (``serve``, ``listen``, ``provision``) registered as the emulators' webhook
target, replays the workload, optionally injects one fault, and reports per team and pool
(localenv/local_report.py). Everything it started ends with it, on Ctrl-C too (and, should
it be killed, through localenv.process's watchdog); ``--keep`` keeps it all up until
Ctrl-C and prints how to reach it.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from controller.model import POOL_LABEL, PlatformSpec, SpecError, load_spec
from controller.quantity import parse_quantity
from localenv import local_report, stack_objects, workload
from localenv.controller_files import install_apps, prepare_teams, write_controller_files
from localenv.process import ManagedProcess, free_port, wait_for
from localenv.workdir import keep_requested, new_workdir, release

ROOT = Path(__file__).resolve().parent.parent
FAULTS = ("kill-controller", "restart-redis", "drop-webhooks", "lose-node")
LOGGERS = ("localenv", "kubernetes", "urllib3")  # the in-process parts, logged to the run
DEFAULT_OUT = (
    Path(
        os.environ.get("RUNNER_PLATFORM_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "runner-platform"
    )
    / "local"
)
CLOUDWATCH_NAMESPACE = "RunnerPlatform/Local"
CLOUDWATCH_INTERVAL = 10  # seconds between two publishes of the provisioner
RUNNER_SELECTOR = "app.kubernetes.io/name=github-runner"
GPU_RESOURCE = "nvidia.com/gpu"
DROP_FRACTION, DROP_WINDOW = 0.3, 30.0


class Interrupted(Exception):
    """SIGINT or SIGTERM: stop everything, report nothing."""


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


# -- the stack --


def stack_spec(stack: str, consolidate_after: str | None, warm: bool = True) -> PlatformSpec:
    """The stack's spec as the local cluster runs it: every team's container mode is
    ``none`` (KWOK runs no containers and there is no CSI driver for work volumes; the
    container modes have their own tests), and, unless ``consolidate_after`` is None,
    each pool's ``consolidation.consolidate_after`` shortened so nodes visibly go.
    ``warm=False`` (``--no-warm``) zeroes every team's ``min_idle``; the placeholders go
    with ``without_placeholders``."""
    path = ROOT / f"Pulumi.{stack}.yaml"
    config = yaml.safe_load(path.read_text())["config"]
    document = {
        key.split(":", 1)[1]: copy.deepcopy(value)
        for key, value in config.items()
        if key.startswith("runner-platform:")
    }
    for team in document["teams"]:
        team["container_mode"] = "none"
        team.pop("container_modes", None)
        if not warm:
            team["min_idle"] = 0
    if consolidate_after is not None:
        for pool in document["pools"]:
            pool.setdefault("consolidation", {})["consolidate_after"] = consolidate_after
    return load_spec(document)


def without_placeholders(spec: PlatformSpec) -> PlatformSpec:
    """The spec the stack's objects are built from under ``--no-warm``: every pool's
    ``warm_nodes`` zeroed, so no placeholder Deployment keeps nodes warm. (The spec model
    refuses a 'warm' pool without warm nodes, so this copy is only built from, never
    loaded; the controller, which never reads ``warm_nodes``, keeps the stack's spec.)"""
    pools = tuple(pool.model_copy(update={"warm_nodes": 0}) for pool in spec.pools)
    return spec.model_copy(update={"pools": pools})


# -- the run --


@dataclass
class Job:
    """One workload job as replayed: its emulator id, and a re-run if it was lost."""

    spec: workload.WorkloadJob
    instance: str
    id: int = 0
    queued_at: float = 0.0
    rerun_of: int | None = None


@dataclass
class Run:
    spec: PlatformSpec
    load: workload.Workload
    out: Path
    fault: str | None
    fault_at: float
    keep: bool
    prices: stack_objects.PriceTable
    timeout: float
    drain: float = 45.0
    warm: bool = True  # False: --no-warm, no placeholders and no min_idle
    workdir: Path = field(default_factory=lambda: new_workdir("local"))
    servers: list[Any] = field(default_factory=list)
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    jobs: list[Job] = field(default_factory=list)
    port: int = 0
    metrics_port: int = 0
    start: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    fault_log: dict[str, Any] = field(default_factory=dict)
    started_pids: dict[int, str] = field(default_factory=dict)  # every process started

    # -- starting --

    def up(self) -> None:
        from localenv.github import GitHubEmulator
        from localenv.kube import ControlPlane, k8s_bins
        from localenv.runner_standin import RunnerStandIn
        from localenv.services import Moto, OpenBao, Redis

        # The in-process parts (runner stand-in, emulators) log to the run's folder, not
        # over the progress line.
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.workdir / "logs" / "local.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        for name in LOGGERS:
            logger = logging.getLogger(name)
            logger.addHandler(handler)
            logger.propagate = False
        self.log_handler = handler  # taken off again in down(): runs may follow in-process
        types = stack_objects.kwok_instance_types(self.spec, self.prices)
        types_file = self.workdir / "instance-types.json"
        types_file.write_text(json.dumps(types, indent=1))
        _say("building or finding the Kubernetes binaries (cached after the first run)")
        bins = k8s_bins()
        _say("starting etcd, kube-apiserver, scheduler, controller-manager, KWOK, Karpenter")
        self.plane = ControlPlane(bins)
        self.servers.append(self.plane)
        # Karpenter-KWOK offers the instance types of this file (the price table's).
        self.plane.start(
            scheduler=True,
            controller_manager=True,
            kwok=True,
            karpenter=True,
            instance_types=types_file,
        )
        _say("starting Redis (AOF), OpenBao, moto and the GitHub emulators")
        self.redis = Redis(appendonly=True)
        self.servers.append(self.redis)
        self.redis.start()
        self.openbao = OpenBao()
        self.servers.append(self.openbao)
        self.openbao.start()
        self.moto = Moto()
        self.servers.append(self.moto)
        self.moto.start()
        self.emulators = {}
        for instance in self.spec.github_instances:
            host = instance.host or "github.com"
            emulator = GitHubEmulator(kind=instance.kind, host=host).start()
            self.emulators[instance.name] = emulator
            self.servers.append(emulator)
        _say("applying the stack's objects (namespaces, RBAC, NodePools…) and Vault config")
        self.api = self.plane.api_client()
        built_from = self.spec if self.warm else without_placeholders(self.spec)
        stack_objects.apply(self.api, stack_objects.stack_manifests(built_from))
        stack_objects.configure_vault(
            self.spec,
            self.openbao.address,
            self.openbao.token,
            {name: emulator.oidc.issuer for name, emulator in self.emulators.items()},
        )
        self._github()
        self._files()
        self.standin = RunnerStandIn(
            self.plane.kubeconfig, {name: e.url for name, e in self.emulators.items()}
        )
        self.servers.append(self.standin)
        self.standin.start()
        _say("starting the controller: serve, listen, provision")
        self.port = free_port()
        for command in ("serve", "listen", "provision"):
            self._start(command)
        wait_for(self._ready, 60, "the controller's /readyz")
        for name, emulator in self.emulators.items():
            for org in self.spec.instance(name).orgs:
                emulator.world.add_hook(
                    f"http://127.0.0.1:{self.port}/webhooks/github/{name}",
                    self.hook_secrets[name].decode(),
                    org=org,
                )
        wait_for(self._provisioner_synced, 120, "the provisioner's first pass")
        self.inventory()

    def _github(self) -> None:
        """Apps, installations, orgs, teams with the workload's members, and each team's
        runner group open to exactly its repositories."""
        self.app_keys = install_apps(self.spec, self.emulators)
        repositories = {
            team.name: sorted(
                {j.repo for j in self.load.jobs if j.team == team.name}
                | {r for r in team.repositories if "*" not in r}
            )
            for team in self.spec.teams
        }
        prepare_teams(self.spec, self.emulators, repositories, self.load.members)

    def _files(self) -> None:
        """The controller's mounted Secrets, spec, runtime facts and kubeconfig."""

        from components.controller_manifests import CONTROLLER_NAME

        self.hook_secrets = {
            i.name: secrets.token_hex(20).encode() for i in self.spec.github_instances
        }
        write_controller_files(self.workdir, self.spec, self.app_keys, self.hook_secrets)
        # The controller runs with its ServiceAccount's token: exactly the stack's RBAC.
        self.controller_kubeconfig = self.plane.service_account_kubeconfig(
            self.spec.controller.namespace,
            CONTROLLER_NAME,
            self.workdir / "controller-kubeconfig",
        )

    def env(self) -> dict[str, str]:
        if not self.metrics_port:
            self.metrics_port = free_port()
        return {
            "RUNNER_PLATFORM_SPEC": str(self.workdir / "spec.json"),
            "RUNNER_PLATFORM_RUNTIME": str(self.workdir / "runtime.json"),
            "RUNNER_PLATFORM_SECRETS_DIR": str(self.workdir / "secrets"),
            "RUNNER_PLATFORM_REDIS_URL": self.redis.url,
            "RUNNER_PLATFORM_HOST": "127.0.0.1",
            "RUNNER_PLATFORM_PORT": str(self.port),
            # The hooks registered below point here: the reconciler redelivers only those.
            "RUNNER_PLATFORM_PUBLIC_URL": f"http://127.0.0.1:{self.port}",
            "RUNNER_PLATFORM_KUBECONFIG": str(self.controller_kubeconfig),
            "RUNNER_PLATFORM_GITHUB_API_URLS": ",".join(
                f"{name}={e.api_url}" for name, e in self.emulators.items()
            ),
            "RUNNER_PLATFORM_PROVISION_METRICS_PORT": str(self.metrics_port),
            "RUNNER_PLATFORM_RESYNC": "2",
            "RUNNER_PLATFORM_IDLE_GRACE": "20",
            "RUNNER_PLATFORM_REAP_INTERVAL": "15",
            # The lost-webhook reconciler looks often: a dropped delivery is found in
            # seconds here, where production spends its API budget more slowly.
            "RUNNER_PLATFORM_RECONCILE_SECONDS": "5",
            "RUNNER_PLATFORM_RECONCILE_GRACE": "5",
            "RUNNER_PLATFORM_CLOUDWATCH_NAMESPACE": CLOUDWATCH_NAMESPACE,
            "RUNNER_PLATFORM_CLOUDWATCH_INTERVAL": str(CLOUDWATCH_INTERVAL),
            "RUNNER_PLATFORM_CLOUDWATCH_ENDPOINT": self.moto.endpoint,
            "AWS_REGION": self.spec.cluster.region,
            # moto accepts any key; these name no account and grant nothing.
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "PYTHONUNBUFFERED": "1",
        }

    def _start(self, command: str) -> ManagedProcess:
        process = ManagedProcess(
            command,
            [sys.executable, "-m", "controller", command],
            self.workdir / "logs",
            env=self.env(),
            cwd=ROOT,
        ).start()
        self.processes[command] = process
        self._note(process)
        return process

    def _note(self, process: ManagedProcess | None) -> None:
        if process is not None and process.popen is not None:
            self.started_pids[process.popen.pid] = process.name

    def inventory(self) -> dict[str, Any]:
        """Every process and port the run started: nothing of it may outlive it."""
        for process in [*self.plane.processes, self.redis.process, self.openbao.process]:
            self._note(process)
        self._note(self.moto.process)
        ports = {
            "kube-apiserver": int(self.plane.server.rsplit(":", 1)[1]),
            "redis": self.redis.port,
            "openbao": self.openbao.port,
            "moto": self.moto.port,
            "controller": self.port,
            "provisioner-metrics": self.metrics_port,
            **{f"github-{name}": e.port for name, e in self.emulators.items()},
        }
        return {
            "pids": {str(pid): name for pid, name in self.started_pids.items()},
            "ports": ports,
            "workdir": str(self.workdir),
        }

    def _ready(self) -> bool:
        import httpx

        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def _provisioner_synced(self) -> bool:
        import httpx

        if not self.processes["provision"].alive:
            raise RuntimeError(f"provision exited; see {self.processes['provision'].log_path}")
        try:
            text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).text
        except httpx.TransportError:
            return False
        return "runner_platform_desired_runners{" in text

    # -- the replay --

    def replay(self) -> None:
        from kubernetes import client

        self.core: Any = client.CoreV1Api(self.api)
        self.jobs = [
            Job(j, next(t.instance for t in self.spec.teams if t.name == j.team))
            for j in self.load.jobs
        ]
        durations: dict[tuple[str, int], float] = {}
        pending = list(self.jobs)
        self.start = time.time()
        next_sample = 0.0
        last_line = 0.0
        fault_done = self.fault is None
        deadline = self.start + self.load.span + self.timeout
        while True:
            now = time.time()
            elapsed = now - self.start
            while pending and pending[0].spec.at <= elapsed:
                job = pending.pop(0)
                self._queue(job)
                durations[(job.instance, job.id)] = job.spec.duration
            self._complete_due(durations, now)
            if not fault_done and elapsed >= self.fault_at:
                self._inject(durations)
                fault_done = True
            self._fault_tick(elapsed)
            if elapsed >= next_sample:
                self._sample(elapsed)
                next_sample = elapsed + 1.0
                if elapsed - last_line >= (1.0 if sys.stderr.isatty() else 10.0):
                    _progress(self._progress_line(elapsed))
                    last_line = elapsed
            fault_over = fault_done and not (
                (self.fault == "drop-webhooks" and not self.fault_log.get("cleared"))
                or (
                    self.fault == "kill-controller"
                    and "new_pid" in self.fault_log
                    and "leases_taken_after_s" not in self.fault_log
                )
            )
            if not pending and fault_over and self._all_done():
                self._sample(time.time() - self.start)
                break
            if now > deadline:
                _say(f"\ngave up waiting after {self.timeout:.0f}s past the last arrival")
                break
            time.sleep(0.25)
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        # Keep sampling while the platform cleans up after the last job (pods, Secrets,
        # registrations) and Karpenter consolidates the emptied nodes.
        quiet_until = time.time() + self.drain
        while time.time() < quiet_until:
            self._sample(time.time() - self.start)
            time.sleep(1.0)

    def _queue(self, job: Job) -> None:
        team = next(t for t in self.spec.teams if t.name == job.spec.team)
        emulator = self.emulators[job.instance]
        queued = emulator.world.queue_job(
            team.org,
            job.spec.repo,
            list(job.spec.labels),
            job.spec.requester,
            name=f"job-{job.spec.index}",
        )
        job.id, job.queued_at = queued.id, queued.created_at

    def _complete_due(self, durations: dict[tuple[str, int], float], now: float) -> None:
        for name, emulator in self.emulators.items():
            world = emulator.world
            with world.lock:
                due = [
                    j.id
                    for j in world.jobs.values()
                    if j.status == "in_progress"
                    and j.started_at is not None
                    and j.started_at + durations.get((name, j.id), 0.0) <= now
                    and (name, j.id) in durations
                ]
            for job_id in due:
                try:
                    world.complete_job(job_id, "success")
                except ValueError:
                    pass  # completed meanwhile (a lost runner failed it)

    def _all_done(self) -> bool:
        for job in self.jobs:
            state = self.emulators[job.instance].world.jobs[job.id]
            if state.status != "completed":
                return False
        return True

    # -- faults --

    def _inject(self, durations: dict[tuple[str, int], float]) -> None:
        at = time.time()
        self.fault_log = {"name": self.fault, "at_s": round(at - self.start, 1)}
        self.fault_log["waiting_before"] = self._waiting_ids()
        _say(f"\nfault: {self.fault} at {at - self.start:.0f}s")
        if self.fault == "kill-controller":
            process = self.processes["provision"]
            assert process.popen is not None
            os.killpg(process.popen.pid, signal.SIGKILL)
            process.popen.wait()
            process.stop()
            restarted = self._start("provision")
            assert restarted.popen is not None
            self.fault_log["new_pid"] = restarted.popen.pid
            self.fault_log["detail"] = "SIGKILL of provision, started again at once"
        elif self.fault == "restart-redis":
            self.redis.stop_process()
            time.sleep(3.0)
            self.redis.start()
            self._note(self.redis.process)
            self.fault_log["detail"] = "Redis stopped (SIGTERM) for 3 s, started on its AOF"
        elif self.fault == "drop-webhooks":
            for emulator in self.emulators.values():
                emulator.drop_webhooks(DROP_FRACTION, seed=11)
            self.fault_log["detail"] = (
                f"{DROP_FRACTION:.0%} of workflow_job deliveries dropped for {DROP_WINDOW:.0f} s"
            )
            self.fault_log["until_s"] = round(at - self.start + DROP_WINDOW, 1)
        elif self.fault == "lose-node":
            self._lose_node(durations)
        self.fault_log["end"] = time.time()

    def _fault_tick(self, elapsed: float) -> None:
        if self.fault == "kill-controller" and "new_pid" in self.fault_log:
            if "leases_taken_after_s" not in self.fault_log and self._leases_held_by(
                self.fault_log["new_pid"]
            ):
                self.fault_log["leases_taken_after_s"] = round(elapsed - self.fault_log["at_s"], 1)
                self.fault_log["end"] = time.time()  # jobs queued until now were waiting
        if self.fault == "drop-webhooks" and "until_s" in self.fault_log:
            if elapsed >= self.fault_log["until_s"] and not self.fault_log.get("cleared"):
                dropped, jobs, redelivered = 0, [], 0
                for instance, emulator in self.emulators.items():
                    emulator.clear_faults()
                    lost = emulator.dropped_deliveries()
                    guids = {d.guid for d in lost}
                    dropped += len(lost)
                    jobs += [
                        [instance, int(d.payload["workflow_job"]["id"])]
                        for d in lost
                        if d.action == "queued"
                    ]
                    with emulator.world.lock:
                        redelivered += sum(
                            1 for d in emulator.world.deliveries if d.redelivery and d.guid in guids
                        )
                self.fault_log.update(
                    cleared=True,
                    dropped_deliveries=dropped,
                    dropped_queued_jobs=len(jobs),
                    redelivered_by_reconciler_so_far=redelivered,
                    end=time.time(),
                )
                # Recovery counts until the last job whose queued webhook was lost ran.
                self.fault_log["waiting_before"] = [*self.fault_log["waiting_before"], *jobs]

    def _lose_node(self, durations: dict[tuple[str, int], float]) -> None:
        """Delete the node with the most busy runners; the pod GC removes its pods; GitHub
        fails their jobs (the runners stopped answering) and each is re-run."""
        items = self.core.list_pod_for_all_namespaces(label_selector=RUNNER_SELECTOR).items
        busy_names = set()
        for emulator in self.emulators.values():
            with emulator.world.lock:
                busy_names |= {r.name for r in emulator.world.runners.values() if r.busy}
        per_node: dict[str, list[str]] = defaultdict(list)
        for pod in items:
            if pod.spec.node_name and pod.metadata.name in busy_names:
                per_node[pod.spec.node_name].append(pod.metadata.name)
        if not per_node:
            self.fault_log["detail"] = "no node had busy runners: nothing lost"
            return
        node, runners = max(per_node.items(), key=lambda kv: len(kv[1]))
        # The machine is gone, not drained: without Karpenter's termination finalizer the
        # Node goes at once (with it, Karpenter would drain it gracefully). Karpenter then
        # finds the instance gone and removes the NodeClaim; the pod GC removes the pods.
        self.core.patch_node(node, {"metadata": {"finalizers": None}})
        self.core.delete_node(node)
        reruns = []
        for name in runners:
            for instance, emulator in self.emulators.items():
                try:
                    lost = emulator.world.runner_lost(name)
                except LookupError:
                    continue
                if lost is None:
                    continue
                original = next(j for j in self.jobs if j.instance == instance and j.id == lost.id)
                again = emulator.world.rerun_job(lost.id)
                rerun = Job(original.spec, instance, again.id, again.created_at, rerun_of=lost.id)
                self.jobs.append(rerun)
                durations[(instance, again.id)] = original.spec.duration
                reruns.append([instance, again.id])
        self.fault_log.update(
            detail=f"node {node} deleted with {len(runners)} busy runners; jobs re-run",
            node=node,
            lost_runners=runners,
            reruns=reruns,
        )
        self.fault_log["waiting_before"] = [*self.fault_log["waiting_before"], *reruns]

    def _leases_held_by(self, pid: int) -> bool:
        """Whether the restarted provisioner holds every scale set's Lease."""
        from kubernetes import client

        from controller.provision.leader import KIND_LABEL

        coordination: Any = client.CoordinationV1Api(self.api)
        leases = coordination.list_namespaced_lease(
            self.spec.controller.namespace, label_selector=f"{KIND_LABEL}=scale-set"
        ).items
        holders = [str(lease.spec.holder_identity or "") for lease in leases]
        return len(holders) >= len(self.spec.scale_sets()) and all(
            h.endswith(f"-{pid}") for h in holders
        )

    def _waiting_ids(self) -> list[list[Any]]:
        """(instance, job id) of every job queued and not started yet."""
        return [
            [job.instance, job.id]
            for job in self.jobs
            if job.id and self.emulators[job.instance].world.jobs[job.id].status == "queued"
        ]

    # -- sampling --

    def _sample(self, elapsed: float) -> None:
        stack_objects.lift_startup_taint(self.core)
        pods = self.core.list_pod_for_all_namespaces(label_selector=RUNNER_SELECTOR).items
        nodes = self.core.list_node().items
        teams = {t.name: t for t in self.spec.teams}
        node_info: dict[str, dict[str, Any]] = {}
        for node in nodes:
            labels = node.metadata.labels or {}
            pool = labels.get("karpenter.sh/nodepool") or labels.get(POOL_LABEL)
            if not pool:
                continue
            seen = self.nodes.setdefault(
                node.metadata.name,
                {
                    "pool": pool,
                    "instance_type": labels.get("node.kubernetes.io/instance-type", ""),
                    "capacity_type": labels.get("karpenter.sh/capacity-type", "on-demand"),
                    "cpu": float(parse_quantity((node.status.allocatable or {}).get("cpu", "1"))),
                    "gpus": float(
                        parse_quantity((node.status.allocatable or {}).get(GPU_RESOURCE, "0"))
                    ),
                    "first_s": elapsed,
                    "peak_runners": 0,
                    "node_hours": 0.0,
                    "cost": 0.0,
                    "team_hours": defaultdict(float),
                    "team_cost": defaultdict(float),
                },
            )
            seen["last_s"] = elapsed
            node_info[node.metadata.name] = seen
        dt = elapsed - self.samples[-1]["t"] if self.samples else 0.0
        runners: dict[str, int] = defaultdict(int)
        busy: dict[str, int] = defaultdict(int)
        per_node: dict[str, int] = defaultdict(int)
        team_cpu: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        team_gpu: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        pool_gpus = {p.name: p.gpus_per_runner or 0 for p in self.spec.pools}
        busy_names = set()
        for emulator in self.emulators.values():
            with emulator.world.lock:
                busy_names |= {r.name for r in emulator.world.runners.values() if r.busy}
        for pod in pods:
            labels = pod.metadata.labels or {}
            name = pod.metadata.name
            record = self.pods.setdefault(
                name,
                {
                    "team": labels.get("runner-platform.io/team", ""),
                    "pool": labels.get("runner-platform.io/pool", ""),
                    "created": pod.metadata.creation_timestamp.timestamp(),
                },
            )
            if pod.spec.node_name:
                record["node"] = pod.spec.node_name
            if pod.status.phase == "Running" and "running" not in record:
                ready = [
                    c.last_transition_time.timestamp()
                    for c in (pod.status.conditions or [])
                    if c.type == "Ready" and c.status == "True" and c.last_transition_time
                ]
                record["running"] = min(ready) if ready else time.time()
            if pod.status.phase in ("Succeeded", "Failed") or pod.metadata.deletion_timestamp:
                continue
            pool = record["pool"]
            runners[pool] += 1
            if name in busy_names:
                busy[pool] += 1
            if pod.spec.node_name:
                per_node[pod.spec.node_name] += 1
                owner = teams.get(record["team"])
                if owner is not None:
                    cpu = float(parse_quantity(owner.resources.cpu))
                    team_cpu[pod.spec.node_name][owner.name] += cpu
                    team_gpu[pod.spec.node_name][owner.name] += pool_gpus.get(pool, 0)
        for name, info in node_info.items():
            info["peak_runners"] = max(info["peak_runners"], per_node.get(name, 0))
            if dt <= 0:
                continue
            price = (
                self.prices.types[info["instance_type"]].price(info["capacity_type"])
                if (info["instance_type"] in self.prices.types)
                else 0.0
            )
            hours = dt / 3600.0
            info["node_hours"] += hours
            info["cost"] += hours * price
            for team, cpu in team_cpu.get(name, {}).items():
                # The dominant share: a GPU runner holds its GPU, whatever CPU it asks.
                gpus = team_gpu[name][team] / info["gpus"] if info["gpus"] else 0.0
                share = min(max(cpu / info["cpu"] if info["cpu"] else 0.0, gpus), 1.0)
                info["team_hours"][team] += hours * share
                info["team_cost"][team] += hours * price * share
        queued: dict[str, int] = defaultdict(int)
        for job in self.jobs:
            if job.id and self.emulators[job.instance].world.jobs[job.id].status == "queued":
                queued[job.spec.pool] += 1
        nodes_per_pool: dict[str, int] = defaultdict(int)
        for info in node_info.values():
            nodes_per_pool[info["pool"]] += 1
        self.samples.append(
            {
                "t": round(elapsed, 2),
                "queued": dict(queued),
                "runners": dict(runners),
                "busy": dict(busy),
                "nodes": dict(nodes_per_pool),
            }
        )

    def _progress_line(self, elapsed: float) -> str:
        counts = {"queued": 0, "in_progress": 0, "completed": 0}
        for job in self.jobs:
            if job.id:
                status = self.emulators[job.instance].world.jobs[job.id].status
                counts[status] = counts.get(status, 0) + 1
        last = self.samples[-1] if self.samples else {"runners": {}, "nodes": {}}
        pools = sorted(set(last["runners"]) | set(last["nodes"]))
        per_pool = " ".join(
            f"{p} {last['runners'].get(p, 0)}r/{last['nodes'].get(p, 0)}n" for p in pools
        )
        return (
            f"[{elapsed:5.0f}s] jobs {len(self.load.jobs)}: queued {counts['queued']} "
            f"running {counts['in_progress']} done {counts['completed']} | {per_pool}"
        )

    # -- after the run --

    def results(self) -> dict[str, Any]:
        """Stop the controller (its last CloudWatch publish), then gather what happened."""
        import redis as redis_sync

        from controller.audit import iter_records

        latency = self._provisioner_latency()  # before provision stops
        for command in ("serve", "listen", "provision"):
            process = self.processes.get(command)
            if process is not None and not self.keep:
                process.stop(grace=20)  # SIGTERM: provision publishes once more
        if self.keep:  # still running: let one more publishing period pass
            time.sleep(CLOUDWATCH_INTERVAL + 1)
        audit = list(iter_records(redis_sync.Redis.from_url(self.redis.url), limit=1_000_000))
        jobs = []
        for job in self.jobs:
            state = self.emulators[job.instance].world.jobs[job.id]
            runner = state.runner.name if state.runner is not None else None
            pod = self.pods.get(runner or "", {})
            jobs.append(
                {
                    "index": job.spec.index,
                    "instance": job.instance,
                    "id": job.id,
                    "team": job.spec.team,
                    "pool": job.spec.pool,
                    "scale_set": job.spec.scale_set,
                    "repo": job.spec.repo,
                    "requester": job.spec.requester,
                    "member": self.load.allowed(job.spec),
                    "rerun_of": job.rerun_of,
                    "status": state.status,
                    "conclusion": state.conclusion,
                    "runner": runner,
                    "queued_at": state.created_at,
                    "started_at": state.started_at,
                    "pod_running_at": pod.get("running"),
                    "node": pod.get("node"),
                }
            )
        return {
            "inventory": self.inventory(),
            "jobs": jobs,
            "audit": audit,
            "cloudwatch": self._cloudwatch(),
            "provisioner_latency": latency,
        }

    def _provisioner_latency(self) -> dict[str, Any]:
        """The provisioner's own latency histograms (queued → pod created, → pod running,
        → a runner took the job), per team/pool: count, sum and cumulative buckets."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        try:
            text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        except httpx.TransportError as error:
            return {"error": str(error)}
        out: dict[str, dict[str, dict[str, Any]]] = {}
        wanted = {
            "runner_platform_pod_created_seconds",
            "runner_platform_pod_start_seconds",
            "runner_platform_queue_time_seconds",
        }
        for family in text_string_to_metric_families(text):
            if family.name not in wanted:
                continue
            for sample in family.samples:
                key = f"{sample.labels.get('team', '')}/{sample.labels.get('pool', '')}"
                entry = out.setdefault(family.name, {}).setdefault(
                    key, {"count": 0.0, "sum": 0.0, "buckets": {}}
                )
                if sample.name.endswith("_bucket"):
                    entry["buckets"][sample.labels["le"]] = sample.value
                elif sample.name.endswith("_count"):
                    entry["count"] = sample.value
                elif sample.name.endswith("_sum"):
                    entry["sum"] = sample.value
        return out

    def _cloudwatch(self) -> dict[str, Any]:
        client: Any = self.moto.client("cloudwatch")
        listed = client.list_metrics(Namespace=CLOUDWATCH_NAMESPACE)["Metrics"]
        teams = sorted(t.name for t in self.spec.teams)
        queries = []
        for index, team in enumerate(teams):
            for metric in ("RunnerMinutes", "JobsCompleted"):
                queries.append(
                    {
                        "Id": f"q{index}{metric.lower()}",
                        "Label": f"{team} {metric}",
                        "MetricStat": {
                            "Metric": {
                                "Namespace": CLOUDWATCH_NAMESPACE,
                                "MetricName": metric,
                                "Dimensions": [{"Name": "Team", "Value": team}],
                            },
                            "Period": 60,
                            "Stat": "Sum",
                        },
                    }
                )
        answer = client.get_metric_data(
            MetricDataQueries=queries,
            StartTime=datetime.fromtimestamp(self.start - 120, UTC),
            EndTime=datetime.fromtimestamp(time.time() + 120, UTC),
        )
        per_team: dict[str, dict[str, float]] = {team: {} for team in teams}
        for result in answer["MetricDataResults"]:
            team, metric = result["Label"].split(" ", 1)
            per_team[team][metric] = round(sum(result["Values"]), 2)
        return {
            "namespace": CLOUDWATCH_NAMESPACE,
            "metrics_listed": len(listed),
            "per_team": per_team,
        }

    # -- keeping and stopping --

    def how_to_reach(self) -> str:
        py = f"{ROOT / '.venv' / 'bin' / 'python'}"
        lines = [
            "Everything is up; Ctrl-C stops it all.",
            f"  kubeconfig (admin):   export KUBECONFIG={self.plane.kubeconfig}",
            f"  controller:           http://127.0.0.1:{self.port}  (/metrics, /readyz)",
            f"  provisioner metrics:  http://127.0.0.1:{self.metrics_port}/metrics",
        ]
        for name, emulator in self.emulators.items():
            lines.append(f"  GitHub emulator {name + ':':<6} {emulator.api_url}")
        lines += [
            f"  Redis:                {self.redis.url}",
            f"  OpenBao:              {self.openbao.address}  (token {self.openbao.token})",
            f"  moto (AWS):           {self.moto.endpoint}",
            f"  audit:                {py} -m controller audit --redis-url {self.redis.url}",
            f"  logs:                 {self.workdir / 'logs'}",
        ]
        return "\n".join(lines)

    def down(self) -> None:
        for process in list(self.processes.values()):
            process.stop(grace=5)
        for server in reversed(self.servers):
            try:
                server.stop()
            except Exception as error:  # stop the rest all the same
                _say(f"stopping {type(server).__name__}: {error}")
        handler = getattr(self, "log_handler", None)
        if handler is not None:
            for name in LOGGERS:
                logging.getLogger(name).removeHandler(handler)
                logging.getLogger(name).propagate = True
            handler.close()
        release(self.workdir, keep=keep_requested())


def _say(text: str) -> None:
    print(f"local: {text}" if not text.startswith("\n") else text, file=sys.stderr, flush=True)


def _progress(line: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r" + line[: max(40, os.get_terminal_size(2).columns - 1)])
    else:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m localenv.local",
        description="The whole platform on one machine, replaying a workload (docs/local.md).",
    )
    parser.add_argument("--workload", type=Path, help="a workload YAML file (default: built in)")
    parser.add_argument("--fault", choices=FAULTS, help="inject one fault mid-run")
    parser.add_argument(
        "--fault-at", type=float, help="seconds into the replay (default: half the arrivals)"
    )
    parser.add_argument("--keep", action="store_true", help="keep everything up until Ctrl-C")
    parser.add_argument(
        "--no-warm",
        action="store_true",
        help="no warm placeholders and every team's min_idle 0 (the warm pool's nodes start cold)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    parser.add_argument("--stack", default="dev", help="reads Pulumi.<stack>.yaml (default dev)")
    parser.add_argument(
        "--consolidate-after",
        default="30s",
        help="each pool's consolidate_after for the run (default 30s); 'stack' keeps the stack's",
    )
    parser.add_argument("--prices", type=Path, default=stack_objects.PRICES)
    parser.add_argument(
        "--timeout", type=float, default=300, help="seconds to wait past the last arrival"
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=45,
        help="seconds to keep watching after the last job ended (default 45): nodes going",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        spec = stack_spec(
            args.stack,
            None if args.consolidate_after == "stack" else args.consolidate_after,
            warm=not args.no_warm,
        )
        load = workload.load(args.workload, spec) if args.workload else workload.default(spec)
        prices = stack_objects.load_prices(args.prices)
        stack_objects.kwok_instance_types(spec, prices)  # refuse before starting anything
    except FileNotFoundError as error:
        print(f"local: {error.filename}: no such file", file=sys.stderr)
        return 2
    except (workload.WorkloadError, stack_objects.StackObjectError, SpecError) as error:
        print(f"local: {error}", file=sys.stderr)
        return 2
    fault_at = args.fault_at if args.fault_at is not None else load.span / 2
    run = Run(
        spec,
        load,
        args.out,
        args.fault,
        fault_at,
        args.keep,
        prices,
        args.timeout,
        args.drain,
        warm=not args.no_warm,
    )
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    started = time.time()
    outcome: int | None = None  # set once the report is written
    try:
        run.up()
        _say(
            f"replaying {len(load.jobs)} jobs from {load.name} over {load.span:.0f}s"
            + (f"; fault {args.fault} at {fault_at:.0f}s" if args.fault else "")
        )
        run.replay()
        results = run.results()
        report = local_report.build(run.spec, run.prices, run, results)
        report["run"]["wall_seconds"] = round(time.time() - started, 1)
        report["run"]["warm"] = run.warm
        report["provisioner_latency"] = results["provisioner_latency"]
        args.out.mkdir(parents=True, exist_ok=True)
        json_path, png_path = local_report.write(report, run.samples, args.out)
        print(local_report.table(report))
        print(f"\nreport: {json_path}\nchart:  {png_path}")
        outcome = 0 if report["checks"]["ok"] else 1
        if args.keep:
            print(run.how_to_reach(), flush=True)
            while True:
                time.sleep(3600)
        return outcome
    except Interrupted as why:
        _say(f"\n{why}: stopping everything")
        return 130 if outcome is None else outcome
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C cannot cut the stop
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        run.down()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
