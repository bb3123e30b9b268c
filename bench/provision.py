"""``make bench-provision``: the Pod Provisioner against a real Kubernetes API server.

A real ``python -m controller provision`` process, fed the way the listener feeds it
(allowed queued jobs appended to ``rp:ready:<scale set>`` with ``encode_entry``, lifecycle
events to ``rp:events:<scale set>``), against etcd + kube-apiserver, a real Redis and the
GitHub emulators (bench/provision_env.py). Scenarios, each with its own servers:

1. ``burst``: 1,000 jobs queued at once → 1,000 pods and Secrets accepted by the API
   server (GitHub limits off), with the shipped settings and with tuned ones;
   ``limited``: the same burst against the emulator's secondary limits and the client's
   default bucket, for a bounded time: achieved runners/minute;
2. ``steady``: jobs at a fixed rate over three teams → queued-to-created latency;
3. ``completion``: scheduler + KWOK nodes + the runner stand-in, jobs in progress on 50
   runners completed in the emulator → time until pod, Secret and registration are gone;
4. ``memory``: the provisioner's RSS while its cache tracks 10,000 runner pods.

Figures are printed and saved to bench/results/provision.json beside their targets, with
the CPU every process spent (and what other load the machine had meanwhile); nothing here
asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import string
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402

from bench.provision_env import (  # noqa: E402
    ROLE_ARNS,
    Env,
    cpu_seconds,
    event_entry,
    quantile,
    ready_entry,
    spec_document,
)
from bench.results_file import RESULTS, save  # noqa: E402
from controller.audit import AUDIT_STREAM  # noqa: E402
from controller.model import RuntimeFacts, ScaleSet, Team  # noqa: E402
from controller.provision.kube import KubeApi  # noqa: E402
from controller.provision.pod import runner_pod, selector  # noqa: E402
from controller.streams import events_key, ready_key  # noqa: E402

LIMITS_OFF = {"RUNNER_PLATFORM_GITHUB_POINTS": "0"}
# Pacing above the shipped defaults (QPS 300, burst 600, 16 writes), to show where the
# ceiling is: two writes per runner (Pod, Secret) made the earlier default of 100 QPS a
# 50 runners/s ceiling (18.2 s for the burst), and 16 creations at once cost the client
# less CPU per request than 32 (httpcore's pool does work per idle connection).
TUNED = {
    "RUNNER_PLATFORM_KUBE_QPS": "400",
    "RUNNER_PLATFORM_KUBE_BURST": "800",
    "RUNNER_PLATFORM_WRITES": "16",
}
NO_RETIRING = {"RUNNER_PLATFORM_IDLE_GRACE": "86400"}
WEB = ("acme-corp", "acme-corp/storefront", "alice", ["self-hosted", "linux"])
STEADY_SETS = {  # scale set -> (org, repo, sender, labels): three teams, three namespaces
    "web-warm": WEB,
    "infra-warm": ("platform", "platform/deploy", "sam", ["self-hosted", "linux", "deploy"]),
    "ml-ml-isolated": ("research", "research/models", "rob", ["self-hosted", "ml-isolated"]),
}


# -- measuring --


class CpuMeter:
    """CPU seconds each of our processes spent, and the machine's busy time (so other
    people's load shows: ``other`` = machine busy minus ours)."""

    def __init__(self, env: Env) -> None:
        self.pids = env.pids()
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.machine = _machine_busy()
        self.started = time.monotonic()

    def read(self) -> dict[str, Any]:
        spent = {}
        for name, pid in self.pids.items():
            try:
                spent[name] = round(cpu_seconds(pid) - self.before[name], 2)
            except FileNotFoundError:
                spent[name] = None
        machine = _machine_busy() - self.machine
        ours = sum(v for v in spent.values() if v)
        return {
            "wall_seconds": round(time.monotonic() - self.started, 2),
            "cpu_seconds": spent,
            "machine_busy_cpu_seconds": round(machine, 2),
            "other_load_cpu_seconds": round(max(0.0, machine - ours), 2),
        }


def _machine_busy() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_quiet(most: float = 0.3, patience: float = 90.0) -> float:
    """Wait (up to ``patience`` s) for a 3 s stretch in which other processes keep less
    than ``most`` of a core busy: others run tests on this machine too. Returns the busy
    cores of the last stretch (recorded beside each scenario)."""
    deadline = time.monotonic() + patience
    while True:
        before = _machine_busy()
        time.sleep(3)
        busy = (_machine_busy() - before) / 3
        if busy < most or time.monotonic() > deadline:
            return round(busy, 2)


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": round(ordered[-1], 3)}


