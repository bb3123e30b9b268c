"""The lost-webhook reconciler against the GitHub emulator, a real Redis and the real
Webhook Router served over HTTP: failed deliveries redelivered once, queued jobs the
platform missed fed in under the webhook's dedupe keys, conditional requests, the API
budget, and one acting replica per instance.

Jobs belong to the web team (cloud instance, org acme-corp): ``[self-hosted, nvme]``
routes to ``web-nvme``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_sync
import redis.asyncio as aioredis

from controller.audit import AUDIT_STREAM, AuditLog
from controller.github_client import AppCredentials, GitHubClient
from controller.ingest.app import WebhookApp
from controller.ingest.reconcile import Reconciler, ReconcileSettings, RedisLock
from controller.ingest.store import IngestStore
from controller.metrics import Metrics
from controller.provision.demand import DemandStore
from controller.streams import decode_entry, pending_key, queue_key
from controller.teams.listener import Listener
from controller.teams.verifier import TeamVerifier
from localenv.asgi_server import ThreadedServer
from localenv.github import GitHubEmulator
from localenv.services import Redis
from tests.integration.router_support import SECRETS, dev_spec

ORG = "acme-corp"
NVME = ["self-hosted", "nvme"]
SCALE_SET = "web-nvme"


class Env:
    """A fresh cloud emulator, the router on a loopback port, a flushed Redis."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.sync = redis_sync.Redis.from_url(redis_url)
        self.sync.flushdb()
        self.spec = dev_spec()
        self.instance = self.spec.instance("cloud")
        self.emulator = GitHubEmulator(kind="cloud").start()
        app = self.instance.apps[0]
        self.key = self.emulator.add_app(app.app_id).encode()
        for org, installation in app.installations.items():
            self.emulator.add_installation(app.app_id, org, installation_id=installation)
        self.router = WebhookApp(self.spec, SECRETS, aioredis.Redis.from_url(redis_url))
        self.server = ThreadedServer(self.router).start()
        self.hook_url = f"{self.server.url}/webhooks/github/cloud"
        self.metrics = Metrics()
        self.hook: Any = None

    def stop(self) -> None:
        self.server.stop()
        self.emulator.stop()

    def org_hook(self) -> None:
        self.hook = self.emulator.world.add_hook(self.hook_url, SECRETS["cloud"].decode(), org=ORG)
        # Org hooks somewhere else — another service's, and one with the router's path on
        # another host (another platform, or an org admin's dead endpoint): never
        # redelivered by us, so they spend none of our budget.
        self.emulator.world.add_hook("http://127.0.0.1:9/elsewhere", "x", org=ORG)
        self.emulator.world.add_hook("http://127.0.0.1:9/webhooks/github/cloud", "x", org=ORG)
        self.emulator.flush()

    def queue(
        self, count: int, repo: str = "acme-corp/storefront", labels: Any = None
    ) -> list[int]:
        jobs = [
            self.emulator.world.queue_job(ORG, repo, labels or NVME, "alice").id
            for _ in range(count)
        ]
        self.emulator.flush()
        return jobs

    def reconciler(self, **tuning: Any) -> Reconciler:
        redis = aioredis.Redis.from_url(self.redis_url)
        app = self.instance.apps[0]
        client = GitHubClient(
            self.instance,
            [AppCredentials(app.app_id, self.key, dict(app.installations))],
            api_url=self.emulator.api_url,
            metrics=self.metrics,
        )
        settings = ReconcileSettings(
            **{"interval": 0.2, "grace": 0.0, "public_url": self.server.url, **tuning}
        )
        return Reconciler(
            self.spec,
            self.instance,
            client,
            redis,
            IngestStore(redis, dedupe_ttl=3600, audit_max=10_000),
            AuditLog(redis),
            settings=settings,
            metrics=self.metrics,
        )

    def dropped(self) -> list[Any]:
        """The deliveries to the router that the emulator dropped."""
        return [d for d in self.emulator.dropped_deliveries() if d.hook_id == self.hook.id]

    def queued_jobs(self) -> list[int]:
        entries = self.sync.xrange(queue_key(SCALE_SET))
        return [int(decode_entry(fields)["job_id"]) for _, fields in entries]

    def audit(self, decision: str) -> list[dict[str, Any]]:
        records = [json.loads(f[b"r"]) for _, f in self.sync.xrange(AUDIT_STREAM)]
        return [r for r in records if r["decision"] == decision]


