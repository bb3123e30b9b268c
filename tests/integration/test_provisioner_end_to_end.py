"""The Pod Provisioner end to end: real ``serve``/``listen``/``provision`` processes, the
real API server, scheduler and KWOK nodes per pool, Redis, the GitHub emulators (signed
webhooks, teams, runner groups, JIT configs) and the runner stand-in."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from controller.provision.demand import busy_key
from controller.streams import pending_key
from tests.integration.platform_support import ROLE_ARNS, Platform, job_status, module_platform

WEB = ["self-hosted", "linux"]


@pytest.fixture(scope="module")
def platform(request: pytest.FixtureRequest) -> Iterator[Platform]:
    yield from module_platform(request, "platform", extra_env={"RUNNER_PLATFORM_IDLE_GRACE": "1"})


def _idle_web(platform: Platform) -> list[str]:
    return [p.metadata.name for p in platform.live_pods("web-warm")]


def _a_web_job_started(platform: Platform) -> tuple[int, Any, Any]:
    """With web's two idle runners up, a web job queued and taken: (job, world, runner)."""
    platform.wait(lambda: len(_idle_web(platform)) == 2, 60, "two idle web runners")
    job = platform.queue("web", WEB, "acme-corp/storefront")
    platform.wait(lambda: job_status(platform, "cloud", job) == "in_progress", 60, "job started")
    world = platform.emulators["cloud"].world
    runner = world.jobs[job].runner
    assert runner is not None
    return job, world, runner


def test_min_idle_runners_wait_on_the_teams_first_pool(platform: Platform) -> None:
    # web keeps min_idle: 2 on warm (its first pool) and none on nvme.
    names = platform.wait(lambda: len(_idle_web(platform)) == 2, 60, "two idle web runners")
    assert names
    online = platform.wait(
        lambda: (
            len([r for r in platform.runners("cloud", "acme-corp") if r.status == "online"]) >= 2
        ),
        60,
        "their runners online in GitHub",
    )
    assert online
    assert platform.live_pods("web-nvme") == []


def test_a_queued_job_gets_a_runner_that_takes_it_and_is_cleaned_up(platform: Platform) -> None:
    job, world, runner = _a_web_job_started(platform)
    pod = next(p for p in platform.pods("web-warm") if p.metadata.name == runner.name)
    # The pod is exactly what the builder makes for this team and pool.
    assert pod.metadata.namespace == "runners-web"
    assert pod.spec.node_selector == {"pool": "warm"}
    assert pod.spec.node_name.startswith("warm-node")
    env = {e.name: e for e in pod.spec.containers[0].env}
    assert env["ACTIONS_RUNNER_INPUT_JITCONFIG"].value_from.secret_key_ref.name == runner.name
    assert env["RUNNER_PLATFORM_AWS_ROLE_ARN"].value == ROLE_ARNS["web"]
    assert pod.metadata.annotations["runner-platform.io/runner-id"] == str(runner.id)
    assert [s.metadata.name for s in platform.secrets("runners-web")].count(runner.name) == 1
    # A busy runner is replaced so two stay idle (min_idle), and it is never retired.
    platform.wait(lambda: len(_idle_web(platform)) == 3, 60, "a replacement idle runner")
    world.complete_job(job, "success")
    platform.emulators["cloud"].flush()

    def cleaned() -> bool:
        return (
            all(p.metadata.name != runner.name for p in platform.pods("web-warm"))
            and all(s.metadata.name != runner.name for s in platform.secrets("runners-web"))
            and runner.id not in world.runners
        )

    platform.wait(cleaned, 60, "pod, Secret and registration gone")
    platform.wait(lambda: len(_idle_web(platform)) == 2, 60, "back to two idle runners")


