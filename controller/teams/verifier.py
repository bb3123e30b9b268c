"""The Team Verifier: may this requester run a job on this scale set?

Allowed iff ``sender.login`` is an ``active`` member of one of the team's GitHub teams
(GitHub counts child-team members; ``pending`` does not authorise). Answers are cached in
Redis with their own expiry on the injected clock: 5 minutes for a yes, a shorter time
for a no. An expired entry keeps its ETag, so the next lookup is a conditional request
whose 304 costs no rate limit. Concurrent misses for the same (user, team) in a process
share one API call. When GitHub cannot answer and nothing valid is cached the verdict is
``held`` (fail closed: the job waits and is retried), never ``allowed``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from controller.errors import GitHubError
from controller.github_client import GitHubClient
from controller.metrics import Metrics
from controller.model import PlatformSpec, ScaleSet

Clock = Callable[[], float]
ETAG_RETENTION = 24 * 3600  # how long an expired answer is kept for its ETag


@dataclass(frozen=True)
class Verdict:
    decision: str  # allowed | denied | held
    reason: str


@dataclass(frozen=True)
class Membership:
    state: str  # active | pending | none
    etag: str | None
    expires: float


def cache_key(instance: str, org: str, team: str, user: str) -> str:
    return f"rp:member:{instance}:{org.lower()}:{team}:{user.lower()}"


class TeamVerifier:
    def __init__(
        self,
        spec: PlatformSpec,
        redis: aioredis.Redis,
        clients: dict[str, GitHubClient],
        *,
        positive_ttl: float = 300,
        negative_ttl: float = 60,
        clock: Clock = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.teams = {team.name: team for team in spec.teams}
        self.redis = redis
        self.clients = clients
        self.positive_ttl, self.negative_ttl = positive_ttl, negative_ttl
        self.clock = clock
        self.metrics = metrics
        self._inflight: dict[str, asyncio.Future[Membership]] = {}

    async def verify(self, scale_set: ScaleSet, requester: str) -> Verdict:
        team = self.teams[scale_set.team]
        try:  # every team's cached answer in one round trip
            cached = await self._cached_many(scale_set, team.github_teams, requester)
        except aioredis.RedisError:
            return Verdict("held", "membership cache unavailable")
        pending: list[str] = []
        for slug, answer in zip(team.github_teams, cached, strict=True):
            if answer is not None and answer.expires > self.clock():
                self._count("hit")
                if answer.state == "active":
                    return Verdict("allowed", f"active member of {slug} (cached)")
                continue
            pending.append(slug)
        for slug in pending:
            try:
                answer = await self._lookup(scale_set, slug, requester)
            except (GitHubError, aioredis.RedisError) as error:
                return Verdict("held", f"cannot check {slug}: {error}")
            if answer.state == "active":
                return Verdict("allowed", f"active member of {slug}")
        teams = ", ".join(team.github_teams)
        return Verdict("denied", f"{requester} is not an active member of {teams}")

    # -- cache --

    async def _cached(self, scale_set: ScaleSet, slug: str, user: str) -> Membership | None:
        return (await self._cached_many(scale_set, (slug,), user))[0]

    async def _cached_many(
        self, scale_set: ScaleSet, slugs: tuple[str, ...], user: str
    ) -> list[Membership | None]:
        keys = [cache_key(scale_set.instance, scale_set.org, slug, user) for slug in slugs]
        answers: list[Membership | None] = []
        for raw in await self.redis.mget(keys):
            if raw is None:
                answers.append(None)
                continue
            value: dict[str, Any] = json.loads(raw)
            answers.append(Membership(value["state"], value.get("etag"), float(value["expires"])))
        return answers

    async def _remember(
        self, scale_set: ScaleSet, slug: str, user: str, membership: Membership
    ) -> None:
        await self.redis.set(
            cache_key(scale_set.instance, scale_set.org, slug, user),
            json.dumps(
                {"state": membership.state, "etag": membership.etag, "expires": membership.expires}
            ),
            ex=int(max(self.positive_ttl, self.negative_ttl) + ETAG_RETENTION),
        )

    async def invalidate(self, instance_org: str, slug: str, member: str) -> None:
        """Forget cached answers at once (membership/team webhooks); ``*`` = every member."""
        instance, org = instance_org.split("/", 1)
        if member != "*":
            await self.redis.delete(cache_key(instance, org, slug, member))
            return
        async for key in self.redis.scan_iter(match=cache_key(instance, org, slug, "*")):
            await self.redis.delete(key)

    # -- GitHub, once per (user, team) at a time --

    async def _lookup(self, scale_set: ScaleSet, slug: str, user: str) -> Membership:
        key = cache_key(scale_set.instance, scale_set.org, slug, user)
        running = self._inflight.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[Membership] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await self._fetch(scale_set, slug, user)
            future.set_result(result)
            return result
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._inflight[key]

    async def _fetch(self, scale_set: ScaleSet, slug: str, user: str) -> Membership:
        previous = await self._cached(scale_set, slug, user)
        client = self.clients[scale_set.instance]
        reply = await client.team_membership(
            scale_set.org, slug, user, etag=previous.etag if previous else None
        )
        if reply.status == 304 and previous is not None:
            self._count("revalidated")
            state, etag = previous.state, previous.etag
        elif reply.status == 200:
            self._count("miss")
            state, etag = str(reply.body.get("state", "none")), reply.etag
        elif reply.status == 404:
            self._count("miss")
            state, etag = "none", None
        else:
            raise GitHubError(f"membership lookup answered {reply.status}")
        ttl = self.positive_ttl if state == "active" else self.negative_ttl
        membership = Membership(state, etag, self.clock() + ttl)
        await self._remember(scale_set, slug, user, membership)
        return membership

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.cache.labels(result).inc()
