"""Fair share on a shared pool, end to end: real ``serve``/``listen``/``provision``
processes, the API server, scheduler and KWOK nodes, Redis, both GitHub emulators and
the runner stand-in.

Two teams (web on GitHub.com, infra on GHES) burst 500 jobs each at once into the warm
pool, which has room for 100 runners; web's share weighs 2, infra's 1. Jobs run for
``JOB_SECONDS`` once a runner takes them (the test completes them in the emulator), so
every runner turns over many times. Runners are never taken away: whoever's demand came
first holds the idle pool, and each freed runner goes to the team furthest below its
weighted share, so the counts converge to 67/33 within about a generation of runners and
stay there while both queues are long, and the smaller team is served all along.

Asserted on counts and order, never on time: the provisioner's runner counts per team
(its /metrics), the order in which the emulators gave jobs to runners, and the live pods
in the API server (never more than the pool holds). About 2.5 minutes on 2 cores: 8 s
jobs keep the pool full between generations (with 1 s jobs most of the pool was always
between runners, and the pool rarely at its limits).
"""

from __future__ import annotations

import copy
import json
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from controller.model import PlatformSpec, load_spec
from localenv.kube import ControlPlane
from localenv.process import free_port
from tests.conftest import DEV_DOCUMENT
from tests.integration.platform_support import Platform, module_platform

JOBS = 500  # per team, as issue 10 asks
JOB_SECONDS = 8.0  # how long a job runs once a runner took it
CAPACITY = 100  # runners the warm pool's limits hold (1 cpu each, 100 cpu)
NODES = 10  # KWOK warm nodes: 10 runners each (maxPods), so all 100 can run
WEIGHTS = {"web": 2.0, "infra": 1.0}
SHARE = {"web": 67, "infra": 33}  # 100 runners by 2:1, the larger share rounded up
TEAM_JOBS = {  # team -> (instance, org, repository, labels)
    "web": ("cloud", "acme-corp", "acme-corp/storefront", ["self-hosted", "linux", "warm"]),
    "infra": ("ghes", "platform", "platform/deploy", ["self-hosted", "linux", "warm"]),
}


def fair_share_spec() -> PlatformSpec:
    """The dev stack (container mode ``none``, as kwok_spec) with a warm pool holding 100
    runners of 1 cpu, 2Gi and 5Gi of disk (10 fit a KWOK warm node), shares 2:1, and teams
    allowed enough runners to want far more than the pool holds."""
    document = copy.deepcopy(DEV_DOCUMENT)
    warm = next(p for p in document["pools"] if p["name"] == "warm")
    warm["limits"] = {"cpu": CAPACITY, "memory": "1600Gi"}
    warm["shares"] = {team: {"weight": weight} for team, weight in WEIGHTS.items()}
    for team in document["teams"]:
        team["container_mode"] = "none"
        team.pop("container_modes", None)
        if team["name"] in WEIGHTS:
            team.update(
                min_idle=0,
                max_runners=JOBS + 100,
                resources={"cpu": "1", "memory": "2Gi", "ephemeral_storage": "5Gi"},
            )
    return load_spec(document)


@pytest.fixture(scope="module")
def platform(request: pytest.FixtureRequest, kube_nodes: ControlPlane) -> Iterator[Platform]:
    yield from module_platform(
        request,
        "fair-share",
        spec=fair_share_spec(),
        nodes_per_pool={"warm": NODES},
        extra_env={
            # The provisioner's /metrics, where its own count of runners is read.
            "RUNNER_PLATFORM_PROVISION_METRICS_PORT": str(free_port()),
            "RUNNER_PLATFORM_IDLE_GRACE": "5",
            # Under this load the stand-in now and then gives up on a runner whose Secret
            # it read before it existed; the reaper replaces such a runner (never online)
            # after the startup grace, so its job is served in seconds, not 5 minutes.
            "RUNNER_PLATFORM_STARTUP_GRACE": "20",
            "RUNNER_PLATFORM_REAP_INTERVAL": "5",
        },
    )
    # The other modules of the session expect one node per pool.
    core = client.CoreV1Api(kube_nodes.api_client())
    for index in range(1, NODES):
        name = f"warm-node-{index}"
        for pod in core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={name}").items:
            core.delete_namespaced_pod(
                pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0
            )
        try:
            core.delete_node(name)
        except client.ApiException as error:
            if error.status != 404:
                raise