def test_a_busy_runner_the_platform_forgot_is_read_back_from_github(platform: Platform) -> None:
    job, world, runner = _a_web_job_started(platform)
    store, key = platform.redis(), busy_key("web-warm")
    platform.wait(lambda: store.hget(key, runner.name), 60, "the runner busy in Redis")
    platform.wait(lambda: len(_idle_web(platform)) == 3, 60, "a replacement idle runner")
    # Redis loses what the in_progress webhook told it (a restart without persistence):
    # the platform would count the busy runner as idle supply and keep one idle too few.
    store.hdel(key, runner.name)
    # The reaper asks GitHub, which says busy: busy again here, with its job unknown.
    restored = platform.wait(
        lambda: store.hget(key, runner.name), 150, "the busy runner read back from GitHub"
    )
    assert restored == b"unknown"
    assert world.jobs[job].status == "in_progress"  # the job was never cut short
    assert runner.id in world.runners
    assert runner.name in {p.metadata.name for p in platform.live_pods("web-warm")}
    platform.wait(lambda: len(_idle_web(platform)) == 3, 60, "two idle beside the busy one")
    world.complete_job(job, "success")
    platform.emulators["cloud"].flush()
    platform.wait(
        lambda: (
            all(p.metadata.name != runner.name for p in platform.pods("web-warm"))
            and runner.id not in world.runners
            and store.hget(key, runner.name) is None
        ),
        60,
        "the runner cleaned up and busy no more",
    )
    platform.wait(lambda: len(_idle_web(platform)) == 2, 60, "back to two idle runners")


def test_a_non_members_job_never_yields_a_pod(platform: Platform) -> None:
    platform.wait(lambda: len(_idle_web(platform)) == 2, 60, "two idle web runners")
    before = {p.metadata.name for p in platform.pods()}
    job = platform.queue("web", ["self-hosted", "linux", "nvme"], "acme-corp/storefront", "mallory")
    platform.settle("web-nvme")  # three passes of the provisioner
    after = {p.metadata.name for p in platform.pods("web-nvme")}
    assert after - before == set()
    assert platform.redis().zcard(pending_key("web-nvme")) == 0
    # Denied jobs are cancelled on GitHub: left queued, GitHub would hand this one to the
    # next idle runner of the team's group with matching labels (one started for alice).
    world = platform.emulators["cloud"].world
    platform.wait(lambda: world.jobs[job].conclusion == "cancelled", 30, "the run cancelled")


def test_team_ml_runs_only_on_its_pools_with_its_own_identity(platform: Platform) -> None:
    job = platform.queue("ml", ["self-hosted", "linux", "ml-isolated"], "research/models")
    platform.wait(lambda: job_status(platform, "ghes", job) == "in_progress", 60, "ml job started")
    runner = platform.emulators["ghes"].world.jobs[job].runner
    assert runner is not None
    pod = next(p for p in platform.pods("ml-ml-isolated") if p.metadata.name == runner.name)
    env = {e.name: e.value for e in pod.spec.containers[0].env if e.value is not None}
    assert env["RUNNER_PLATFORM_AWS_ROLE_ARN"] == ROLE_ARNS["ml"]
    assert env["RUNNER_PLATFORM_VAULT_ROLE"] == "ml"
    assert pod.spec.node_name.startswith("ml-isolated-node")
    # No web pod ever landed on ml's isolated pool, and none of ml's elsewhere.
    for pod in platform.pods():
        team = pod.metadata.labels["runner-platform.io/team"]
        node = pod.spec.node_name or ""
        if node.startswith("ml-isolated"):
            assert team == "ml"
        if team == "web":
            assert pod.spec.containers[0].env[0] is not None
            values = {e.value for e in pod.spec.containers[0].env if e.value}
            assert ROLE_ARNS["ml"] not in values
    platform.emulators["ghes"].world.complete_job(job, "success")


def _most_live(platform: Platform, scale_set: str, seconds: float) -> int:
    """The most live runner pods ``scale_set`` had at any moment over ``seconds``."""
    most = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        most = max(most, len(platform.live_pods(scale_set)))
        time.sleep(0.2)
    return most


