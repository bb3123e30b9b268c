"""Lost webhooks, with the real serve/listen/provision processes: the GitHub emulator
records a share of its webhook deliveries as failed (503) instead of sending them, and
the reconciler inside ``serve`` recovers every dropped job. Counted in the emulator
(which runner ran which job) and in the audit stream: every job got exactly one runner,
none twice, and every recovery is audited.

Jobs go to web's nvme pool (no min_idle there): ``web-nvme``, 8 runners a node, so a
burst is served a node's worth at a time while the test completes the started jobs.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.audit import AUDIT_STREAM
from localenv.github import GitHubEmulator
from tests.integration.platform_support import Platform, module_platform

NVME = ["self-hosted", "nvme"]
REPO = "acme-corp/storefront"


@pytest.fixture(scope="module")
def platform(request: pytest.FixtureRequest) -> Iterator[Platform]:
    def forget_old_hooks(platform: Platform) -> None:
        # The session's emulators keep the hooks of earlier modules' routers, long gone:
        # each delivery to them fails, and this module counts failed deliveries.
        for emulator in platform.emulators.values():
            with emulator.world.lock:
                emulator.world.hooks.clear()
                emulator.world.hook_orgs.clear()

    yield from module_platform(
        request,
        "reconciler",
        extra_env={
            "RUNNER_PLATFORM_RECONCILE_SECONDS": "2",
            "RUNNER_PLATFORM_RECONCILE_GRACE": "4",
            "RUNNER_PLATFORM_RECONCILE_LOCK": "6",
            # A dropped in_progress leaves demand for a while: the extra runner it brings
            # is retired soon, not after the shipped minute.
            "RUNNER_PLATFORM_IDLE_GRACE": "2",
        },
        configure=forget_old_hooks,
    )


@pytest.fixture(autouse=True)
def no_faults_left(github_cloud: GitHubEmulator) -> Iterator[None]:
    yield
    github_cloud.clear_faults()


# -- helpers --


def _our_hook(platform: Platform) -> int:
    world = platform.emulators["cloud"].world
    return next(h.id for h in world.hooks.values() if f":{platform.port}/" in h.url)


def _burst(platform: Platform, count: int) -> list[int]:
    emulator = platform.emulators["cloud"]
    jobs = [
        emulator.world.queue_job("acme-corp", REPO, NVME, "alice", name=f"burst-{i}").id
        for i in range(count)
    ]
    emulator.flush()
    return jobs


def _serve_all(platform: Platform, jobs: list[int], timeout: float) -> None:
    """Complete each job once a runner took it, until all are done."""
    world = platform.emulators["cloud"].world
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job in jobs:
            if world.jobs[job].status == "in_progress":
                world.complete_job(job, "success")
        if all(world.jobs[job].status == "completed" for job in jobs):
            platform.emulators["cloud"].flush()
            return
        time.sleep(0.2)
    waiting = [j for j in jobs if world.jobs[j].status != "completed"]
    platform.wait(lambda: False, 0, f"jobs {waiting} served")


def _one_runner_each(platform: Platform, jobs: list[int]) -> None:
    world = platform.emulators["cloud"].world
    runners = [world.jobs[job].runner for job in jobs]
    assert all(r is not None for r in runners), [
        j for j, r in zip(jobs, runners, strict=True) if r is None
    ]
    assert len({r.id for r in runners if r is not None}) == len(jobs)  # none shared
    with world.lock:
        events = list(world.events)
    started = Counter(e.job_id for e in events if e.event == "job_started" and e.job_id in jobs)
    assert started == Counter(jobs)  # each job started exactly once
    assert {world.jobs[job].conclusion for job in jobs} == {"success"}


def _audit(platform: Platform, decision: str) -> list[dict[str, Any]]:
    records = [json.loads(f[b"r"]) for _, f in platform.redis().xrange(AUDIT_STREAM)]
    return [r for r in records if r["decision"] == decision]


def _recovered_metric(platform: Platform) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{platform.port}/metrics", timeout=5).text
    return {
        sample.labels["kind"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "runner_platform_reconciler_recovered_total"
        and sample.labels["instance"] == "cloud"
    }


# -- tests --


def test_ten_percent_of_deliveries_dropped_every_job_recovered_once(platform: Platform) -> None:
    cloud = platform.emulators["cloud"]
    hook = _our_hook(platform)
    rule = cloud.drop_webhooks(0.1, seed=10)
    jobs = _burst(platform, 40)
    _serve_all(platform, jobs, 240)
    _one_runner_each(platform, jobs)
    dropped = [d for d in cloud.dropped_deliveries() if d.hook_id == hook]
    queued = {d.payload["workflow_job"]["id"]: d for d in dropped if d.action == "queued"}
    assert rule.dropped >= len(dropped) > 0 and queued, "the seed drops some queued deliveries"
    # Every dropped delivery was redelivered, or (a queued one) its job fed in anew; each
    # recovery audited with what it recovered.
    platform.wait(
        lambda: all(
            d.guid in {r["delivery_id"] for r in _audit(platform, "redelivered")}
            or d.payload["workflow_job"]["id"]
            in {r["job_id"] for r in _audit(platform, "recovered")}
            for d in dropped
        ),
        30,
        "every dropped delivery recovered",
    )
    redelivered = _audit(platform, "redelivered")
    recovered = _audit(platform, "recovered")
    assert {r["delivery_id"] for r in redelivered} <= {d.guid for d in dropped}
    lost = {(d.payload["workflow_job"]["id"], d.action) for d in dropped}
    assert {(r["job_id"], r["action"]) for r in recovered} <= lost  # only what was lost
    assert len(redelivered) == len({r["delivery_id"] for r in redelivered})  # once each
    assert all(r["scale_set"] == "web-nvme" and r["requester"] == "alice" for r in recovered)
    # Each job reached the listener's verdict exactly once, whichever way it came.
    allowed = Counter(r["job_id"] for r in _audit(platform, "allowed") if r["job_id"] in jobs)
    assert allowed == Counter(jobs)
    assert _recovered_metric(platform) == {
        "delivery": float(len(redelivered)),
        "job": float(sum(r["action"] == "queued" for r in recovered)),
        "event": float(sum(r["action"] != "queued" for r in recovered)),
    }


def test_lost_queued_webhooks_that_cannot_be_redelivered_are_found_by_comparison(
    platform: Platform,
) -> None:
    cloud = platform.emulators["cloud"]
    # No idle runner left over: one would take a queued job before anyone looked for it.
    platform.wait_live("web-nvme", 0, 60)
    before = _recovered_metric(platform)
    redelivered_before = len(_audit(platform, "redelivered"))
    # Every queued delivery lost, and GitHub refusing their redelivery (past the 3 days
    # it keeps them): only the comparison of GitHub's queued jobs can find these jobs.
    cloud.drop_webhooks(1.0, seed=3, actions=("queued",))
    refused = cloud.fail("org_redeliver|app_redeliver", 422)
    jobs = _burst(platform, 6)
    _serve_all(platform, jobs, 120)
    _one_runner_each(platform, jobs)
    assert refused.injected >= len(jobs)  # path 1 tried, and could not
    recovered = [r for r in _audit(platform, "recovered") if r["job_id"] in jobs]
    assert sorted(r["job_id"] for r in recovered) == sorted(jobs)  # once each
    assert len(_audit(platform, "redelivered")) == redelivered_before
    after = _recovered_metric(platform)
    assert after.get("job", 0.0) - before.get("job", 0.0) == len(jobs)
    assert after.get("delivery", 0.0) == before.get("delivery", 0.0)