class JobRunner:
    """Plays the jobs: completes each job of the two teams once it has run JOB_SECONDS."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            now = time.time()
            for name in ("cloud", "ghes"):
                emulator = self.platform.emulators[name]
                with emulator.world.lock:
                    due = [
                        job.id
                        for job in emulator.world.jobs.values()
                        if job.status == "in_progress"
                        and job.started_at is not None
                        and now - job.started_at >= JOB_SECONDS
                    ]
                for job_id in due:
                    emulator.world.complete_job(job_id, "success")
            time.sleep(0.25)

    def __enter__(self) -> JobRunner:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


@dataclass
class Sample:
    live: dict[str, int]  # live runner pods per team on warm
    supply: dict[str, float]  # the provisioner's runners per team: live + being created
    started: dict[str, int]  # jobs started so far per team
    queued: dict[str, int]  # jobs still queued per team


@dataclass
class Sampler:
    """Samples the live runner pods per team (from the API server) and the jobs started
    and queued (from the emulators) until stopped."""

    platform: Platform
    jobs: dict[str, set[int]]
    samples: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def take(self) -> Sample:
        live = {team: len(self.platform.live_pods(f"{team}-warm")) for team in TEAM_JOBS}
        started: dict[str, int] = {}
        queued: dict[str, int] = {}
        for team, (instance, *_) in TEAM_JOBS.items():
            world = self.platform.emulators[instance].world
            with world.lock:
                statuses = [world.jobs[job].status for job in self.jobs[team]]
            started[team] = sum(1 for s in statuses if s != "queued")
            queued[team] = len(statuses) - started[team]
        return Sample(live, _supply(self.platform), started, queued)

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.samples.append(self.take())
                time.sleep(1.0)  # the harness shares the cores with what it measures
        except BaseException as error:
            self.error = error
            raise

    def web_done(self) -> bool:
        if self.error is not None:
            raise AssertionError(f"sampling failed: {self.error!r}")
        return bool(self.samples) and self.samples[-1].queued["web"] == 0


def _supply(platform: Platform) -> dict[str, float]:
    """runner_platform_actual_runners per team on warm, from the provisioner's /metrics."""
    port = platform.extra_env["RUNNER_PLATFORM_PROVISION_METRICS_PORT"]
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}  # a busy moment: this sample has no count (the window skips it)
    supply = dict.fromkeys(TEAM_JOBS, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "runner_platform_actual_runners":
                team = sample.labels["scale_set"].removesuffix("-warm")
                if team in supply and sample.labels["scale_set"] == f"{team}-warm":
                    supply[team] = sample.value
    return supply


def _queue_bursts(platform: Platform) -> dict[str, set[int]]:
    """JOBS jobs per team, interleaved, queued at once in both emulators."""
    jobs: dict[str, set[int]] = {team: set() for team in TEAM_JOBS}
    for index in range(JOBS):
        for team, (instance, org, repo, labels) in TEAM_JOBS.items():
            world = platform.emulators[instance].world
            sender = {"web": "alice", "infra": "sam"}[team]
            job = world.queue_job(org, repo, labels, sender, name=f"burst-{team}-{index}")
            jobs[team].add(job.id)
    for name in ("cloud", "ghes"):
        platform.emulators[name].flush(timeout=60)
    return jobs


def _start_order(platform: Platform, jobs: dict[str, set[int]]) -> list[str]:
    """The team of each started job, in the order the emulators gave them to runners."""
    starts: list[tuple[float, str]] = []
    for team, (instance, *_) in TEAM_JOBS.items():
        world = platform.emulators[instance].world
        with world.lock:
            starts += [
                (world.jobs[job].started_at or 0.0, team)
                for job in jobs[team]
                if world.jobs[job].started_at is not None
            ]
    return [team for _, team in sorted(starts)]


def test_two_bursts_converge_to_the_weights_and_the_smaller_team_is_served_throughout(
    platform: Platform,
) -> None:
    with JobRunner(platform):
        jobs = _queue_bursts(platform)
        sampler = Sampler(platform, jobs)
        thread = threading.Thread(target=sampler.run, daemon=True)
        thread.start()
        try:
            # Run until web's burst is all started: both queues are long until then.
            platform.wait(sampler.web_done, 600, "every web job started")
        finally:
            sampler.stop.set()
            thread.join(timeout=30)
            order = _start_order(platform, jobs)
            (platform.workdir / "samples.json").write_text(  # for a look after a failure
                json.dumps({"samples": [vars(s) for s in sampler.samples], "order": order})
            )
    samples = sampler.samples
    total = [s.live["web"] + s.live["infra"] for s in samples]

    # The pool's limits hold: never more than 100 live runners, and it was saturated.
    assert max(total) <= CAPACITY
    assert max(total) >= CAPACITY - 5

    # Converged: once two generations of runners (200 jobs) have started, while both
    # queues are longer than the teams' shares, the runners split by the weights.
    window = [
        s
        for s in samples
        if s.started["web"] + s.started["infra"] >= 2 * CAPACITY
        and s.queued["web"] > SHARE["web"]
        and s.queued["infra"] > SHARE["infra"]
    ]
    assert len(window) >= 10, f"only {len(window)} samples in the converged window"
    # The provisioner's own count (pods not finishing + being created, what it divides):
    # the median sample is 67/33 within 3 runners of 100 (a sample may fall between a
    # pod finishing and the pass that replaces it).
    counted = [
        s.supply["web"] / max(1.0, s.supply["web"] + s.supply["infra"]) for s in window if s.supply
    ]
    assert 0.64 <= statistics.median(counted) <= 0.70, [s.supply for s in window]
    # (The live pods in the API server lag that count: a new runner is counted from the
    # moment its creation starts, and is a live pod only after its JIT config, Pod and
    # Secret exist. Jobs that started together end together, so for a few seconds each
    # generation one team's pods may all be on their way; what each team actually got
    # is asserted next, from the jobs' starts.)

    # The same by the jobs the emulators gave to runners, which no sampling moment
    # decides: from the 200th start until web's queue is shorter than its share (after
    # that web wants less than 67 and infra rightly gets more), about a third are
    # infra's: 0.25-0.40 (0.29-0.33 measured). A runner slot of either team spends its
    # job plus its creation (JIT config, Pod, Secret, online) per start, and infra's path
    # here (GHES emulator) is the slower, so its starts come a little under its third of
    # the runners; a runner the stand-in failed to bring online also holds its team's
    # share until the reaper replaces it (20 s). An even split would be 0.5, starving 0.
    web_starts = [index for index, team in enumerate(order) if team == "web"]
    assert len(web_starts) == JOBS
    end = web_starts[JOBS - SHARE["web"]]
    converged = order[2 * CAPACITY : end]
    assert 0.25 <= converged.count("infra") / len(converged) <= 0.40, converged.count("infra")

    # The smaller team is served throughout. Its first job starts within the first
    # generation of the pool: even had web's demand reached the provisioner first and
    # taken the whole idle pool, infra is next as those 100 runners turn over. From then
    # on infra never waits while a whole pool's worth of web's jobs (100) start: it holds
    # a third of the pool, so at worst its runners are all mid-job while web's turn over.
    assert "infra" in order
    first_infra = order.index("infra")
    assert first_infra < 2 * CAPACITY, first_infra
    longest = run = 0
    for team in order[first_infra:end]:
        run = run + 1 if team == "web" else 0
        longest = max(longest, run)
    assert longest < CAPACITY, longest
