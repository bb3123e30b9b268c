"""Fair-share convergence on a shared pool (part of ``make bench-faults``).

``python -m bench.fair_share`` prints JSON; :func:`measure` returns the figures.

A real ``python -m controller provision`` process against etcd + kube-apiserver +
kube-scheduler + KWOK (10 warm nodes of 10 runners), a real Redis, both GitHub emulators
and the runner stand-in (bench/provision_env.py). The warm pool's limits hold 100 runners
(1 cpu each); its shares weigh web 2, infra 1. The bench plays the listener: it queues
``JOBS`` jobs per team in the emulators at once (interleaved) and appends them to
``rp:ready:<scale set>``, appends ``in_progress`` when a runner takes a job and
``completed`` when the bench ends the job ``JOB_SECONDS`` later.

Figures:

- ``fair_share_convergence_s``: from both bursts queued until the provisioner's runner
  counts per team (``runner_platform_actual_runners``: pods not finishing + runners being
  created) are within ``TOLERANCE`` of the weights - web's share of the pool's runners
  2/3 ± 0.05, the pool at least 90 % full - in ``HOLD`` consecutive samples 0.5 s apart
  (the first of those counts). ``fair_share_convergence_live_pods_s``: the same with the
  live runner pods in the API server, which lag the count by the creation pipeline.
- ``infra_queue_time_max_s`` / ``_p95_s`` / ``_min_s`` (and web's): job queued → a runner
  took it, per team, from the emulator's own times (min: the team's first job served).
  Infra's burst is served at its third of the pool while web's lasts, then at the whole
  pool: bounded by its own backlog, never by web's.

Nothing here asserts a speed: tests/integration/test_fair_share.py asserts the behaviour.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402

from bench.provision_env import Env, event_entry, ready_entry, spec_document  # noqa: E402
from controller.provision.pod import selector  # noqa: E402
from controller.streams import events_key, ready_key  # noqa: E402
from localenv.github.state import Job  # noqa: E402

JOBS = 500  # per team
JOB_SECONDS = 8.0  # how long a job runs on its runner
CAPACITY = 100  # runners the warm pool's limits hold
NODES = 10
WEIGHTS = {"web": 2.0, "infra": 1.0}
TOLERANCE = 0.05  # web's share of the live runners: 2/3 ± this
FULL = 0.9  # the pool counts as saturated at this fraction of CAPACITY
HOLD = 3  # consecutive samples within tolerance
SAMPLE_SECONDS = 0.5
TEAMS = {  # team -> (instance, org, repository, sender, labels)
    "web": ("cloud", "acme-corp", "acme-corp/storefront", "alice", ["self-hosted", "warm"]),
    "infra": ("ghes", "platform", "platform/deploy", "sam", ["self-hosted", "warm"]),
}
COMMAND = "python -m bench.fair_share"


def document(jobs: int) -> dict[str, Any]:
    team = {
        "container_mode": "none",  # an emptyDir work folder: KWOK provisions no volumes
        "max_runners": jobs + CAPACITY,
        "resources": {"cpu": "1", "memory": "2Gi", "ephemeral_storage": "5Gi"},
    }
    doc = spec_document(web=team, infra=team)
    for entry in doc["teams"]:
        if entry["name"] in TEAMS:
            entry.pop("container_modes", None)
    warm = next(p for p in doc["pools"] if p["name"] == "warm")
    warm["limits"] = {"cpu": CAPACITY, "memory": "1600Gi"}
    warm["shares"] = {name: {"weight": weight} for name, weight in WEIGHTS.items()}
    return doc


def measure(jobs: int = JOBS, job_seconds: float = JOB_SECONDS) -> dict[str, float]:
    """Run the scenario once; the figures in seconds (``nan`` if never reached)."""
    from localenv.runner_standin import RunnerStandIn

    env = Env.start(document(jobs), kwok=True, nodes={"warm": NODES})
    try:
        logging.getLogger("localenv.runner_standin").setLevel(logging.ERROR)  # retries
        standin = RunnerStandIn(
            env.plane.kubeconfig, {name: e.url for name, e in env.emulators.items()}
        ).start()
        env.extra.append(standin)
        env.start_provisioner(RUNNER_PLATFORM_GITHUB_POINTS="0")
        env.wait_provisioner_synced()
        return asyncio.run(_run(env, jobs, job_seconds))
    finally:
        env.stop()


async def _run(env: Env, count: int, job_seconds: float) -> dict[str, float]:
    redis = aioredis.Redis.from_url(env.redis.url)
    kube = env.kube()
    jobs: dict[str, list[Job]] = {team: [] for team in TEAMS}
    entries: list[tuple[str, str]] = []
    for index in range(count):
        for team, (instance, org, repo, sender, labels) in TEAMS.items():
            world = env.emulators[instance].world
            job = world.queue_job(org, repo, labels, sender, name=f"fair-{team}-{index}")
            jobs[team].append(job)
            entries.append(
                (ready_key(f"{team}-warm"), ready_entry(job.id, org, repo, sender, labels))
            )
    await _append(redis, entries)
    queued = time.monotonic()
    reported: set[int] = set()
    completed: set[int] = set()
    counted = Convergence(queued)  # the provisioner's runners per team (its /metrics)
    live = Convergence(queued)  # live runner pods in the API server
    next_sample = queued
    try:
        while time.monotonic() - queued < 900:
            await _play_listener(env, jobs, redis, reported, completed, job_seconds)
            now = time.monotonic()
            if now >= next_sample and (counted.pending or live.pending):
                next_sample = now + SAMPLE_SECONDS
                counted.sample(now, _counted(env))
                live.sample(now, {team: await _live(kube, team) for team in TEAMS})
            if all(job.started_at is not None for team in jobs.values() for job in team):
                break
            await asyncio.sleep(0.1)
    finally:
        await kube.aclose()
        await redis.aclose()
    result = {
        "fair_share_convergence_s": round(counted.seconds, 2),
        "fair_share_convergence_live_pods_s": round(live.seconds, 2),
    }
    for team, team_jobs in jobs.items():
        waits = sorted(
            job.started_at - job.created_at for job in team_jobs if job.started_at is not None
        )
        result[f"{team}_jobs_started"] = float(len(waits))
        result[f"{team}_queue_time_min_s"] = round(waits[0], 2) if waits else math.nan
        result[f"{team}_queue_time_max_s"] = round(waits[-1], 2) if waits else math.nan
        result[f"{team}_queue_time_p95_s"] = (
            round(waits[min(len(waits) - 1, int(0.95 * len(waits)))], 2) if waits else math.nan
        )
    return result


class Convergence:
    """When the counts first stayed within tolerance of the weights for HOLD samples."""

    def __init__(self, since: float) -> None:
        self.since = since
        self.streak = 0
        self.first = since
        self.seconds = math.nan

    @property
    def pending(self) -> bool:
        return math.isnan(self.seconds)

    def sample(self, now: float, counts: dict[str, float]) -> None:
        if not self.pending:
            return
        total = sum(counts.values())
        share = counts.get("web", 0.0) / total if total else 0.0
        target = WEIGHTS["web"] / sum(WEIGHTS.values())
        if total >= FULL * CAPACITY and abs(share - target) <= TOLERANCE:
            self.streak += 1
            if self.streak == 1:
                self.first = now
            if self.streak >= HOLD:
                self.seconds = self.first - self.since
        else:
            self.streak = 0


def _counted(env: Env) -> dict[str, float]:
    """runner_platform_actual_runners of each team's warm scale set (the provisioner's
    supply: pods not finishing + runners being created)."""
    counts = {}
    for team in TEAMS:
        name = f"{team}-warm"
        counts[team] = env.metric(
            "runner_platform_actual_runners", lambda labels, n=name: labels["scale_set"] == n
        )
    return counts


async def _play_listener(
    env: Env,
    jobs: dict[str, list[Job]],
    redis: aioredis.Redis,
    reported: set[int],
    completed: set[int],
    job_seconds: float,
) -> None:
    """What the listener would append, and the jobs' ends: ``in_progress`` for each job
    a runner took, then ``completed`` once it ran ``job_seconds``."""
    now = time.time()
    entries: list[tuple[str, str]] = []
    for team, team_jobs in jobs.items():
        world = env.emulators[TEAMS[team][0]].world
        stream = events_key(f"{team}-warm")
        for job in team_jobs:
            if job.id in completed or job.started_at is None:
                continue
            if job.id not in reported and job.runner is not None:
                reported.add(job.id)
                entries.append((stream, event_entry(job.id, "in_progress", job.runner.name)))
            if now - job.started_at >= job_seconds:
                world.complete_job(job.id, "success")
                completed.add(job.id)
                entries.append((stream, event_entry(job.id, "completed")))
    if entries:
        await _append(redis, entries)


async def _live(kube: Any, team: str) -> int:
    pods, _ = await kube.list(f"runners-{team}", "pods", selector())
    return sum(
        1
        for pod in pods
        if not pod["metadata"].get("deletionTimestamp")
        and pod.get("status", {}).get("phase") not in ("Succeeded", "Failed")
    )


async def _append(redis: aioredis.Redis, entries: list[tuple[str, str]]) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for stream, entry in entries:
            pipe.xadd(stream, {"j": entry})
        await pipe.execute()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=JOBS, help="jobs per team")
    parser.add_argument("--job-seconds", type=float, default=JOB_SECONDS)
    args = parser.parse_args()
    figures = measure(args.jobs, args.job_seconds)
    print(
        json.dumps(
            {
                "command": f"{COMMAND} --jobs {args.jobs} --job-seconds {args.job_seconds:g}",
                "scenario": {
                    "jobs_per_team": args.jobs,
                    "job_seconds": args.job_seconds,
                    "pool_capacity_runners": CAPACITY,
                    "weights": WEIGHTS,
                    "tolerance": f"web share {2 / 3:.3f} ± {TOLERANCE}, pool >= {FULL:.0%}, "
                    f"{HOLD} samples {SAMPLE_SECONDS} s apart",
                },
                **figures,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