@pytest.fixture
def env(redis_server: Redis) -> Iterator[Env]:
    environment = Env(redis_server.url)
    yield environment
    environment.stop()


async def _pass(reconciler: Reconciler) -> Any:
    """One pass as the lock holder."""
    assert await reconciler.lock.acquire()
    report = await reconciler.run_once()
    await reconciler.lock.release()
    return report


async def _close(*reconcilers: Reconciler) -> None:
    for reconciler in reconcilers:
        await reconciler.client.aclose()
        await reconciler.redis.aclose()


def _one_pass(reconciler: Reconciler) -> Any:
    async def once() -> Any:
        try:
            return await _pass(reconciler)
        finally:
            await _close(reconciler)

    return asyncio.run(once())


def test_failed_deliveries_are_redelivered_once_and_stored_once(env: Env) -> None:
    env.org_hook()
    env.emulator.drop_webhooks(1.0, events=("workflow_job",))
    jobs = env.queue(3)
    assert env.queued_jobs() == []  # every queued delivery failed (503) on the way
    dropped = env.dropped()
    assert len(dropped) == 3 and {d.status_code for d in dropped} == {503}
    assert {d.summary()["status"] for d in dropped} == {"Service Unavailable"}
    # A long grace keeps the queued-job comparison out: only redelivery recovers here.
    report = _one_pass(env.reconciler(grace=3600))
    assert (report.result, report.redelivered, report.recovered) == ("ok", 3, 0)
    env.emulator.flush()
    assert sorted(env.queued_jobs()) == jobs
    redeliveries = [
        d for d in env.emulator.world.deliveries if d.redelivery and d.hook_id == env.hook.id
    ]
    assert sorted(d.guid for d in redeliveries) == sorted(d.guid for d in dropped)
    assert all(d.status_code == 202 for d in redeliveries)  # the router took them
    redelivered = env.audit("redelivered")
    assert sorted(r["delivery_id"] for r in redelivered) == sorted(d.guid for d in dropped)
    # The next pass sees them delivered: nothing again, nothing doubled.
    again = _one_pass(env.reconciler(grace=3600))
    assert again.redelivered == 0
    env.emulator.flush()
    assert sorted(env.queued_jobs()) == jobs
    assert env.metrics.reconciler_recovered.labels("cloud", "delivery")._value.get() == 3


def test_a_refused_redelivery_leaves_the_job_to_the_queued_comparison(env: Env) -> None:
    env.org_hook()
    env.emulator.drop_webhooks(1.0, events=("workflow_job",))
    # GitHub keeps failed deliveries 3 days (GHES 7): past that, a redelivery is refused.
    refused = env.emulator.fail("org_redeliver", 422)
    jobs = env.queue(2)
    glob = env.queue(1, repo="acme-corp/web-shop")  # team repository by glob (web-*)
    foreign = env.queue(1, repo="acme-corp/not-web")  # no team's repository
    unroutable = env.queue(1, labels=["self-hosted", "windows"])  # no scale set's labels
    report = _one_pass(env.reconciler())
    assert report.result == "ok"
    assert refused.injected == 5 and report.redelivered == 0
    assert report.recovered == 3
    assert sorted(env.queued_jobs()) == sorted(jobs + glob)
    recovered = env.audit("recovered")
    assert sorted(r["job_id"] for r in recovered) == sorted(jobs + glob)
    assert {(r["scale_set"], r["team"], r["requester"]) for r in recovered} == {
        (SCALE_SET, "web", "alice")
    }
    entry = decode_entry(env.sync.xrange(queue_key(SCALE_SET))[0][1])
    assert (entry["action"], entry["sender"], entry["org"]) == ("queued", "alice", ORG)
    assert entry["created_at"] and json.loads(entry["labels"]) == NVME
    assert foreign[0] not in env.queued_jobs() and unroutable[0] not in env.queued_jobs()
    # Recovered twice, then the webhook itself arriving late: still one entry each.
    assert _one_pass(env.reconciler()).recovered == 0
    env.emulator.clear_faults()
    for guid_job in jobs:
        payload = next(
            d
            for d in env.emulator.world.deliveries
            if d.action == "queued"
            and d.hook_id == env.hook.id
            and d.payload["workflow_job"]["id"] == guid_job
        )
        env.emulator.world.redeliver(payload.id, payload.hook_id)
    env.emulator.flush()
    assert sorted(env.queued_jobs()) == sorted(jobs + glob)
    assert env.metrics.reconciler_recovered.labels("cloud", "job")._value.get() == 3


