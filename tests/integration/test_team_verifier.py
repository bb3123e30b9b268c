"""Team isolation against the GitHub emulator and a real Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_sync
import redis.asyncio as aioredis

from controller.audit import AUDIT_STREAM, AuditLog
from controller.errors import GitHubAuthError, RateLimited
from controller.github_client import AppCredentials, GitHubClient, TokenBucket
from controller.metrics import Metrics
from controller.model import PlatformSpec, ScaleSet
from controller.streams import decode_entry, queue_key, ready_key
from controller.teams.listener import GROUP, Listener
from controller.teams.verifier import TeamVerifier
from localenv.github import GitHubEmulator
from localenv.services import Redis
from tests.integration.router_support import dev_spec

ORG = "research"


class World:
    """The ml team (ghes instance, org research, teams ml-platform and ml-research)."""

    def __init__(self, emulator: GitHubEmulator, redis_url: str) -> None:
        self.emulator = emulator
        self.spec: PlatformSpec = dev_spec()
        self.scale_set: ScaleSet = next(s for s in self.spec.scale_sets() if s.name == "ml-gpu")
        key = emulator.add_app(12)
        emulator.add_installation(12, ORG, installation_id=4)
        world = emulator.world
        world.add_team(ORG, "ml-platform")
        world.add_team(ORG, "ml-research")
        world.add_team(ORG, "ml-interns", parent="ml-research")
        world.set_membership(ORG, "ml-platform", "alice")
        world.set_membership(ORG, "ml-research", "pat", state="pending")
        world.set_membership(ORG, "ml-interns", "ivy")
        self.redis_url = redis_url
        self.key = key.encode()
        self.metrics = Metrics()

    def client(self, api_url: str | None = None) -> GitHubClient:
        app = AppCredentials(12, self.key, {ORG: 4})
        return GitHubClient(
            self.spec.instance("ghes"),
            [app],
            clock=self.emulator.now,
            api_url=api_url or self.emulator.api_url,
            metrics=self.metrics,
        )

    def verifier(self, client: GitHubClient | None = None) -> TeamVerifier:
        redis = aioredis.Redis.from_url(self.redis_url)
        return TeamVerifier(
            self.spec,
            redis,
            {"ghes": client or self.client()},
            clock=self.emulator.now,
            metrics=self.metrics,
        )

    async def close(self, verifier: TeamVerifier) -> None:
        for client in verifier.clients.values():
            await client.aclose()
        await verifier.redis.aclose()

    def membership_calls(self) -> int:
        return sum(1 for _, path in self.emulator.requests if "/memberships/" in path)


@pytest.fixture
def world(redis_server: Redis) -> Iterator[World]:
    redis_sync.Redis.from_url(redis_server.url).flushdb()
    emulator = GitHubEmulator(kind="ghes", host="github.acme.internal").start()
    yield World(emulator, redis_server.url)
    emulator.stop()


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


@pytest.mark.parametrize(
    ("user", "decision"),
    [("alice", "allowed"), ("ivy", "allowed"), ("pat", "denied"), ("mallory", "denied")],
    ids=["active member", "child-team member", "pending member", "non-member"],
)
def test_membership_decides(world: World, user: str, decision: str) -> None:
    async def check() -> str:
        verifier = world.verifier()
        verdict = await verifier.verify(world.scale_set, user)
        await world.close(verifier)
        return verdict.decision

    assert run(check()) == decision


def test_answers_are_cached_then_revalidated_with_a_free_304(world: World) -> None:
    world.emulator.enable_rate_limits(primary=1000, secondary_points=None)

    async def scenario() -> list[Any]:
        verifier = world.verifier()
        first = await verifier.verify(world.scale_set, "alice")
        calls_after_first = world.membership_calls()
        cached = await verifier.verify(world.scale_set, "alice")
        calls_after_cached = world.membership_calls()
        world.emulator.advance(301)  # past the 5-minute positive TTL
        budget = await verifier.clients["ghes"].request(
            "GET", "/rate_limit", org=ORG, endpoint="rate_limit"
        )
        revalidated = await verifier.verify(world.scale_set, "alice")
        budget_after = await verifier.clients["ghes"].request(
            "GET", "/rate_limit", org=ORG, endpoint="rate_limit"
        )
        await world.close(verifier)
        return [
            first.decision,
            cached.reason,
            calls_after_first,
            calls_after_cached,
            revalidated.decision,
            budget.body["rate"]["used"],
            budget_after.body["rate"]["used"],
        ]

    first, cached_reason, n1, n2, again, used_before, used_after = run(scenario())
    assert first == "allowed" and "(cached)" in cached_reason
    assert n1 == 1 and n2 == 1  # the cached answer made no call
    assert again == "allowed"
    assert world.membership_calls() == 2  # one conditional request after expiry ...
    assert used_after == used_before  # ... whose 304 cost nothing
    samples = {
        s.labels["result"]: s.value
        for m in world.metrics.registry.collect()
        if m.name == "runner_platform_membership_cache"
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert samples == {"miss": 1.0, "hit": 1.0, "revalidated": 1.0}


def test_negative_answers_expire_sooner(world: World) -> None:
    async def scenario() -> list[str]:
        verifier = world.verifier()
        before = await verifier.verify(world.scale_set, "newbie")
        world.emulator.world.set_membership(ORG, "ml-platform", "newbie")
        still = await verifier.verify(world.scale_set, "newbie")  # cached "no"
        world.emulator.advance(61)
        after = await verifier.verify(world.scale_set, "newbie")
        await world.close(verifier)
        return [before.decision, still.decision, after.decision]

    assert run(scenario()) == ["denied", "denied", "allowed"]


def test_concurrent_misses_make_one_call(world: World) -> None:
    async def scenario() -> set[str]:
        verifier = world.verifier()
        verdicts = await asyncio.gather(
            *(verifier.verify(world.scale_set, "alice") for _ in range(25))
        )
        await world.close(verifier)
        return {v.decision for v in verdicts}

    assert run(scenario()) == {"allowed"}
    assert world.membership_calls() == 1


def test_github_outage_fails_closed_but_valid_cache_still_answers(world: World) -> None:
    async def scenario() -> list[str]:
        verifier = world.verifier()
        warm = await verifier.verify(world.scale_set, "alice")
        await verifier.clients["ghes"].aclose()
        verifier.clients["ghes"] = world.client(api_url="http://127.0.0.1:9/api/v3")
        cached = await verifier.verify(world.scale_set, "alice")
        unknown = await verifier.verify(world.scale_set, "ivy")
        await world.close(verifier)
        return [warm.decision, cached.decision, unknown.decision, unknown.reason]

    warm, cached, unknown, reason = run(scenario())
    assert (warm, cached, unknown) == ("allowed", "allowed", "held")
    assert "cannot check" in reason


def test_installation_tokens_are_refreshed_before_expiry_and_after_401(world: World) -> None:
    async def scenario() -> int:
        client = world.client()
        await client.team_membership(ORG, "ml-platform", "alice")
        world.emulator.advance(3600 - 200)  # inside the 5-minute refresh margin
        await client.team_membership(ORG, "ml-platform", "alice")
        world.emulator.tokens.clear()  # revoked server-side: a 401, then a new token
        reply = await client.team_membership(ORG, "ml-platform", "alice")
        await client.aclose()
        return reply.status

    assert run(scenario()) == 200
    token_calls = [p for _, p in world.emulator.requests if p.endswith("/access_tokens")]
    assert len(token_calls) == 3


def test_limits_raise_rate_limited_with_the_wait(world: World) -> None:
    async def scenario() -> tuple[float, float]:
        client = world.client()
        await client.team_membership(ORG, "ml-platform", "alice")  # token in hand
        world.emulator.enable_rate_limits(primary=None, secondary_points=1)
        with pytest.raises(RateLimited) as secondary:
            await client.team_membership(ORG, "ml-platform", "alice")
            await client.team_membership(ORG, "ml-platform", "alice")
        world.emulator.enable_rate_limits(primary=2, secondary_points=None)
        with pytest.raises(RateLimited) as primary:
            for _ in range(3):
                await client.team_membership(ORG, "ml-platform", "alice")
        await client.aclose()
        return secondary.value.retry_after, primary.value.retry_after

    secondary_wait, primary_wait = run(scenario())
    assert secondary_wait >= 1 and primary_wait >= 60


def test_an_org_without_an_installation_is_named(world: World) -> None:
    async def scenario() -> None:
        client = world.client()
        try:
            await client.team_membership("platform", "sre", "alice")
        finally:
            await client.aclose()

    with pytest.raises(GitHubAuthError, match="no App of instance ghes is installed in platform"):
        run(scenario())


def test_the_token_bucket_holds_mutations_to_900_points_a_minute() -> None:
    now = [0.0]
    bucket = TokenBucket(clock=lambda: now[0])
    for _ in range(180):  # 180 x 5 = 900 points: the whole minute's budget
        assert bucket.wait_time(5) == 0
        bucket.tokens -= 5
    assert bucket.wait_time(5) == pytest.approx(1 / 3)  # 5 points refill in 1/3 s
    now[0] += 60
    assert bucket.wait_time(900) == 0


def test_several_apps_share_an_org_by_remaining_budget(world: World) -> None:
    spec = world.spec
    first = AppCredentials(12, world.key, {ORG: 4}, remaining=10)
    second_key = world.emulator.add_app(13).encode()
    world.emulator.add_installation(13, ORG, installation_id=5)
    second = AppCredentials(13, second_key, {ORG: 5}, remaining=4000)
    client = GitHubClient(
        spec.instance("ghes"),
        [first, second],
        clock=world.emulator.now,
        api_url=world.emulator.api_url,
    )

    async def scenario() -> None:
        await client.team_membership(ORG, "ml-platform", "alice")
        await client.aclose()

    run(scenario())
    assert 5 in second.tokens and 4 not in first.tokens


# -- the listener: from the queue to a verified job --


def _enqueue(
    client: redis_sync.Redis, scale_set: str, sender: str, job_id: int, run_id: int = 1
) -> None:
    client.xadd(
        queue_key(scale_set),
        {
            "j": json.dumps(
                {
                    "delivery": f"d-{job_id}",
                    "instance": "ghes",
                    "action": "queued",
                    "job_id": str(job_id),
                    "run_id": str(run_id),
                    "org": ORG,
                    "repo": "research/models",
                    "sender": sender,
                    "labels": json.dumps(["self-hosted", "gpu"]),
                    "runner_name": "",
                    "runner_group": "",
                    "conclusion": "",
                    "received_at": "0",
                }
            )
        },
    )


def test_listener_passes_allowed_jobs_on_and_audits_every_decision(world: World) -> None:
    sync = redis_sync.Redis.from_url(world.redis_url)
    _enqueue(sync, "ml-gpu", "alice", 1)
    _enqueue(sync, "ml-gpu", "mallory", 2, run_id=222)
    job = world.emulator.world.queue_job(ORG, "research/models", ["gpu"], "mallory", run_id=222)

    async def scenario() -> int:
        redis = aioredis.Redis.from_url(world.redis_url)
        client = world.client()
        verifier = TeamVerifier(world.spec, redis, {"ghes": client}, clock=world.emulator.now)
        listener = Listener(
            world.scale_set,
            redis,
            verifier,
            AuditLog(redis),
            consumer="t",
            client=client,
            cancel_denied=True,
        )
        await listener.ensure_group()
        handled = await listener.process_once()
        await client.aclose()
        await redis.aclose()
        return handled

    assert run(scenario()) == 2
    ready = sync.xrange(ready_key("ml-gpu"))
    assert [decode_entry(fields)["sender"] for _, fields in ready] == ["alice"]
    decisions = [json.loads(f[b"r"])["decision"] for _, f in sync.xrange(AUDIT_STREAM)]
    assert decisions == ["allowed", "denied"]
    assert job.conclusion == "cancelled"  # cancel_denied: the run was cancelled via the API
    assert sync.xpending(queue_key("ml-gpu"), GROUP)["pending"] == 0


def test_listener_holds_jobs_while_github_is_down_and_retries(world: World) -> None:
    sync = redis_sync.Redis.from_url(world.redis_url)
    _enqueue(sync, "ml-gpu", "ivy", 3)

    async def scenario() -> tuple[int, int]:
        redis = aioredis.Redis.from_url(world.redis_url)
        down = world.client(api_url="http://127.0.0.1:9/api/v3")
        verifier = TeamVerifier(world.spec, redis, {"ghes": down}, clock=world.emulator.now)
        listener = Listener(
            world.scale_set, redis, verifier, AuditLog(redis), consumer="t", retry_after_ms=0
        )
        await listener.ensure_group()
        await listener.process_once()
        pending = sync.xpending(queue_key("ml-gpu"), GROUP)["pending"]
        await down.aclose()
        verifier.clients["ghes"] = world.client()  # GitHub is back
        await listener.process_once()
        await world.close(verifier)
        return pending, len(sync.xrange(ready_key("ml-gpu")))

    assert run(scenario()) == (1, 1)
    decisions = [json.loads(f[b"r"])["decision"] for _, f in sync.xrange(AUDIT_STREAM)]
    assert decisions == ["held", "allowed"]


def test_a_denied_job_whose_cancel_fails_is_not_acknowledged_until_cancelled(
    world: World,
) -> None:
    # Left queued, a denied job would be handed to the next idle runner of the team's group.
    sync = redis_sync.Redis.from_url(world.redis_url)
    _enqueue(sync, "ml-gpu", "mallory", 4, run_id=444)
    job = world.emulator.world.queue_job(ORG, "research/models", ["gpu"], "mallory", run_id=444)
    world.emulator.fail("cancel", 502, times=1)

    async def scenario() -> int:
        redis = aioredis.Redis.from_url(world.redis_url)
        client = world.client()
        verifier = TeamVerifier(world.spec, redis, {"ghes": client}, clock=world.emulator.now)
        listener = Listener(
            world.scale_set,
            redis,
            verifier,
            AuditLog(redis),
            consumer="t",
            client=client,
            cancel_denied=True,
            retry_after_ms=0,
        )
        await listener.ensure_group()
        await listener.process_once()
        pending = int(sync.xpending(queue_key("ml-gpu"), GROUP)["pending"])
        await listener.process_once()  # claimed again: the cancel goes through this time
        await client.aclose()
        await redis.aclose()
        return pending

    try:
        assert run(scenario()) == 1
    finally:
        world.emulator.clear_faults()
    assert job.conclusion == "cancelled"
    assert sync.xpending(queue_key("ml-gpu"), GROUP)["pending"] == 0


def test_membership_webhooks_invalidate_the_cache(world: World) -> None:
    async def scenario() -> list[str]:
        verifier = world.verifier()
        before = await verifier.verify(world.scale_set, "alice")
        world.emulator.world.remove_membership(ORG, "ml-platform", "alice")
        await verifier.invalidate(f"ghes/{ORG}", "ml-platform", "alice")
        after = await verifier.verify(world.scale_set, "alice")
        await world.close(verifier)
        return [before.decision, after.decision]

    assert run(scenario()) == ["allowed", "denied"]