def _histogram_summary(env: Env, name: str) -> dict[str, Any]:
    buckets = env.histogram(name)
    total = buckets[-1][1] if buckets else 0
    within = {f"<= {b:g}s": round(c / total, 4) for b, c in buckets if b in (0.5, 1, 2, 3, 5)}
    return {
        "count": int(total),
        "fraction": within,
        "p50_bucket_upper_s": quantile(buckets, 0.5),
        "p99_bucket_upper_s": quantile(buckets, 0.99),
    }


class Watcher:
    """The bench's own watch over runner pods or Secrets in some namespaces: when each
    name was first seen (ADDED) and when it was DELETED, by receive time."""

    def __init__(
        self,
        kube: KubeApi,
        namespaces: list[str],
        resource: str,
        changed: asyncio.Event | None = None,
    ) -> None:
        self.added: dict[str, float] = {}
        self.deleted: dict[str, float] = {}
        self.labels: dict[str, str] = {}
        self.changed = changed or asyncio.Event()  # shared by watchers waited on together
        self._synced = [asyncio.Event() for _ in namespaces]
        self._tasks = [
            asyncio.ensure_future(self._run(kube, ns, resource, synced))
            for ns, synced in zip(namespaces, self._synced, strict=True)
        ]

    async def _run(self, kube: KubeApi, namespace: str, resource: str, synced: Any) -> None:
        async for kind, obj in kube.watch(namespace, resource, selector()):
            now = time.monotonic()
            if kind == "SYNC":
                for item in obj["items"]:
                    self.added.setdefault(item["metadata"]["name"], now)
                synced.set()
                continue
            name = obj["metadata"]["name"]
            if kind == "ADDED":
                self.added.setdefault(name, now)
                labels = obj["metadata"].get("labels") or {}
                self.labels[name] = labels.get("runner-platform.io/scale-set", "")
            elif kind == "DELETED":
                self.deleted.setdefault(name, now)
            self.changed.set()

    async def synced(self) -> None:
        await asyncio.gather(*(event.wait() for event in self._synced))

    async def until(self, predicate: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(remaining, 1.0))
            except TimeoutError:
                pass
        return True

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()