def test_a_job_recovered_and_redelivered_in_one_pass_is_one_entry(env: Env) -> None:
    env.org_hook()
    env.emulator.drop_webhooks(1.0, events=("workflow_job",))
    jobs = env.queue(4)
    report = _one_pass(env.reconciler())  # redeliveries in flight while jobs are compared
    env.emulator.flush()
    assert report.redelivered == 4
    assert sorted(env.queued_jobs()) == jobs
    # A job recovered before its redelivery arrived: the redelivery was a duplicate (one
    # that arrived first made the job known, and the comparison left it alone).
    assert len(env.audit("duplicate")) == report.recovered
    assert len(env.audit("accepted")) + len(env.audit("recovered")) == 4


def test_the_app_hook_is_read_with_the_app_jwt(env: Env) -> None:
    env.emulator.world.add_hook(env.hook_url, SECRETS["cloud"].decode())  # the App's hook
    env.emulator.flush()
    env.emulator.drop_webhooks(1.0, events=("workflow_job",))
    jobs = env.queue(2)
    report = _one_pass(env.reconciler(grace=3600))
    env.emulator.flush()
    assert report.redelivered == 2 and sorted(env.queued_jobs()) == jobs
    paths = [path for method, path in env.emulator.requests if method == "POST"]
    assert sum("/app/hook/deliveries/" in p and p.endswith("/attempts") for p in paths) == 2


def test_the_second_pass_revalidates_with_etags_and_spends_nothing(env: Env) -> None:
    env.org_hook()
    env.emulator.enable_rate_limits(primary=5000, secondary_points=None)
    env.queue(2)
    reconciler = env.reconciler()

    async def two_passes() -> tuple[Any, Any, int, int]:
        first = await _pass(reconciler)
        used = _used(env)
        second = await _pass(reconciler)
        await _close(reconciler)
        return first, second, used, _used(env)

    first, second, used_before, used_after = asyncio.run(two_passes())
    assert first.spent > 0 and first.not_modified == 0
    assert second.spent == 0 and second.not_modified >= 3  # hooks, deliveries, runs, jobs
    assert used_after == used_before  # a 304 costs no rate limit on GitHub (and here)
    calls = env.metrics.github_calls
    assert calls.labels("cloud", "workflow_runs", "304")._value.get() >= 2
    assert calls.labels("cloud", "org_hook_deliveries", "304")._value.get() == 1


def _used(env: Env) -> int:
    return sum(
        len(times) for token, times in env.emulator._used.items() if token.startswith("ghs_")
    )


def test_a_pass_stops_at_its_share_of_the_budget(env: Env) -> None:
    env.org_hook()
    env.emulator.drop_webhooks(1.0, events=("workflow_job",))
    env.queue(2)
    small = _one_pass(env.reconciler(max_calls=1))
    assert (small.result, small.spent, small.redelivered, small.recovered) == ("budget", 1, 0, 0)
    # The hour's share (10 % of 5,000) is counted in Redis, for whichever replica acts.
    reconciler = env.reconciler()
    env.sync.set(reconciler._hour_key(), 500)
    spent = _one_pass(reconciler)
    assert (spent.result, spent.spent) == ("budget", 0)
    assert int(env.sync.get(reconciler._hour_key()) or 0) == 500


