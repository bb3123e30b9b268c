"""High availability and recovery, with real processes: two provisioner replicas sharing
the scale sets, a controller killed mid-burst of 1,000 jobs, Redis restarted mid-burst,
an API server that throttles, a node lost under busy runners.

Each test asserts the same things, by counting in the cluster, the emulator and the audit
stream: every job got exactly one runner pod (the bursts: counted, as the provisioner
counts; one KWOK node per pool runs only some of them), no job was started twice, no
runner ran two jobs, and every runner the platform made is in the audit stream twice —
created, and finished, lost, reaped or abandoned."""

from __future__ import annotations

import copy
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from controller.audit import iter_records
from controller.model import load_spec
from localenv.fault_proxy import FaultProxy
from localenv.github.state import NotFound
from localenv.kube import ControlPlane
from localenv.services import Redis
from tests.conftest import DEV_DOCUMENT
from tests.integration.platform_support import Platform, job_status, module_platform

WARM = ["self-hosted", "linux"]
REPO = "acme-corp/storefront"
SCALE_SET = "web-warm"
BURST = 1000


def _spec() -> Any:
    """The dev stack, container mode none (KWOK), web allowed 1,000 runners on a warm pool
    that holds them, no idle runners kept (so every runner is a job's)."""
    document = copy.deepcopy(DEV_DOCUMENT)
    for team in document["teams"]:
        team["container_mode"] = "none"
        team.pop("container_modes", None)
        team["min_idle"] = 0
        if team["name"] == "web":
            team["max_runners"] = BURST
    for pool in document["pools"]:
        if pool["name"] == "warm":
            pool["limits"] = {"cpu": 100_000, "memory": "400000Gi"}
    return load_spec(document)