async def _append(redis: aioredis.Redis, entries: list[tuple[str, str]]) -> None:
    """XADD (stream, entry) pairs in one pipelined round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for stream, entry in entries:
            pipe.xadd(stream, {"j": entry})
        await pipe.execute()


def _errors(env: Env) -> dict[str, Any]:
    return {
        "provisioner_warnings": env.provisioner_warnings(),
        "kube_api_errors_pods_secrets": env.metric(
            "runner_platform_kube_api_errors_total",
            lambda labels: labels["resource"] in ("pods", "secrets"),
        ),
        "runner_creations_failed": env.metric(
            "runner_platform_jit_configs_total", lambda labels: labels["result"] == "error"
        ),
        "jit_calls_retried_github_unavailable": env.metric(
            "runner_platform_jit_configs_total",
            lambda labels: labels["result"] == "unavailable",
        ),
    }


# -- 1. burst --


def burst(count: int, settings: dict[str, str], label: str, profile: Path | None) -> dict[str, Any]:
    busy = wait_quiet()
    env = Env.start(spec_document(web={"max_runners": 5000}))
    try:
        env.start_provisioner(profile=profile, **LIMITS_OFF, **NO_RETIRING, **settings)
        env.wait_provisioner_synced()
        result = asyncio.run(_burst(env, count))
        result["errors"] = _errors(env)
        result["pod_created_histogram"] = _histogram_summary(
            env, "runner_platform_pod_created_seconds"
        )
    finally:
        env.stop()
    return {
        "machine_busy_cores_before": busy,
        "settings": label,
        "environment": settings or "shipped defaults",
        "components": env.components,
        **result,
    }


async def _burst(env: Env, count: int) -> dict[str, Any]:
    kube = env.kube()
    redis = aioredis.Redis.from_url(env.redis.url)
    pods = Watcher(kube, ["runners-web"], "pods")
    secrets = Watcher(kube, ["runners-web"], "secrets", pods.changed)
    await pods.synced()
    await secrets.synced()
    org, repo, sender, labels = WEB
    entries = [
        (ready_key("web-warm"), ready_entry(job, org, repo, sender, labels))
        for job in range(1, count + 1)
    ]
    meter = CpuMeter(env)
    started = time.monotonic()
    await _append(redis, entries)
    done = await pods.until(
        lambda: len(pods.added) >= count and len(secrets.added) >= count, timeout=180
    )
    cpu = meter.read()
    pods.stop()
    secrets.stop()
    await redis.aclose()
    await kube.aclose()
    pod_times = sorted(t - started for t in pods.added.values())
    secret_times = sorted(t - started for t in secrets.added.values())
    both = max(pod_times[-1], secret_times[-1]) if pod_times and secret_times else None
    return {
        "jobs": count,
        "completed": done,
        "pods_created": len(pod_times),
        "secrets_created": len(secret_times),
        "seconds_to_all_pods_and_secrets": round(both, 2) if both else None,
        "seconds_to_half_the_pods": round(pod_times[len(pod_times) // 2], 2) if pod_times else None,
        "runners_per_second": round(len(pod_times) / both, 1) if both else None,
        "provisioner_cpu_ms_per_runner": round(
            1000 * (cpu["cpu_seconds"]["provisioner"] or 0) / max(1, len(pod_times)), 2
        ),
        "cpu": cpu,
    }


def limited(count: int, seconds: float) -> dict[str, Any]:
    """The burst against GitHub's secondary limits (emulated) and the default bucket."""
    env = Env.start(spec_document(web={"max_runners": 5000}))
    try:
        for emulator in env.emulators.values():
            emulator.enable_rate_limits(primary=5000, secondary_points=900)
        env.start_provisioner(**NO_RETIRING)  # RUNNER_PLATFORM_GITHUB_POINTS: default 900
        env.wait_provisioner_synced()
        result = asyncio.run(_limited(env, count, seconds))
        result["jit_results"] = {
            outcome: env.metric(
                "runner_platform_jit_configs_total", lambda labels, o=outcome: labels["result"] == o
            )
            for outcome in ("created", "error", "unavailable")
        }
        result["github_jit_answers"] = {
            status: env.metric(
                "runner_platform_github_api_calls_total",
                lambda labels, s=status: (
                    labels["endpoint"] == "generate_jitconfig" and labels["status"] == s
                ),
            )
            for status in ("201", "403", "429")
        }
        log = (env.workdir / "logs" / "provisioner.log").read_text(errors="replace")
        result["back_offs_logged"] = log.count("backs off")
    finally:
        env.stop()
    return {"components": env.components, **result}


async def _limited(env: Env, count: int, seconds: float) -> dict[str, Any]:
    kube = env.kube()
    redis = aioredis.Redis.from_url(env.redis.url)
    pods = Watcher(kube, ["runners-web"], "pods")
    await pods.synced()
    org, repo, sender, labels = WEB
    started = time.monotonic()
    await _append(
        redis,
        [
            (ready_key("web-warm"), ready_entry(job, org, repo, sender, labels))
            for job in range(1, count + 1)
        ],
    )
    await pods.until(lambda: len(pods.added) >= count, timeout=seconds)
    elapsed = time.monotonic() - started
    pods.stop()
    await redis.aclose()
    await kube.aclose()
    times = sorted(t - started for t in pods.added.values())
    timeline = {f"{s}s": sum(1 for t in times if t <= s) for s in range(15, int(elapsed) + 1, 15)}
    overall = len(times) / elapsed * 60
    # After the bucket's first minute (a full bucket lets 180 through at once), the rate
    # the limits allow: runners created from 60 s on, per minute.
    late = [t for t in times if t > 60]
    sustained = len(late) / (elapsed - 60) * 60 if elapsed > 90 else None
    first = sum(1 for t in times if t <= 5)
    extrapolated = None
    if sustained:
        extrapolated = round(60 + (count - sum(1 for t in times if t <= 60)) / sustained * 60)
    return {
        "jobs": count,
        "ran_seconds": round(elapsed, 1),
        "pods_created": len(times),
        "created_in_first_5s": first,
        "timeline_pods_created": timeline,
        "runners_per_minute_overall": round(overall, 1),
        "runners_per_minute_after_first_minute": round(sustained, 1) if sustained else None,
        "floor_runners_per_minute": 180,
        "extrapolated_seconds_for_all": extrapolated,
    }