def test_only_the_lock_holder_acts(env: Env) -> None:
    env.org_hook()

    async def two_replicas() -> tuple[float, float, bool]:
        one, two = env.reconciler(lock_seconds=3), env.reconciler(lock_seconds=3)
        one.metrics, two.metrics = Metrics(), Metrics()
        tasks = [asyncio.create_task(r.run()) for r in (one, two)]
        await asyncio.sleep(1.5)
        counts = [
            sum(
                r.metrics.reconciler_passes.labels("cloud", result)._value.get()
                for result in ("ok", "budget", "lock-lost", "error", "unavailable")
            )
            for r in (one, two)
        ]
        holder = one if one.lock.held else two
        holder_task = tasks[0] if holder is one else tasks[1]
        holder_task.cancel()  # a replica that stops hands the lock over at once
        await asyncio.gather(holder_task, return_exceptions=True)
        other = two if holder is one else one
        for _ in range(40):
            if other.lock.held:
                break
            await asyncio.sleep(0.1)
        taken_over = other.lock.held
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _close(one, two)
        return counts[0], counts[1], taken_over

    first, second, taken_over = asyncio.run(two_replicas())
    assert sorted([first > 0, second > 0]) == [False, True], (first, second)
    assert taken_over


def test_the_lock_is_only_renewed_and_released_by_its_holder(env: Env) -> None:
    async def scenario() -> list[bool]:
        redis = aioredis.Redis.from_url(env.redis_url)
        one = RedisLock(redis, "rp:reconcile:lock:test", 5)
        two = RedisLock(redis, "rp:reconcile:lock:test", 5)
        seen = [await one.acquire(), await two.acquire(), await one.acquire()]
        await two.release()  # not the holder: a no-op
        seen.append(await two.acquire())
        await redis.delete("rp:reconcile:lock:test")  # lost (expired) under the holder
        seen += [await two.acquire(), await one.acquire(), two.held]
        await redis.aclose()
        return seen

    assert asyncio.run(scenario()) == [True, False, True, False, True, False, True]


def test_a_small_budget_covers_every_repository_over_several_passes(env: Env) -> None:
    env.org_hook()
    env.emulator.drop_webhooks(1.0, events=("workflow_job",), actions=("queued",))
    env.emulator.fail("org_redeliver", 422)
    jobs = [
        *env.queue(1),
        *env.queue(1, repo="acme-corp/web-shop"),
        *env.queue(1, repo="acme-corp/web-app"),
    ]
    reconciler = env.reconciler(max_calls=4)

    async def passes() -> list[Any]:
        reports = []
        for _ in range(12):
            reports.append(await _pass(reconciler))
            if sorted(env.queued_jobs()) == sorted(jobs):
                break
        await _close(reconciler)
        return reports

    reports = asyncio.run(passes())
    assert sorted(env.queued_jobs()) == sorted(jobs)
    assert len(reports) > 1 and all(r.spent <= 4 for r in reports)
    assert {r.result for r in reports[:-1]} == {"budget"}
    assert sum(r.recovered for r in reports) == 3


def test_a_replica_that_lost_the_lock_acts_on_nothing(env: Env) -> None:
    env.org_hook()
    env.emulator.drop_webhooks(1.0, events=("workflow_job",))
    env.queue(2)
    reconciler = env.reconciler()

    async def unlocked() -> Any:
        try:
            return await reconciler.run_once()  # never acquired (or not renewed in time)
        finally:
            await _close(reconciler)

    report = asyncio.run(unlocked())
    env.emulator.flush()
    assert (report.result, report.redelivered, report.recovered) == ("lock-lost", 0, 0)
    assert env.queued_jobs() == []
    assert not [d for d in env.emulator.world.deliveries if d.redelivery]