@pytest.fixture(scope="module")
def proxy(kube_nodes: ControlPlane) -> Iterator[FaultProxy]:
    proxy = FaultProxy.for_plane(kube_nodes).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def aof_redis() -> Iterator[Redis]:
    """A Redis of this module's own, with AOF (appendfsync everysec): it is restarted."""
    server = Redis(appendonly=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def platform(
    request: pytest.FixtureRequest, aof_redis: Redis, proxy: FaultProxy
) -> Iterator[Platform]:
    yield from module_platform(
        request,
        "ha",
        redis_url=aof_redis.url,
        proxy=proxy,
        spec=_spec(),
        extra_env={
            "RUNNER_PLATFORM_IDLE_GRACE": "1",
            "RUNNER_PLATFORM_REAP_INTERVAL": "4",
            "RUNNER_PLATFORM_LEASE_SECONDS": "6",
            "RUNNER_PLATFORM_LEASE_RENEW": "2",
            "RUNNER_PLATFORM_WRITES": "32",
            # GitHub's secondary limit (900 points a minute: a JIT config or a DELETE is 5)
            # would pace a thousand runners over minutes; the emulator, like a GHES, has
            # none. The pacing has its own tests (test_provisioner_faults.py).
            "RUNNER_PLATFORM_GITHUB_POINTS": "0",
        },
    )


@pytest.fixture(autouse=True)
def _no_faults(proxy: FaultProxy) -> Iterator[None]:
    proxy.clear()
    yield
    proxy.clear()


# -- counting --


def _audited(platform: Platform, decision: str) -> list[dict[str, Any]]:
    return list(iter_records(platform.redis(), decision=decision, limit=1_000_000))


def _audited_all(platform: Platform) -> list[dict[str, Any]]:
    return list(iter_records(platform.redis(), limit=1_000_000))


def _created(platform: Platform) -> Counter[str]:
    """Runner (pod) name → how many runner-created records name it."""
    names = (re.match(r"pod (\S+) ", r["reason"]) for r in _audited(platform, "runner-created"))
    return Counter(m.group(1) for m in names if m)


def _starts(platform: Platform, jobs: list[int]) -> tuple[Counter[int], Counter[str]]:
    """From the emulator's runner events: starts per job, and jobs started per runner."""
    world = platform.emulators["cloud"].world
    wanted = set(jobs)
    with world.lock:
        started = [e for e in world.events if e.event == "job_started" and e.job_id in wanted]
    return Counter(e.job_id for e in started if e.job_id), Counter(e.name for e in started)


def _pods(platform: Platform) -> list[str]:
    return [p.metadata.name for p in platform.live_pods(SCALE_SET)]


def _registrations(platform: Platform) -> list[str]:
    return [r.name for r in platform.runners("cloud", "acme-corp") if r.name.startswith(SCALE_SET)]


def _assert_exactly_once(platform: Platform, jobs: list[int]) -> None:
    """No job started twice, no runner ran two jobs, every runner pod created once and on
    the record, every registration with its pod (an orphan one is reaped, on the record)."""
    per_job, per_runner = _starts(platform, jobs)
    assert all(count == 1 for count in per_job.values()), per_job.most_common(3)
    assert all(count == 1 for count in per_runner.values()), per_runner.most_common(3)
    created = _created(platform)
    pods = _pods(platform)
    assert len(pods) == len(set(pods))
    missing = [name for name in pods if created[name] != 1]
    assert not missing, f"{len(missing)} pods without exactly one audit record: {missing[:3]}"
    for runner in per_runner:  # every runner that ran a job was made (and recorded) once
        assert created[runner] == 1, runner


def _finish_all(platform: Platform, jobs: list[int]) -> None:
    world = platform.emulators["cloud"].world
    for job in jobs:
        if world.jobs[job].status != "completed":
            world.complete_job(job, "success" if world.jobs[job].runner else "cancelled")
    platform.emulators["cloud"].flush(timeout=300)  # a thousand webhooks on a busy machine
    platform.wait(lambda: not platform.pods(SCALE_SET), 240, "every runner pod deleted")
    platform.wait(lambda: not _registrations(platform), 60, "every registration gone")
    made = set(_created(platform))
    assert set(_starts(platform, jobs)[1]) <= made  # every runner that ran a job was made

    def unrecorded() -> set[str]:
        ends = ("runner-finished", "reaped", "runner-lost", "runner-abandoned")
        reasons = " ".join(r["reason"] for r in _audited_all(platform) if r["decision"] in ends)
        return made - set(re.findall(r"(?:pod|registration) ([a-z0-9][a-z0-9.-]*)", reasons))

    # Every runner the platform made: its end is on the record too (written after the
    # clean-up calls).
    deadline = time.monotonic() + 120
    while unrecorded() and time.monotonic() < deadline:
        time.sleep(0.5)
    missing = unrecorded()
    assert not missing, {
        name: [
            f"{r['decision']}: {r['reason']}" for r in _audited_all(platform) if name in r["reason"]
        ]
        for name in sorted(missing)[:5]
    }


def _wait_all_served(platform: Platform, jobs: list[int], timeout: float) -> None:
    """Every queued job has a runner pod (counting: pods are not bound to jobs)."""
    world = platform.emulators["cloud"].world

    def served() -> bool:
        waiting = sum(1 for j in jobs if world.jobs[j].status != "completed")
        return len(_pods(platform)) >= waiting

    platform.wait(served, timeout, "a runner pod for every job")


# -- the tests --


def test_two_replicas_share_the_scale_sets_and_one_survives_the_others_sigkill(
    platform: Platform,
) -> None:
    platform.start("provision", name="second")
    first, second = platform.processes["provision"].pid, platform.processes["second"].pid

    def split() -> dict[str, str] | None:
        holders = platform.lease_holders()
        pids = {h.rsplit("-", 1)[-1] for h in holders.values()}
        complete = len(holders) == len(platform.spec.scale_sets())
        return holders if complete and pids == {str(first), str(second)} else None

    holders = platform.wait(split, 60, "the scale sets spread over both replicas")
    by_team: dict[str, set[str]] = {}
    for scale_set in platform.spec.scale_sets():
        by_team.setdefault(scale_set.team, set()).add(holders[scale_set.name])
    assert all(len(owners) == 1 for owners in by_team.values()), by_team  # teams stay whole
    # Jobs of every team are served, whichever replica holds them.
    jobs = {
        "web": platform.queue("web", WARM, REPO),
        "ml": platform.queue("ml", ["self-hosted", "gpu"], "research/models"),
        "infra": platform.queue("infra", WARM, "platform/deploy"),
    }
    for team, job in jobs.items():
        instance = next(t.instance for t in platform.spec.teams if t.name == team)
        platform.wait(
            lambda i=instance, j=job: job_status(platform, i, j) == "in_progress", 90, team
        )
    # SIGKILL the replica that holds web; the other takes web over once the Lease expires.
    victim = "provision" if holders[SCALE_SET].endswith(f"-{first}") else "second"
    survivor = "second" if victim == "provision" else "provision"
    survivor_pid = platform.processes[survivor].pid
    platform.kill(victim)
    platform.wait(
        lambda: (
            {h.rsplit("-", 1)[-1] for h in platform.lease_holders().values()} == {str(survivor_pid)}
        ),
        60,
        "the survivor holds every scale set",
    )
    late = platform.queue("web", WARM, REPO)
    platform.wait(lambda: job_status(platform, "cloud", late) == "in_progress", 90, "served")
    _assert_exactly_once(platform, [jobs["web"], late])
    for team, job in jobs.items():
        instance = next(t.instance for t in platform.spec.teams if t.name == team)
        platform.emulators[instance].world.complete_job(job, "success")
    _finish_all(platform, [late])
    if survivor == "second":  # leave the module with one replica named "provision"
        platform.kill("second", signal.SIGTERM)
        platform.start("provision")


def test_the_provisioner_killed_mid_burst_of_a_thousand_jobs(platform: Platform) -> None:
    jobs = [platform.queue("web", WARM, REPO) for _ in range(BURST)]
    platform.wait(lambda: len(_pods(platform)) >= BURST // 4, 120, "the burst under way")
    assert platform.kill("provision") != 0  # SIGKILL, mid-burst
    platform.start("provision")
    _wait_all_served(platform, jobs, 300)
    platform.settle(SCALE_SET)  # a few more passes: nothing more is created
    assert len(_pods(platform)) == BURST
    _assert_exactly_once(platform, jobs)
    # A registration made just before the kill without its pod is reaped, on the record.
    platform.wait(
        lambda: sorted(_registrations(platform)) == sorted(_pods(platform)),
        60,
        "no registration without its pod",
    )
    _finish_all(platform, jobs)


def test_redis_restarted_mid_burst(platform: Platform, aof_redis: Redis) -> None:
    jobs = [platform.queue("web", WARM, REPO) for _ in range(200)]
    platform.emulators["cloud"].flush()  # every webhook delivered before Redis goes
    platform.wait(lambda: len(_pods(platform)) >= 20, 120, "the burst under way")
    aof_redis.stop_process()
    # While Redis is away: not ready, and a webhook is refused with 503 (GitHub redelivers).
    answer = httpx.get(f"http://127.0.0.1:{platform.port}/readyz", timeout=5)
    assert answer.status_code == 503
    time.sleep(3)
    aof_redis.start()
    platform.wait(
        lambda: httpx.get(f"http://127.0.0.1:{platform.port}/readyz", timeout=5).status_code == 200,
        30,
        "ready again",
    )
    _wait_all_served(platform, jobs, 240)
    platform.settle(SCALE_SET)
    assert len(_pods(platform)) == len(jobs)
    _assert_exactly_once(platform, jobs)
    late = platform.queue("web", WARM, REPO)  # and the whole path works again
    _wait_all_served(platform, [*jobs, late], 60)
    _finish_all(platform, [*jobs, late])


def test_the_api_server_throttles_for_a_while(platform: Platform, proxy: FaultProxy) -> None:
    # API Priority and Fairness says no to most writes for a while: 429 with Retry-After.
    fault = proxy.fail(429, method="POST", path=r".*/pods", times=150, share=0.8, retry_after=1)
    jobs = [platform.queue("web", WARM, REPO) for _ in range(150)]
    _wait_all_served(platform, jobs, 240)
    assert fault.injected > 0
    platform.settle(SCALE_SET)
    assert len(_pods(platform)) == len(jobs)
    _assert_exactly_once(platform, jobs)
    _finish_all(platform, jobs)


def test_a_node_lost_under_busy_runners(platform: Platform, kube_nodes: ControlPlane) -> None:
    from kubernetes import client

    jobs = [platform.queue("web", WARM, REPO) for _ in range(3)]
    platform.wait(
        lambda: all(job_status(platform, "cloud", j) == "in_progress" for j in jobs),
        90,
        "the jobs running",
    )
    world = platform.emulators["cloud"].world
    runners = {world.jobs[j].runner.name: j for j in jobs}  # type: ignore[union-attr]
    pods = {p.metadata.name: p.spec.node_name for p in platform.live_pods(SCALE_SET)}
    node = pods[next(iter(runners))]
    on_node = {name for name, n in pods.items() if n == node and name in runners}
    core = client.CoreV1Api(kube_nodes.api_client())
    body = core.read_node(node)
    core.delete_node(node)
    try:
        # In a cluster the pod GC (kube-controller-manager) deletes the pods bound to a
        # node that is gone; this environment runs no controller-manager, so the test
        # does what it would. The platform records the loss, removes the Secret, and the
        # registration once GitHub has failed the job.
        for name in pods:
            if pods[name] == node:
                core.delete_namespaced_pod(name, "runners-web", grace_period_seconds=0)
        platform.wait(
            lambda: not (on_node & set(_pods(platform))), 120, "the lost node's pods gone"
        )
        # Every runner of the node stops answering: GitHub fails the jobs of the busy ones
        # and sends no job to the idle ones (left online, they would take the re-runs).
        for name, where in pods.items():
            if where == node:
                try:
                    world.runner_lost(name)
                except NotFound:
                    pass  # an idle runner's registration the platform removed already
        platform.emulators["cloud"].flush()
        platform.wait(
            lambda: not (on_node & set(_registrations(platform))), 60, "registrations gone"
        )

        def lost_jobs() -> dict[str, int | None]:
            return {
                name: record.get("job_id")
                for record in _audited(platform, "runner-lost")
                for name in on_node
                if f"pod {name} " in record["reason"]
            }

        # Each loss on the record with the job it was running (written after the clean-up
        # calls): the platform's own account of each job's outcome.
        platform.wait(lambda: len(lost_jobs()) == len(on_node), 30, "every lost runner recorded")
        assert lost_jobs() == {name: runners[name] for name in on_node}
        secrets = {s.metadata.name for s in platform.secrets("runners-web")}
        assert not (on_node & secrets)
        failed = [runners[name] for name in on_node]
        assert all(world.jobs[j].conclusion == "failure" for j in failed)
        # A re-run queues the job again (a new job id): it is served like any other.
        reruns = [world.rerun_job(j).id for j in failed]
        platform.emulators["cloud"].flush()
    finally:
        body.metadata.resource_version = None
        body.metadata.uid = None
        core.create_node(body)
    platform.wait(
        lambda: all(job_status(platform, "cloud", j) == "in_progress" for j in reruns),
        120,
        "the re-run served",
    )
    every = [*jobs, *reruns]
    _assert_exactly_once(platform, every)
    _finish_all(platform, every)