# -- 2. steady --


def steady(rate: float, seconds: float, profile: Path | None) -> dict[str, Any]:
    teams = {"max_runners": 5000}
    env = Env.start(spec_document(web=teams, infra=teams, ml=teams))
    try:
        env.start_provisioner(profile=profile, **LIMITS_OFF, **NO_RETIRING, **TUNED)
        env.wait_provisioner_synced()
        result = asyncio.run(_steady(env, rate, seconds))
        result["errors"] = _errors(env)
        result["pod_created_histogram"] = _histogram_summary(
            env, "runner_platform_pod_created_seconds"
        )
        result["provisioner_rss_mb_at_end"] = round(env.provisioner_rss_mb(), 1)
    finally:
        env.stop()
    return {
        "settings": "tuned",
        "environment": TUNED,
        "components": env.components,
        "design": (
            f"{rate:g} jobs/s appended to rp:ready round-robin over {', '.join(STEADY_SETS)} "
            "(three teams, three namespaces, each team max_runners 5000); pods stay "
            "unscheduled (no scheduler), so they accumulate; latency pairs the k-th job "
            "of a scale set with its k-th pod (oldest job first, as the provisioner "
            "attributes it) by the bench's watch receive time"
        ),
        **result,
    }


async def _steady(env: Env, rate: float, seconds: float) -> dict[str, Any]:
    kube = env.kube()
    redis = aioredis.Redis.from_url(env.redis.url)
    namespaces = ["runners-web", "runners-infra", "runners-ml"]
    pods = Watcher(kube, namespaces, "pods")
    await pods.synced()
    names = list(STEADY_SETS)
    queued: dict[str, list[float]] = {name: [] for name in names}
    total = int(rate * seconds)
    meter = CpuMeter(env)
    started = time.monotonic()
    tick = 0.02  # appends in 20 ms batches, each entry stamped when it is appended
    sent = 0
    lag_max = 0.0
    while sent < total:
        due = min(total, int((time.monotonic() - started) * rate) + 1)
        batch = []
        for job in range(sent + 1, due + 1):
            name = names[job % len(names)]
            org, repo, sender, labels = STEADY_SETS[name]
            batch.append((ready_key(name), ready_entry(job, org, repo, sender, labels)))
            queued[name].append(time.monotonic())
        if batch:
            await _append(redis, batch)
            lag_max = max(lag_max, time.monotonic() - (started + (due - 1) / rate))
        sent = due
        await asyncio.sleep(max(0.0, started + sent / rate - time.monotonic()) or tick)
    generated = time.monotonic() - started
    await pods.until(lambda: len(pods.added) >= total, timeout=120)
    cpu = meter.read()
    pods.stop()
    await redis.aclose()
    await kube.aclose()
    latencies: list[float] = []
    by_set: dict[str, list[float]] = {name: [] for name in names}
    for name, stamp in pods.added.items():
        scale_set = pods.labels.get(name, "")
        if scale_set in by_set:
            by_set[scale_set].append(stamp)
    for name in names:
        for queued_at, created_at in zip(queued[name], sorted(by_set[name]), strict=False):
            latencies.append(created_at - queued_at)
    return {
        "rate_per_second": rate,
        "seconds": seconds,
        "jobs": total,
        "generator_seconds": round(generated, 2),
        "generator_max_lag_s": round(lag_max, 3),
        "pods_created": len(pods.added),
        "queued_to_created_s_by_watch": _percentiles(latencies),
        "cpu": cpu,
    }


# -- 3. completion --