def test_a_lost_start_of_a_known_job_is_fed_in(env: Env) -> None:
    env.org_hook()
    team = next(t for t in env.spec.teams if t.name == "web")
    world = env.emulator.world
    group = world.add_runner_group(ORG, team.runner_group)
    env.emulator.drop_webhooks(1.0, events=("workflow_job",), actions=("in_progress",))
    env.emulator.fail("org_redeliver", 422)
    jobs = env.queue(1)  # its queued webhook arrives: the platform has it
    jit = world.generate_jit(
        ORG, {"name": "web-nvme-x", "runner_group_id": group.id, "labels": NVME}
    )
    world.start_runner(jit["encoded_jit_config"])  # takes the job; in_progress is lost
    env.emulator.flush()
    assert world.jobs[jobs[0]].status == "in_progress"
    assert [e["action"] for e in _entries(env)] == ["queued"]
    report = _one_pass(env.reconciler())
    assert report.recovered == 1
    entries = _entries(env)
    assert [e["action"] for e in entries] == ["queued", "in_progress"]
    assert entries[1]["runner_name"] == "web-nvme-x"
    recovered = env.audit("recovered")
    assert [(r["job_id"], r["action"]) for r in recovered] == [(jobs[0], "in_progress")]
    assert _one_pass(env.reconciler()).recovered == 0  # stored once
    assert env.metrics.reconciler_recovered.labels("cloud", "event")._value.get() == 1


def _entries(env: Env) -> list[dict[str, str]]:
    return [decode_entry(fields) for _, fields in env.sync.xrange(queue_key(SCALE_SET))]


def test_deliveries_a_pass_listed_and_could_not_redeliver_are_redelivered_next(env: Env) -> None:
    env.org_hook()
    env.emulator.drop_webhooks(1.0, events=("workflow_job",))
    jobs = env.queue(2)
    reconciler = env.reconciler(grace=3600)  # redelivery alone recovers them here
    deliveries = f"/orgs/{ORG}/hooks/{env.hook.id}/deliveries"

    async def passes() -> tuple[Any, Any]:
        # Three calls left of the hour's 500: the App hook (none: 404), the org hooks and
        # the first page of deliveries. The pass runs out before redelivering anything.
        env.sync.set(reconciler._hour_key(), 497)
        first = await _pass(reconciler)
        env.sync.delete(reconciler._hour_key())
        second = await _pass(reconciler)  # that page unchanged: a 304
        await _close(reconciler)
        return first, second

    first, second = asyncio.run(passes())
    assert (first.result, first.redelivered) == ("budget", 0)
    listed = [p for method, p in env.emulator.requests if method == "GET" and deliveries in p]
    assert len(listed) == 2  # read by both passes
    assert env.metrics.github_calls.labels("cloud", "org_hook_deliveries", "304")._value.get() == 1
    assert (second.result, second.redelivered) == ("ok", 2)
    env.emulator.flush()
    assert sorted(env.queued_jobs()) == jobs


def test_a_repository_that_fails_does_not_keep_the_others_from_being_compared(env: Env) -> None:
    # No webhook at all: every job is found by the comparison. storefront (compared first)
    # answers 403 once: the App may not read it (a permission missing, for a while).
    env.emulator.fail("runs", 403, times=1)
    first_repo = env.queue(1)
    later_repo = env.queue(1, repo="acme-corp/web-shop")
    reconciler = env.reconciler()

    async def passes() -> tuple[Any, list[int], Any]:
        assert await reconciler.lock.acquire()
        first = await reconciler._pass_logged()  # as the loop runs it: counted by result
        queued = env.queued_jobs()
        second = await _pass(reconciler)
        await _close(reconciler)
        return first, queued, second

    first, queued, second = asyncio.run(passes())
    assert env.metrics.reconciler_passes.labels("cloud", "partial")._value.get() == 1
    assert first.result == "partial" and list(first.failed) == ["acme-corp/storefront"]
    assert "GitHubAuthError" in first.failed["acme-corp/storefront"]
    assert first.recovered == 1 and queued == later_repo
    assert (second.result, second.recovered) == ("ok", 1)
    assert sorted(env.queued_jobs()) == sorted(first_repo + later_repo)