def test_the_same_job_delivered_100_times_and_replayed_after_a_kill_gets_one_runner(
    platform: Platform,
) -> None:
    cloud = platform.emulators["cloud"]
    # Hold the job back from every runner: only its demand and runner count are looked at.
    # Labels only the nvme pool has (web keeps no idle runners there).
    job = cloud.world.queue_job(
        "acme-corp", "acme-corp/storefront", ["self-hosted", "nvme"], "alice", name="dup"
    )
    cloud.flush()
    queued = next(
        d
        for d in reversed(cloud.world.deliveries)
        if d.event == "workflow_job" and d.payload["workflow_job"]["id"] == job.id
    )
    for _ in range(99):  # GitHub's redelivery: the same delivery id each time
        cloud.world.redeliver(queued.id, None)
    cloud.flush()
    platform.wait(
        lambda: job_status(platform, "cloud", job.id) == "in_progress", 60, "the job started"
    )
    assert _most_live(platform, "web-nvme", 4) == 1
    # Kill the provisioner for real, replay both streams from the start, start it again.
    assert platform.kill("provision") != 0
    redis = platform.redis()
    redis.xgroup_setid("rp:ready:web-nvme", "provisioner", id="0")
    redis.xgroup_setid("rp:events:web-nvme", "provisioner", id="0")
    platform.start("provision")
    # The new process takes the killed one's Lease once it expires (15 s), then acts.
    holder = platform.wait(lambda: platform.lease_holder(new=True), 40, "the Lease taken over")
    assert holder.endswith(str(platform.processes["provision"].pid))
    platform.settle("web-nvme", 2)  # two passes after taking over
    assert _most_live(platform, "web-nvme", 6) == 1  # no second runner for the same demand
    cloud.world.complete_job(job.id, "success")
    platform.wait(lambda: platform.live_pods("web-nvme") == [], 60, "the runner cleaned up")
    assert _most_live(platform, "web-nvme", 4) == 0  # completed: no demand left


def test_a_burst_beyond_a_nodes_cap_never_puts_more_than_the_cap_on_a_node(
    platform: Platform,
) -> None:
    spec = platform.spec
    pool = spec.pool("nvme")  # 8 runners per node, one node in this environment
    jobs = [
        platform.queue("web", ["self-hosted", "nvme"], "acme-corp/storefront") for _ in range(12)
    ]
    peak: dict[str, int] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for pod in platform.live_pods("web-nvme"):
                node = pod.spec.node_name
                if node:
                    count = sum(
                        1 for p in platform.live_pods("web-nvme") if p.spec.node_name == node
                    )
                    peak[node] = max(peak.get(node, 0), count)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        platform.wait(
            lambda: len(platform.live_pods("web-nvme")) >= 12, 90, "a runner for each job"
        )

        def bound() -> list[str]:
            return [p.metadata.name for p in platform.live_pods("web-nvme") if p.spec.node_name]

        # The scheduler binds as fast as the machine lets it: wait for the node to fill,
        # then a few more seconds in which nothing more may land on it.
        platform.wait(lambda: len(bound()) >= pool.max_runners_per_node, 90, "the node full")
        time.sleep(3)
    finally:
        stop.set()
        sampler.join(timeout=5)
    assert len(bound()) == pool.max_runners_per_node  # the node is full ...
    assert max(peak.values()) == pool.max_runners_per_node  # ... and was never over
    for job in jobs:  # done or cancelled: demand drops to zero and the runners go
        if job_status(platform, "cloud", job) != "completed":
            platform.emulators["cloud"].world.complete_job(job, "cancelled")
    platform.emulators["cloud"].flush()
    platform.wait(lambda: platform.live_pods("web-nvme") == [], 90, "the burst's runners gone")


def test_sigterm_stops_creating_and_leaves_running_jobs_alone(platform: Platform) -> None:
    job = platform.queue("web", ["self-hosted", "nvme"], "acme-corp/storefront")
    platform.wait(lambda: job_status(platform, "cloud", job) == "in_progress", 60, "job started")
    runner = platform.emulators["cloud"].world.jobs[job].runner
    assert runner is not None
    assert platform.kill("provision", signal.SIGTERM) == 0  # a clean exit
    assert "running jobs are left alone" in platform.log("provision")
    queued = platform.queue("web", ["self-hosted", "nvme"], "acme-corp/storefront")
    time.sleep(4)
    live = [p.metadata.name for p in platform.live_pods("web-nvme")]
    assert live == [runner.name]  # the busy runner runs on; nobody created one for `queued`
    assert job_status(platform, "cloud", job) == "in_progress"
    assert platform.lease_holder() is None  # released on the way out: a peer takes over now
    platform.start("provision")
    platform.wait(
        lambda: job_status(platform, "cloud", queued) == "in_progress", 60, "served again"
    )
    for done in (job, queued):
        platform.emulators["cloud"].world.complete_job(done, "success")