def completion(runners: int) -> dict[str, Any]:
    from localenv.runner_standin import RunnerStandIn

    nodes = -(-runners // 5) + 2  # a warm node fits 5 of web's runners (100Gi disk / 20Gi)
    web: dict[str, Any] = {"max_runners": runners + 10}
    if "container_mode" in Team.model_fields:
        # Hook modes give the runner a generic ephemeral volume: scheduling it needs the
        # ephemeral volume controller and a volume provisioner, which the local
        # environment does not run. An emptyDir work volume schedules on KWOK nodes.
        web["container_mode"] = "none"
    env = Env.start(spec_document(web=web), kwok=True, nodes={"warm": nodes})
    try:
        logging.getLogger("localenv.runner_standin").setLevel(logging.ERROR)  # retries
        standin = RunnerStandIn(
            env.plane.kubeconfig, {name: e.url for name, e in env.emulators.items()}
        ).start()
        env.extra.append(standin)
        env.components.append("runner stand-in (in the bench process)")
        env.start_provisioner(**LIMITS_OFF)
        env.wait_provisioner_synced()
        result = asyncio.run(_completion(env, runners))
        result["errors"] = _errors(env)
        result["standin"] = dict(standin.stats)
        if not result["completed_10_per_second"]["jobs_in_progress_on_runners"]:
            result["provisioner_log_tail"] = env.provisioner_log(20)
        result["team_web"] = web
    finally:
        env.stop()
    return {
        "components": env.components,
        "design": (
            f"{runners} jobs queued in the emulator and appended to rp:ready:web-warm; "
            "runner pods scheduled onto KWOK warm nodes, the stand-in brings their runners "
            "online and they take the jobs (in_progress appended to rp:events as the "
            "listener would); then the jobs are completed in the emulator (completed "
            "appended to rp:events too), 10 a second, then another round all at once; "
            "per runner: from complete_job until its pod and Secret are DELETED (bench "
            "watch) and its registration is gone (the emulator drops an ephemeral "
            "runner's registration when its job completes, as GitHub does)"
        ),
        **result,
    }


async def _completion(env: Env, runners: int) -> dict[str, Any]:
    kube = env.kube()
    redis = aioredis.Redis.from_url(env.redis.url)
    pods = Watcher(kube, ["runners-web"], "pods")
    secrets = Watcher(kube, ["runners-web"], "secrets", pods.changed)
    await pods.synced()
    await secrets.synced()
    try:
        spaced = await _completion_round(env, redis, pods, secrets, runners, 0.1, 0)
        at_once = await _completion_round(env, redis, pods, secrets, runners, 0.0, runners)
    finally:
        pods.stop()
        secrets.stop()
        await redis.aclose()
        await kube.aclose()
    await asyncio.sleep(1)  # the audit record is written after the deletions
    how: dict[str, int] = {}  # the provisioner's audit of each clean-up: why it ran
    for _, fields in await aioredis.Redis.from_url(env.redis.url).xrange(AUDIT_STREAM):
        record = json.loads(fields[b"r"])
        if record.get("action") == "cleanup":
            why = f"{record['decision']}: {record['reason'].split(':')[0]}"
            how[why] = how.get(why, 0) + 1
    return {
        "runners_per_round": runners,
        "completed_10_per_second": spaced,
        "completed_all_at_once": at_once,
        "cleanups_audited": how,
    }


async def _completion_round(
    env: Env,
    redis: aioredis.Redis,
    pods: Watcher,
    secrets: Watcher,
    runners: int,
    spacing: float,
    first: int,
) -> dict[str, Any]:
    """``runners`` jobs run on runners, then completed ``spacing`` s apart; per runner,
    the time from ``complete_job`` until its pod, Secret and registration are gone."""
    world = env.emulators["cloud"].world
    org, repo, sender, labels = WEB
    jobs = [
        world.queue_job(org, repo, labels, sender, name=f"bench-{first + i}").id
        for i in range(runners)
    ]
    await _append(
        redis, [(ready_key("web-warm"), ready_entry(j, org, repo, sender, labels)) for j in jobs]
    )
    started = time.monotonic()
    while time.monotonic() < started + 90:
        if all(world.jobs[j].status == "in_progress" for j in jobs):
            break
        await asyncio.sleep(0.1)
    to_running = time.monotonic() - started
    ran = {j: world.jobs[j].runner for j in jobs if world.jobs[j].runner is not None}
    await _append(
        redis,
        [
            (events_key("web-warm"), event_entry(j, "in_progress", runner.name))
            for j, runner in ran.items()
        ],
    )
    await asyncio.sleep(2)  # the provisioner applies them: these runners are busy
    registration_gone: dict[int, float] = {}
    stop = threading.Event()

    def poll_registrations() -> None:
        while not stop.is_set():
            now = time.monotonic()
            for runner in ran.values():
                if runner.id not in registration_gone and runner.id not in world.runners:
                    registration_gone[runner.id] = now
            time.sleep(0.005)

    poller = threading.Thread(target=poll_registrations, daemon=True)
    poller.start()
    meter = CpuMeter(env)
    completed_at: dict[int, float] = {}
    for job in ran:
        completed_at[job] = time.monotonic()
        world.complete_job(job, "success")
        await _append(redis, [(events_key("web-warm"), event_entry(job, "completed"))])
        if spacing:
            await asyncio.sleep(spacing)
    names = [runner.name for runner in ran.values()]
    await pods.until(
        lambda: all(n in pods.deleted and n in secrets.deleted for n in names), timeout=60
    )
    cpu = meter.read()
    stop.set()
    poller.join(timeout=5)
    removal, pod_gone, secret_gone, registration = [], [], [], []
    for job, runner in ran.items():
        t0 = completed_at[job]
        p, s = pods.deleted.get(runner.name), secrets.deleted.get(runner.name)
        r = registration_gone.get(runner.id)
        if p is not None:
            pod_gone.append(p - t0)
        if s is not None:
            secret_gone.append(s - t0)
        if r is not None:
            registration.append(max(0.0, r - t0))
        if p is not None and s is not None and r is not None:
            removal.append(max(p, s, r) - t0)
    return {
        "jobs_in_progress_on_runners": len(ran),
        "seconds_until_all_jobs_ran": round(to_running, 1),
        "fully_removed": len(removal),
        "completion_to_all_three_gone_s": _percentiles(removal),
        "completion_to_pod_deleted_s": _percentiles(pod_gone),
        "completion_to_secret_deleted_s": _percentiles(secret_gone),
        "completion_to_registration_gone_s": _percentiles(registration),
        "cpu": cpu,
    }


# -- 4. memory --


def memory(count: int) -> dict[str, Any]:
    env = Env.start(spec_document())
    try:
        env.start_provisioner(**LIMITS_OFF, **NO_RETIRING)
        env.wait_provisioner_synced()
        time.sleep(2)
        empty_rss = env.provisioner_rss_mb()
        env.stop_provisioner()
        created_in = asyncio.run(_create_pods(env, count))
        started = time.monotonic()
        env.start_provisioner(**LIMITS_OFF, **NO_RETIRING)
        meter = CpuMeter(env)
        deadline = started + 300
        tracked = 0.0
        while time.monotonic() < deadline:
            try:
                tracked = env.metric("runner_platform_runners")
            except Exception:  # not serving yet
                tracked = 0.0
            if tracked >= count:
                break
            time.sleep(0.25)
        synced_after = time.monotonic() - started
        samples = []
        for _ in range(20):  # 10 s: a few resync passes and a reaper-free stretch
            samples.append(env.provisioner_rss_mb())
            time.sleep(0.5)
        cpu = meter.read()
        env.stop_provisioner()
        deleted = asyncio.run(_delete_pods(env))
    finally:
        env.stop()
    return {
        "components": env.components,
        "pods": count,
        "bench_created_pods_in_s": round(created_in, 1),
        "runners_tracked": tracked,
        "seconds_from_start_to_synced": round(synced_after, 1),
        "rss_mb_empty": round(empty_rss, 1),
        "rss_mb_tracking": {
            "after_sync": round(samples[0], 1),
            "max_over_10s": round(max(samples), 1),
        },
        "rss_kb_per_pod": round((max(samples) - empty_rss) * 1024 / count, 2),
        "deleted_after": deleted,
        "cpu": cpu,
    }


async def _create_pods(env: Env, count: int) -> float:
    """``count`` runner pods, exactly as the provisioner builds them, spread over every
    scale set of the spec, created by the bench straight through the API server."""
    kube = env.kube(qps=5000, concurrency=16)
    facts = RuntimeFacts(
        team_role_arns=ROLE_ARNS,
        vault_mounts={i.name: f"jwt-{i.name}" for i in env.spec.github_instances},
        redis_endpoint="127.0.0.1",
    )
    scale_sets: list[ScaleSet] = list(env.spec.scale_sets())
    teams = {t.name: t for t in env.spec.teams}
    rng = random.Random(8)
    names: set[str] = set()
    work: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
    for index in range(count):
        scale_set = scale_sets[index % len(scale_sets)]
        while True:
            suffix = "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(5))
            name = f"{scale_set.name}-{suffix}"
            if name not in names:
                names.add(name)
                break
        pod = runner_pod(env.spec, facts, scale_set, name, 100_000 + index)
        work.put_nowait((teams[scale_set.team].namespace, pod))

    async def worker() -> None:
        while not work.empty():
            namespace, pod = work.get_nowait()
            await kube.create(namespace, "pods", pod)

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(16)))
    elapsed = time.monotonic() - started
    await kube.aclose()
    return elapsed