def test_a_repository_with_malformed_runs_is_skipped_on_every_pass(env: Env) -> None:
    # storefront's only run has an id that is no number: every pass skips that repository,
    # and every pass still compares the ones after it (web-*, listed by glob).
    env.emulator.world.queue_job(ORG, "acme-corp/storefront", NVME, "alice", run_id="x")
    later = [*env.queue(1, repo="acme-corp/web-app"), *env.queue(1, repo="acme-corp/web-shop")]
    later += env.queue(1, repo="acme-corp/web-app")
    reconciler = env.reconciler(max_calls=6)  # not all in one pass: the offset moves on

    async def passes() -> list[Any]:
        reports = [await _pass(reconciler) for _ in range(4)]
        await _close(reconciler)
        return reports

    reports = asyncio.run(passes())
    assert sorted(env.queued_jobs()) == sorted(later)
    assert sum(r.recovered for r in reports) == 3
    assert any("acme-corp/storefront" in r.failed for r in reports)
    assert all(set(r.failed) <= {"acme-corp/storefront"} for r in reports)


def test_repositories_answering_5xx_are_skipped_until_three_in_a_row(env: Env) -> None:
    repos = ["acme-corp/storefront", "acme-corp/web-app", "acme-corp/web-shop"]
    first_jobs = [job for repo in repos for job in env.queue(1, repo=repo)]
    reconciler = env.reconciler()

    async def passes() -> list[tuple[Any, list[int]]]:
        seen = []
        env.emulator.fail("runs", 503, times=2)  # storefront, then web-app: once each
        seen.append((await _pass(reconciler), env.queued_jobs()))
        env.emulator.fail("runs", 503, times=3)  # three in a row: GitHub is down
        more = [job for repo in repos for job in env.queue(1, repo=repo)]
        seen.append((await _pass(reconciler), env.queued_jobs()))
        seen.append((await _pass(reconciler), more))
        await _close(reconciler)
        return seen

    (first, after_first), (down, after_down), (last, more) = asyncio.run(passes())
    assert (first.result, first.recovered) == ("partial", 1)
    assert set(first.failed) == set(repos[:2]) and after_first == first_jobs[2:]
    assert (down.result, down.recovered) == ("unavailable", 0)
    assert set(down.failed) == set(repos)
    assert sorted(after_down) == sorted(first_jobs[2:])
    assert (last.result, last.recovered) == ("ok", 5)  # the two skipped first, and the new
    assert sorted(env.queued_jobs()) == sorted(first_jobs + more)


def test_the_etag_cache_stays_bounded(env: Env) -> None:
    reconciler = env.reconciler()
    reconciler.cache_entries = 8  # the shipped bound is a few thousand
    jobs: list[int] = []

    async def passes() -> list[int]:
        sizes = []
        for _ in range(6):
            jobs.extend(env.queue(2))  # two new runs, each a jobs list to cache
            await _pass(reconciler)
            sizes.append(len(reconciler._cache))
        await _close(reconciler)
        return sizes

    sizes = asyncio.run(passes())
    assert max(sizes) == 8, sizes
    assert sorted(env.queued_jobs()) == sorted(jobs)  # every pass still did its work


def test_older_pages_of_runs_and_of_a_runs_jobs_are_compared(env: Env) -> None:
    env.org_hook()
    world = env.emulator.world
    env.emulator.fail("org_redeliver", 422)
    env.emulator.drop_webhooks(1.0, events=("workflow_job",))
    oldest = env.queue(1)  # its run ends up on the second page of queued runs
    env.emulator.drop_rule = None
    delivered = env.queue(100)
    big = world.queue_job(ORG, "acme-corp/storefront", NVME, "alice")
    delivered += [big.id]
    delivered += [
        world.queue_job(ORG, "acme-corp/storefront", NVME, "alice", run_id=big.run_id).id
        for _ in range(99)
    ]
    env.emulator.flush()
    env.emulator.drop_webhooks(1.0, events=("workflow_job",))
    # The 101st job of one run: on the second page of that run's jobs.
    last = world.queue_job(ORG, "acme-corp/storefront", NVME, "alice", run_id=big.run_id)
    env.emulator.flush()
    assert sorted(env.queued_jobs()) == sorted(delivered)
    report = _one_pass(env.reconciler())
    assert (report.result, report.recovered) == ("ok", 2)
    assert sorted(env.queued_jobs()) == sorted([*delivered, *oldest, last.id])
    recovered = env.audit("recovered")
    assert sorted(r["job_id"] for r in recovered) == sorted([*oldest, last.id])
    pages = [path for _, path in env.emulator.requests if "page=2" in path]
    assert any("/actions/runs?status=queued" in p for p in pages)
    assert any(f"/actions/runs/{big.run_id}/jobs" in p for p in pages)