async def _delete_pods(env: Env) -> dict[str, Any]:
    kube = env.kube()
    started = time.monotonic()
    for team in env.spec.teams:
        await kube.request(
            "DELETE",
            f"/api/v1/namespaces/{team.namespace}/pods",
            params={"labelSelector": selector(), "gracePeriodSeconds": "0"},
        )
    left = sum([len((await kube.list(t.namespace, "pods", selector()))[0]) for t in env.spec.teams])
    await kube.aclose()
    return {"seconds": round(time.monotonic() - started, 1), "pods_left": left}


# -- running --

SCENARIOS = ("burst", "limited", "steady", "completion", "memory")
RESULT_FILE = RESULTS / "provision.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--burst", type=int, default=1000, help="jobs queued at once")
    parser.add_argument("--limited-seconds", type=float, default=150)
    parser.add_argument("--rate", type=float, default=100, help="jobs/s, steady scenario")
    parser.add_argument("--seconds", type=float, default=60, help="length of the steady run")
    parser.add_argument("--runners", type=int, default=50, help="completion scenario")
    parser.add_argument("--pods", type=int, default=10_000, help="memory scenario")
    parser.add_argument(
        "--profile", type=Path, help="write the provisioner's cProfile of burst/steady here"
    )
    parser.add_argument("--no-save", action="store_true", help="print only (trial runs)")
    args = parser.parse_args()
    wanted = [s for s in args.only.split(",") if s]
    unknown = set(wanted) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    def profile(name: str) -> Path | None:
        return args.profile / f"{name}.prof" if args.profile else None

    result: dict[str, Any] = {
        "benchmark": "provision",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()},
        "targets": {
            "burst_1000_seconds": "<= 10 (GitHub limits off)",
            "limited_runners_per_minute": ">= 180 (900 points/min, 5 per JIT call)",
            "steady_p99_queued_to_created_s": "<= 2 at 100 jobs/s",
            "completion_p50_s": "<= 1 (pod, Secret and registration gone)",
            "memory_rss_mb_10000_pods": "<= 300",
        },
    }
    started = time.monotonic()
    for name in wanted:
        print(f"bench-provision: {name} ...", file=sys.stderr, flush=True)
        quiet = wait_quiet()
        began = time.monotonic()
        if name == "burst":
            shipped = burst(args.burst, {}, "shipped", profile("burst-shipped"))
            shipped["machine_busy_cores_before"] = quiet
            tuned = burst(args.burst, TUNED, "tuned", profile("burst-tuned"))
            result["burst"] = {"shipped": shipped, "tuned": tuned}
        elif name == "limited":
            result["limited"] = limited(args.burst, args.limited_seconds)
        elif name == "steady":
            result["steady"] = steady(args.rate, args.seconds, profile("steady"))
            p99 = result["steady"]["queued_to_created_s_by_watch"]["p99"]
            if p99 is None or p99 > 2:  # missed: how does a lower rate fare?
                lower = round(args.rate * 0.6)
                print(f"bench-provision: steady again at {lower}/s", file=sys.stderr)
                busy = wait_quiet()
                result["steady"][f"at_{lower}_per_second"] = {
                    **steady(lower, args.seconds, None),
                    "machine_busy_cores_before": busy,
                }
        elif name == "completion":
            result["completion"] = completion(args.runners)
        elif name == "memory":
            result["memory"] = memory(args.pods)
        result[name]["machine_busy_cores_before"] = quiet
        print(
            f"bench-provision: {name} took {time.monotonic() - began:.0f}s",
            file=sys.stderr,
            flush=True,
        )
    result["total_seconds"] = round(time.monotonic() - started)
    if args.no_save:
        print(json.dumps(result, indent=2))
        return 0
    if set(wanted) != set(SCENARIOS) and RESULT_FILE.exists():  # keep the other figures
        earlier = json.loads(RESULT_FILE.read_text())
        result = {**earlier, **result, "partial_run": wanted}
    save("provision", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