def test_pending_demand_of_a_job_github_finished_is_dropped(env: Env) -> None:
    env.org_hook()
    world = env.emulator.world
    world.add_team(ORG, "web-engineers")
    world.set_membership(ORG, "web-engineers", "alice")
    env.emulator.fail("org_redeliver", 422)  # its completed webhook cannot come again
    jobs = env.queue(1)  # its queued webhook arrives: the platform has it
    scale_set = next(s for s in env.spec.scale_sets() if s.name == SCALE_SET)
    reconciler = env.reconciler()

    async def scenario() -> tuple[list[Any], list[Any], Any]:
        redis = aioredis.Redis.from_url(env.redis_url)
        verifier = TeamVerifier(env.spec, redis, {"cloud": reconciler.client})
        listener = Listener(scale_set, redis, verifier, AuditLog(redis), consumer="test")
        demand = DemandStore(redis, [SCALE_SET], "test")
        await listener.ensure_group()
        await demand.ensure_groups()

        async def downstream() -> None:  # the listener, then the Pod Provisioner's demand
            await listener.process_once(block_ms=None)
            await demand.consume(block_ms=10)

        await downstream()
        before = await redis.zrange(pending_key(SCALE_SET), 0, -1)
        env.emulator.drop_webhooks(1.0, events=("workflow_job",))
        world.cancel_run(world.jobs[jobs[0]].run_id)  # completed while queued; lost
        env.emulator.flush()
        report = await _pass(reconciler)
        await downstream()
        after = await redis.zrange(pending_key(SCALE_SET), 0, -1)
        again = await _pass(reconciler)
        await redis.aclose()
        await _close(reconciler)
        return before, after, (report, again)

    before, after, (report, again) = asyncio.run(scenario())
    assert before == [str(jobs[0]).encode()]
    assert report.recovered == 1 and after == []
    assert again.recovered == 0  # fed once
    recovered = env.audit("recovered")
    assert [(r["job_id"], r["action"], r["repo"]) for r in recovered] == [
        (jobs[0], "completed", "acme-corp/storefront")
    ]
    assert recovered[0]["requester"] == "alice"
    assert env.metrics.reconciler_recovered.labels("cloud", "event")._value.get() == 1


def test_stale_pending_jobs_are_looked_up_a_bounded_few_a_pass(env: Env) -> None:
    env.org_hook()
    world = env.emulator.world
    env.emulator.fail("org_redeliver", 422)
    jobs = env.queue(25)  # their queued webhooks arrive: the platform has them
    # As the Pod Provisioner counts them (job id -> queued time), oldest first.
    env.sync.zadd(pending_key(SCALE_SET), {str(job): 1000.0 + i for i, job in enumerate(jobs)})
    env.emulator.drop_webhooks(1.0, events=("workflow_job",))
    for job in jobs:
        world.cancel_run(world.jobs[job].run_id)  # each completed while queued; all lost
    env.emulator.flush()
    reconciler = env.reconciler()

    async def passes() -> list[Any]:
        reports = [await _pass(reconciler) for _ in range(2)]
        await _close(reconciler)
        return reports

    first, second = asyncio.run(passes())
    looked_up = [p for _, p in env.emulator.requests if "/actions/jobs/" in p]
    assert (first.recovered, second.recovered) == (20, 5)
    assert len(looked_up) == 25  # each once: the second pass went on where the first stopped
    fed = [(r["job_id"], r["action"]) for r in env.audit("recovered")]
    assert fed == [(job, "completed") for job in jobs]  # oldest first
