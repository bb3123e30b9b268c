"""The lost-webhook reconciler: one per GitHub instance, inside ``serve``.

GitHub never redelivers a failed webhook by itself, and a delivery it thinks succeeded
can still be lost (a Redis primary gone right after the 202). Each pass, on one replica
per instance (a Redis lock), the reconciler:

1. lists the failed deliveries since its previous pass of the App hook (``GET
   /app/hook/deliveries``, App JWT) and of the org hooks that point at this instance's
   webhook path (``GET /orgs/{org}/hooks``, then ``…/hooks/{id}/deliveries``), pages
   by cursor, and redelivers each one the platform has not stored (``POST
   …/deliveries/{id}/attempts``): the same GUID arrives again at the router, where
   the usual dedupe keys make a second arrival a ``duplicate``;
2. compares GitHub's queued jobs of the team repositories (``GET
   /repos/{owner}/{repo}/actions/runs?status=queued|in_progress``, then each run's
   ``jobs``; glob repositories from ``GET /installation/repositories``) with what the
   platform has stored (the router's ``rp:jobaction:<instance>:<job>:queued`` key) and
   feeds each missing one through the router's routing and store, under the same dedupe
   keys as its webhook: a job recovered twice, or recovered and then redelivered, is one
   entry. The listener then verifies the requester as for any webhook;
3. checks the platform's pending demand (``rp:pending:<scale set>``) older than the grace
   against GitHub (``GET /repos/{owner}/{repo}/actions/jobs/{id}``, the repository taken
   from the queued job's audit record) and feeds the ``in_progress``/``completed`` whose
   webhook was lost, so a job GitHub has finished stops counting as demand.

Every list is read with ``If-None-Match``; a 304 costs no rate limit. A pass spends at
most ``max_calls`` calls that do cost, and the reconciler at most ``budget_percent`` of
the instance's hourly primary limit (counted in Redis, so a new lock holder knows).
What it recovered is counted (``runner_platform_reconciler_recovered_total``) and
audited: ``redelivered`` per delivery, ``recovered`` per job (written with the job, in
the store's one script).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from pydantic import ValidationError

from controller.audit import AuditLog, AuditRecord
from controller.errors import (
    GitHubAuthError,
    GitHubError,
    GitHubUnavailable,
    QueueFull,
    RateLimited,
)
from controller.github_client import AppCredentials, GitHubClient, Reply
from controller.ingest.events import WorkflowJobEvent
from controller.ingest.routing import Router
from controller.ingest.store import IngestStore, delivery_key, job_action_key, job_entry
from controller.metrics import Metrics
from controller.model import GitHubInstance, PlatformSpec, Team, is_glob
from controller.settings import Settings
from controller.streams import pending_key

log = logging.getLogger(__name__)
Clock = Callable[[], float]

# Events the router acts on; redelivering anything else would spend points for nothing.
REDELIVERED_EVENTS = frozenset({"workflow_job", "membership", "team"})
JOB_ACTIONS = frozenset({"queued", "in_progress", "completed"})
MAX_ATTEMPTS = 3  # redeliveries of one GUID before the reconciler gives up on it
OVERLAP_SECONDS = 120.0  # each pass rereads this much of the previous one's window
REQUESTS_PER_CALL = 5  # requests (304s included) a pass may make per call it may spend
NO_APP_HOOK_RECHECK = 600.0  # seconds before asking again for an App with no webhook
RUN_STATUSES = ("queued", "in_progress")  # a queued job can sit in an in_progress run
# A job's status on GitHub -> the time it took it: older than the grace, and the platform
# not having it, its webhook was lost.
SINCE_FIELD = {"queued": "created_at", "in_progress": "started_at", "completed": "completed_at"}
CACHE_ENTRIES = 4096  # (ETag, body) pairs kept, least recently used dropped first
REPOSITORY_REFRESH_PASSES = 10  # the installation's repositories are listed again every
REPOSITORY_REFRESH_SECONDS = 600.0  # tenth pass, and at least this often
UNAVAILABLE_IN_A_ROW = 3  # repositories answering 5xx in a row: GitHub is down, stop
PENDING_CHECKS = 20  # pending jobs looked up on GitHub per pass (scale sets in turn)
# Malformed data in one repository's answers: that repository is skipped, not the pass.
DATA_ERRORS = (KeyError, ValueError, TypeError, AttributeError)


class BudgetSpent(Exception):
    """The pass reached its share of the API budget; the next pass goes on."""


class LockLost(Exception):
    """The instance's lock could not be renewed: another replica may act now."""


@dataclass(frozen=True)
class ReconcileSettings:
    interval: float = 60.0
    max_calls: int = 200
    budget_percent: int = 10
    grace: float = 30.0
    lookback: float = 6 * 3600.0
    lock_seconds: float = 30.0
    public_url: str = ""  # where GitHub reaches the router (default: the Ingress's host)

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError("RUNNER_PLATFORM_RECONCILE_SECONDS must be positive to run")
        if self.max_calls < 1:
            raise ValueError("RUNNER_PLATFORM_RECONCILE_MAX_CALLS must be at least 1")
        if not 1 <= self.budget_percent <= 100:
            raise ValueError("RUNNER_PLATFORM_RECONCILE_BUDGET_PERCENT must be 1 to 100")
        if self.grace < 0 or self.lookback <= 0:
            raise ValueError("RUNNER_PLATFORM_RECONCILE_GRACE/_LOOKBACK must be positive")
        if self.lock_seconds < 3:
            raise ValueError("RUNNER_PLATFORM_RECONCILE_LOCK must be at least 3 seconds")


_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLock:
    """One holder at a time: ``SET key token NX PX``, renewed and released only by the
    holder (compare-and-expire, compare-and-delete). ``held`` turns false a fifth of the
    lifetime before the key could expire unrenewed, so a holder cut off from Redis stops
    acting before another replica can take over."""

    def __init__(
        self,
        redis: aioredis.Redis,
        key: str,
        ttl: float,
        *,
        monotonic: Clock = time.monotonic,
    ) -> None:
        self.redis, self.key, self.ttl = redis, key, ttl
        self.token = secrets.token_hex(16)
        self.monotonic = monotonic
        self._valid_until = 0.0
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    @property
    def held(self) -> bool:
        return self.monotonic() < self._valid_until

    async def acquire(self) -> bool:
        """Take the lock if free, or renew it if ours; False while another holds it."""
        started = self.monotonic()
        ttl_ms = int(self.ttl * 1000)
        ours = bool(await self._renew(keys=[self.key], args=[self.token, ttl_ms]))
        if not ours:
            ours = bool(await self.redis.set(self.key, self.token, nx=True, px=ttl_ms))
        self._valid_until = started + self.ttl * 0.8 if ours else 0.0
        return ours

    async def release(self) -> None:
        self._valid_until = 0.0
        await self._release(keys=[self.key], args=[self.token])


@dataclass
class Budget:
    """Calls that cost rate limit left to this pass (a 304 costs nothing), and requests
    of any kind: ``REQUESTS_PER_CALL`` times as many, so that 304s, free as they are,
    do not make one pass over a large org endless (the next pass goes on from there)."""

    left: int
    requests: int = -1
    spent: int = 0
    not_modified: int = 0

    def __post_init__(self) -> None:
        if self.requests < 0:
            self.requests = self.left * REQUESTS_PER_CALL

    def check(self) -> None:
        if self.left <= 0 or self.requests <= 0:
            raise BudgetSpent()

    def charge(self, reply: Reply) -> Reply:
        self.requests -= 1
        if reply.status == 304:
            self.not_modified += 1
        else:
            self.spent += 1
            self.left -= 1
        return reply


@dataclass
class PassReport:
    """What one pass did."""

    result: str = "ok"
    redelivered: int = 0
    recovered: int = 0
    spent: int = 0
    not_modified: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # repository -> what went wrong


@dataclass(frozen=True)
class HookSource:
    """Where deliveries are listed: the App hook of one App, or one org hook."""

    name: str
    app: AppCredentials | None = None
    org: str = ""
    hook_id: int = 0


class Reconciler:
    def __init__(
        self,
        spec: PlatformSpec,
        instance: GitHubInstance,
        client: GitHubClient,
        redis: aioredis.Redis,
        store: IngestStore,
        audit: AuditLog,
        *,
        settings: ReconcileSettings,
        metrics: Metrics | None = None,
        router: Router | None = None,
        clock: Clock = time.time,
        cache_entries: int = CACHE_ENTRIES,
    ) -> None:
        self.spec, self.instance, self.client = spec, instance, client
        self.redis, self.store, self.audit = redis, store, audit
        self.settings = settings
        self.metrics = metrics
        self.router = router or Router(spec)
        self.clock = clock
        self.teams: list[Team] = [t for t in spec.teams if t.instance == instance.name]
        self.scale_sets = [s for s in spec.scale_sets() if s.instance == instance.name]
        self.lock = RedisLock(redis, f"rp:reconcile:lock:{instance.name}", settings.lock_seconds)
        # Only hooks that point exactly at this router are ours to redeliver: an org admin's
        # hook elsewhere with the same path (another platform, a dead endpoint) is not.
        self.webhook_url = _normal_url(spec.webhook_url(instance.name, settings.public_url))
        # path -> (ETag, body, next page) of the lists read: the next read is conditional.
        # Bounded: least recently used first out (runs come and go, cursors move on).
        self._cache: OrderedDict[str, tuple[str, Any, str | None]] = OrderedDict()
        self.cache_entries = cache_entries
        self._repo_offset = 0
        self._repos: dict[str, list[str]] = {}  # org -> its installation's repositories
        self._repos_listed = -1e18  # when the installation's repositories were listed
        self._passes_since_listing = 0
        self._pending_offset: dict[str, int] = {}  # scale set -> rank to look up next
        self._pending_set = 0  # index of the scale set whose pending jobs come next
        self._hooks_unreadable: set[str] = set()
        self._no_app_hook: dict[int, float] = {}  # App id -> when to ask again
        self._first_try = asyncio.Event()
        if metrics is not None:  # both series from the start, at 0: rate() sees the first
            for kind in ("delivery", "job", "event"):
                metrics.reconciler_recovered.labels(instance.name, kind)

    # -- the loop --

    async def run(self) -> None:
        """Pass after pass while holding the instance's lock; a standby replica keeps
        trying to take it. Cancelled: the lock is released for a peer at once."""
        keeper = asyncio.create_task(self._keep_lock())
        try:
            await self._first_try.wait()
            while True:
                if self.lock.held:
                    await self._pass_logged()
                await asyncio.sleep(self.settings.interval)
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            try:
                await asyncio.shield(self.lock.release())
            except (aioredis.RedisError, OSError):
                pass  # it expires by itself

    async def _keep_lock(self) -> None:
        was = False
        while True:
            try:
                held = await self.lock.acquire()
            except (aioredis.RedisError, OSError) as error:
                log.warning("reconciler %s: lock: %s", self.instance.name, type(error).__name__)
                held = False
            except Exception:  # never a keeper that died: the loop would wait forever
                log.exception("reconciler %s: lock", self.instance.name)
                held = False
            if held != was:
                log.info(
                    "reconciler %s: %s", self.instance.name, "acting" if held else "standing by"
                )
                was = held
            self._first_try.set()
            await asyncio.sleep(self.settings.lock_seconds / 3)

    async def _pass_logged(self) -> PassReport:
        try:
            report = await self.run_once()
        except (aioredis.RedisError, OSError) as error:
            log.warning("reconciler %s: storage: %s", self.instance.name, type(error).__name__)
            report = PassReport(result="unavailable")
        except Exception:
            log.exception("reconciler %s: pass failed", self.instance.name)
            report = PassReport(result="error")
        if self.metrics is not None:
            self.metrics.reconciler_passes.labels(self.instance.name, report.result).inc()
        if report.redelivered or report.recovered or report.result != "ok":
            log.info(
                "reconciler %s: %s, %d redelivered, %d recovered, %d calls (+%d 304)",
                self.instance.name,
                report.result,
                report.redelivered,
                report.recovered,
                report.spent,
                report.not_modified,
            )
        return report

    async def run_once(self) -> PassReport:
        """One pass: failed deliveries first (cheap, exact), then queued jobs."""
        report = PassReport()
        budget = Budget(await self._allowance())
        try:
            budget.check()
            for source in await self._sources(budget):
                try:
                    await self._redeliver_failed(source, budget, report)
                except GitHubAuthError as error:  # this hook only: the others go on
                    self._failed(report, source.name, error)
            await self._recover_stale_pending(budget, report)
            await self._recover_queued(budget, report)
        except BudgetSpent:
            report.result = "budget"
        except LockLost:
            report.result = "lock-lost"
        except RateLimited as error:
            report.result = "rate-limited"
            log.warning("reconciler %s: %s", self.instance.name, error)
        except GitHubError as error:
            report.result = "unavailable"
            log.warning("reconciler %s: %s", self.instance.name, error)
        finally:
            report.spent, report.not_modified = budget.spent, budget.not_modified
            await self._spend(budget.spent)
        if report.result == "ok" and report.failed:
            report.result = "partial"  # finished, with some repositories skipped
        return report

    # -- budget --

    def _hour_key(self) -> str:
        return f"rp:reconcile:spent:{self.instance.name}:{int(self.clock() // 3600)}"

    async def _allowance(self) -> int:
        """This pass's calls: ``max_calls``, within the share of the hour left."""
        hourly = sum(app.limit for app in self.client.apps) * self.settings.budget_percent // 100
        spent = int(await self.redis.get(self._hour_key()) or 0)
        return max(0, min(self.settings.max_calls, hourly - spent))

    async def _spend(self, calls: int) -> None:
        if calls:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.incrby(self._hour_key(), calls)
                pipe.expire(self._hour_key(), 7200)
                await pipe.execute()

    async def _get(
        self, budget: Budget, path: str, call: Callable[[str | None], Awaitable[Reply]]
    ) -> tuple[Any, Reply]:
        """A conditional read: the cached body on a 304, else the new one (cached)."""
        budget.check()
        cached = self._cache.get(path)
        try:
            reply: Reply = await call(cached[0] if cached else None)
        except GitHubUnavailable:
            budget.requests -= 1  # an outage must not make a pass endless either
            raise
        budget.charge(reply)
        if reply.status == 304 and cached is not None:
            self._cache.move_to_end(path)
            etag, body, next_path = cached
            return body, Reply(304, body, etag, reply.next_path or next_path)
        if reply.status == 200 and reply.etag:
            self._cache[path] = (reply.etag, reply.body, reply.next_path)
            self._cache.move_to_end(path)
            while len(self._cache) > self.cache_entries:
                self._cache.popitem(last=False)
        else:
            self._cache.pop(path, None)
        return reply.body, reply

    # -- 1. failed deliveries --

    async def _sources(self, budget: Budget) -> list[HookSource]:
        """The App hooks and org hooks that send this instance's webhooks here."""
        sources = []
        for app in self.client.apps:
            if self._no_app_hook.get(app.app_id, 0.0) > self.clock():
                continue  # a 404 has no ETag: asked again only now and then
            try:
                config, reply = await self._get(
                    budget, f"app-hook:{app.app_id}", partial(self.client.app_hook_config, app)
                )
            except GitHubAuthError as error:
                log.warning("reconciler %s: App hook: %s", self.instance.name, error)
                continue
            if reply.status == 404:
                self._no_app_hook[app.app_id] = self.clock() + NO_APP_HOOK_RECHECK
            url = str((config or {}).get("url") or "") if reply.status in (200, 304) else ""
            if _normal_url(url) == self.webhook_url:
                sources.append(HookSource(f"app-{app.app_id}", app=app))
        for org in self.instance.orgs:
            if org in self._hooks_unreadable:
                continue
            try:
                body, reply = await self._get(
                    budget, f"hooks:{org}", partial(self.client.org_hooks, org)
                )
            except GitHubAuthError:
                reply = Reply(403, None, None)
            if reply.status in (403, 404):  # no organization_hooks permission: App hook only
                self._hooks_unreadable.add(org)
                log.info("reconciler %s: cannot list %s's hooks", self.instance.name, org)
                continue
            for hook in body if isinstance(body, list) else []:
                url = str((hook.get("config") or {}).get("url") or "")
                if hook.get("active", True) and _normal_url(url) == self.webhook_url:
                    sources.append(
                        HookSource(f"org-{org}-{hook['id']}", org=org, hook_id=hook["id"])
                    )
        return sources

    async def _list_since(
        self, source: HookSource, budget: Budget, since: float
    ) -> list[dict[str, Any]]:
        """Deliveries newer than ``since``, newest first. A page that answers 304 is read
        from the cache all the same: a previous pass may have read it and stopped before
        redelivering (budget, lock, limits), without moving its cursor on."""
        found: list[dict[str, Any]] = []
        path: str | None = None
        while True:
            key = f"deliveries:{source.name}:{path or ''}"

            async def call(etag: str | None, page: str | None = path) -> Reply:
                if source.app is not None:
                    return await self.client.app_hook_deliveries(source.app, page, etag)
                return await self.client.org_hook_deliveries(source.org, source.hook_id, page, etag)

            body, reply = await self._get(budget, key, call)
            if reply.status == 404:  # no App hook configured
                return []
            page = body if isinstance(body, list) else []
            fresh = [
                d for d in page if isinstance(d, dict) and _time(d.get("delivered_at")) >= since
            ]
            found.extend(fresh)
            if len(fresh) < len(page) or reply.next_path is None:
                return found
            path = reply.next_path

    async def _redeliver_failed(
        self, source: HookSource, budget: Budget, report: PassReport
    ) -> None:
        cursor_key = f"rp:reconcile:since:{self.instance.name}:{source.name}"
        started = self.clock()
        stored = await self.redis.get(cursor_key)
        since = float(stored) - OVERLAP_SECONDS if stored else started - self.settings.lookback
        deliveries = await self._list_since(source, budget, since)
        by_guid: dict[str, list[dict[str, Any]]] = {}
        for delivery in deliveries:
            by_guid.setdefault(str(delivery.get("guid")), []).append(delivery)
        for guid, attempts in by_guid.items():
            newest = attempts[0]  # the list is newest first
            if any(_succeeded(d) or _pending(d) for d in attempts):
                continue
            if not _worth_redelivering(newest):
                continue
            await self._redeliver(source, guid, newest, budget, report)
        # Only now, every failed delivery of the window handled: the next window starts here.
        await self.redis.set(cursor_key, f"{started:.3f}", ex=8 * 24 * 3600)

    async def _redeliver(
        self,
        source: HookSource,
        guid: str,
        delivery: dict[str, Any],
        budget: Budget,
        report: PassReport,
    ) -> None:
        instance = self.instance.name
        if await self.redis.exists(delivery_key(instance, guid)):
            return  # the router stored it; GitHub only missed the reply in time
        attempts_key = f"rp:reconcile:attempts:{instance}:{guid}"
        if int(await self.redis.get(attempts_key) or 0) >= MAX_ATTEMPTS:
            return
        budget.check()
        if not self.lock.held:
            raise LockLost()  # no longer ours: stop before acting
        # One redelivery in flight per GUID: its own listing may lag behind this pass.
        if not await self.redis.set(
            f"rp:reconcile:inflight:{instance}:{guid}",
            "1",
            nx=True,
            ex=int(max(60.0, 3 * self.settings.interval)),
        ):
            return
        if source.app is not None:
            reply = await self.client.redeliver_app_hook(source.app, int(delivery["id"]))
        else:
            reply = await self.client.redeliver_org_hook(
                source.org, source.hook_id, int(delivery["id"])
            )
        budget.charge(reply)
        if reply.status not in (200, 201, 202):
            # Expired (GitHub keeps deliveries 3 days, GHES 7) or refused: the queued-job
            # comparison is what can still recover a job.
            await self.redis.set(attempts_key, MAX_ATTEMPTS, ex=8 * 24 * 3600)
            log.info(
                "reconciler %s: redelivery of %s refused (%s)",
                instance,
                delivery["id"],
                reply.status,
            )
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(attempts_key)
            pipe.expire(attempts_key, 8 * 24 * 3600)
            await pipe.execute()
        report.redelivered += 1
        if self.metrics is not None:
            self.metrics.reconciler_recovered.labels(instance, "delivery").inc()
        await self.audit.record(
            AuditRecord(
                decision="redelivered",
                reason=f"delivery {delivery['id']} failed ({delivery.get('status_code')} "
                f"{str(delivery.get('status') or '')[:40]}); redelivery requested",
                instance=instance,
                delivery_id=guid[:64],
                action=str(delivery.get("action") or "")[:40],
            )
        )

    # -- 2. queued jobs GitHub has and the platform does not --

    async def _repositories(self, budget: Budget) -> list[tuple[Team, str]]:
        """(team, repository) for every team repository, globs expanded. The installation's
        repositories are listed again every ``REPOSITORY_REFRESH_PASSES``-th pass (and at
        least every ``REPOSITORY_REFRESH_SECONDS``), not on every pass."""
        globbing = [t for t in self.teams if any(is_glob(p) for p in t.repositories)]
        now = self.clock()
        due = (
            self._passes_since_listing >= REPOSITORY_REFRESH_PASSES
            or now - self._repos_listed >= REPOSITORY_REFRESH_SECONDS
            or any(team.org not in self._repos for team in globbing)
        )
        if globbing and due:
            listed: dict[str, list[str]] = {}
            for team in globbing:
                if team.org not in listed:
                    listed[team.org] = await self._installation_repositories(team.org, budget)
            self._repos, self._repos_listed, self._passes_since_listing = listed, now, 0
        else:
            self._passes_since_listing += 1
        named: list[tuple[Team, str]] = []
        seen: set[tuple[str, str]] = set()  # (team, repository): no quadratic list search
        for team in self.teams:
            exact = [p for p in team.repositories if not is_glob(p)]
            matched = (
                [r for r in self._repos.get(team.org, []) if team.claims_repository(r)]
                if len(exact) < len(team.repositories)
                else []
            )
            for repository in (*exact, *matched):
                if (team.name, repository.lower()) not in seen:
                    seen.add((team.name, repository.lower()))
                    named.append((team, repository))
        return named

    async def _installation_repositories(self, org: str, budget: Budget) -> list[str]:
        names: list[str] = []
        page = 1
        while True:
            body, reply = await self._get(
                budget,
                f"repos:{org}:{page}",
                partial(self.client.installation_repositories, org, page),
            )
            items = _items(body, "repositories") if reply.status in (200, 304) else []
            names.extend(str(item["full_name"]) for item in items)
            if reply.next_path is None and len(items) < 100:
                return names
            if not items:
                return names
            page += 1

    async def _recover_queued(self, budget: Budget, report: PassReport) -> None:
        repositories = await self._repositories(budget)
        if not repositories:
            return
        # Start where the previous pass stopped, so a small budget still covers all.
        start = self._repo_offset % len(repositories)
        ordered = repositories[start:] + repositories[:start]
        unavailable = 0
        for index, (team, repository) in enumerate(ordered):
            self._repo_offset = start + index
            try:
                await self._recover_repository(team, repository, budget, report)
            except (BudgetSpent, LockLost, RateLimited):
                raise  # the pass ends; the next one starts at this repository
            except GitHubUnavailable as error:
                self._failed(report, repository, error)
                unavailable += 1
                if unavailable >= UNAVAILABLE_IN_A_ROW:
                    self._repo_offset = start + index + 1  # on from the next one
                    raise
                continue
            except (GitHubError, *DATA_ERRORS) as error:
                # One repository the App may not read (403), or whose answers are malformed,
                # must not keep every repository after it from being compared.
                self._failed(report, repository, error)
            unavailable = 0
        self._repo_offset = 0

    def _failed(self, report: PassReport, repository: str, error: Exception) -> None:
        report.failed[repository] = f"{type(error).__name__}: {error}"[:200]
        log.warning(
            "reconciler %s: %s skipped: %s",
            self.instance.name,
            repository,
            report.failed[repository],
        )

    async def _pages(
        self,
        budget: Budget,
        key: str,
        first: Callable[[str | None], Awaitable[Reply]],
        org: str,
        handle: Callable[[Any], Awaitable[None]],
    ) -> None:
        """Every page of a list (``Link: rel="next"``), each read conditionally and handled
        as it comes, so a pass that runs out has acted on what it read. A 404 (no such
        repository: a name in stack config, not yet made) is an empty list."""
        body, reply = await self._get(budget, f"{key}:1", first)
        number = 1
        endpoint = _ENDPOINTS[key.split(":", 1)[0]]
        while reply.status in (200, 304):
            await handle(body)
            if reply.next_path is None:
                return
            number += 1

            async def call(etag: str | None, path: str = reply.next_path) -> Reply:
                return await self.client.request("GET", path, org=org, endpoint=endpoint, etag=etag)

            body, reply = await self._get(budget, f"{key}:{number}", call)

    async def _recover_repository(
        self, team: Team, repository: str, budget: Budget, report: PassReport
    ) -> None:
        async def runs_page(body: Any) -> None:
            for run in _items(body, "workflow_runs"):
                run_id = int(run["id"])

                async def jobs_page(jobs: Any, run: dict[str, Any] = run) -> None:
                    await self._compare(team, repository, run, _items(jobs, "jobs"), report)

                await self._pages(
                    budget,
                    f"jobs:{repository}:{run_id}",
                    partial(self.client.run_jobs, team.org, repository, run_id, 1),
                    team.org,
                    jobs_page,
                )

        for status in RUN_STATUSES:
            await self._pages(
                budget,
                f"runs:{repository}:{status}",
                partial(self.client.workflow_runs, team.org, repository, status, 1),
                team.org,
                runs_page,
            )

    async def _compare(
        self,
        team: Team,
        repository: str,
        run: dict[str, Any],
        jobs: list[dict[str, Any]],
        report: PassReport,
    ) -> None:
        """Feed in what the platform misses of a page of one run's jobs."""
        now = self.clock()
        candidates: list[tuple[dict[str, Any], str]] = []  # job, action
        for job in jobs:
            action = str(job.get("status"))
            since = SINCE_FIELD.get(action)
            if since and now - _time(job.get(since)) >= self.settings.grace:
                candidates.append((job, action))
        if not candidates:
            return
        instance = self.instance.name
        async with self.redis.pipeline(transaction=False) as pipe:
            for job, action in candidates:
                pipe.exists(job_action_key(instance, job["id"], "queued"))
                pipe.exists(job_action_key(instance, job["id"], action))
            known = await pipe.execute()
        for index, (job, action) in enumerate(candidates):
            queued_known, action_known = known[2 * index], known[2 * index + 1]
            # A queued job the platform never had is demand it misses; a start or an end
            # of a job it had, demand it keeps counting (an idle runner too many). A job
            # that started unknown to the platform needs nothing from it.
            if (action == "queued" and not queued_known) or (
                action != "queued" and queued_known and not action_known
            ):
                await self._feed(team, repository, run, job, action, report)

    # -- 3. pending demand GitHub has finished with --

    async def _recover_stale_pending(self, budget: Budget, report: PassReport) -> None:
        """Jobs the platform has counted as demand for longer than the grace, asked of
        GitHub: at most ``PENDING_CHECKS`` a pass, in turn over the scale sets and their
        jobs (oldest first), so that a long backlog of jobs legitimately waiting costs a
        bounded share of the pass. A start or end GitHub has and the platform missed is
        fed in like its webhook."""
        if not self.scale_sets:
            return
        cutoff = self.clock() - self.settings.grace
        teams = {team.name: team for team in self.teams}
        left = PENDING_CHECKS
        count = len(self.scale_sets)
        first = self._pending_set % count
        for step in range(count):
            if left <= 0:
                break
            scale_set = self.scale_sets[(first + step) % count]
            offset = self._pending_offset.get(scale_set.name, 0)
            ids: Any = await self.redis.zrangebyscore(
                pending_key(scale_set.name), "-inf", cutoff, start=offset, num=left
            )
            more = len(ids) == left  # this scale set has more: the next pass goes on here
            self._pending_offset[scale_set.name] = offset + len(ids) if more else 0
            self._pending_set = (first + step + (0 if more else 1)) % count
            left -= len(ids)
            if ids:
                await self._check_pending_ids(
                    teams.get(scale_set.team),
                    [i.decode() if isinstance(i, bytes) else str(i) for i in ids],
                    budget,
                    report,
                )

    async def _check_pending_ids(
        self, team: Team | None, job_ids: list[str], budget: Budget, report: PassReport
    ) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.get(job_action_key(self.instance.name, job_id, "queued"))
            found = await pipe.execute()
        for job_id, value in zip(job_ids, found, strict=True):
            origin = json.loads(value) if value else None
            if team is None or not isinstance(origin, dict):
                continue  # stored before its origin was kept: the 24 h expiry of demand
            try:
                await self._check_pending(team, job_id, origin, budget, report)
            except (BudgetSpent, LockLost, GitHubUnavailable, RateLimited):
                raise  # the pass ends here
            except (GitHubError, *DATA_ERRORS) as error:
                self._failed(report, f"job {job_id}", error)

    async def _check_pending(
        self, team: Team, job_id: str, known: dict[str, Any], budget: Budget, report: PassReport
    ) -> None:
        repository = str(known["repo"])
        path = f"/repos/{repository}/actions/jobs/{int(job_id)}"

        async def call(etag: str | None) -> Reply:
            return await self.client.request("GET", path, org=team.org, endpoint="job", etag=etag)

        body, reply = await self._get(budget, f"job:{repository}:{job_id}", call)
        if reply.status not in (200, 304) or not isinstance(body, dict):
            return  # gone (404): the 24 h expiry of demand drops it
        action = str(body.get("status"))
        if action not in ("in_progress", "completed"):
            return  # still queued: demand it is
        if self.clock() - _time(body.get(SINCE_FIELD[action])) < self.settings.grace:
            return  # its webhook may be on the way
        if await self.redis.exists(job_action_key(self.instance.name, job_id, action)):
            return  # stored; the listener and the provisioner have yet to apply it
        run = {"triggering_actor": {"login": known.get("requester") or ""}}
        await self._feed(team, repository, run, body, action, report)

    async def _feed(
        self,
        team: Team,
        repository: str,
        run: dict[str, Any],
        job: dict[str, Any],
        action: str,
        report: PassReport,
    ) -> None:
        """Route and store a job's ``action`` as its webhook would have been."""
        actor = run.get("triggering_actor") or run.get("actor") or {}
        try:
            event = WorkflowJobEvent.model_validate(
                {
                    "action": action,
                    "workflow_job": {**job, "status": action},
                    "repository": {"full_name": repository},
                    "organization": {"login": team.org},
                    "sender": {"login": actor.get("login", "")},
                }
            )
        except ValidationError as error:
            first = error.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"])
            log.warning("reconciler: job %s not recoverable: %s", job.get("id"), where)
            return
        route = self.router.route(self.instance.name, event)
        if route is None:
            return  # its webhook would have been unroutable too: not ours to serve
        if not self.lock.held:
            raise LockLost()  # no longer ours: stop before acting
        instance = self.instance.name
        delivery = f"reconciler:{event.workflow_job.id}:{action}"
        audit = AuditRecord(
            decision="recovered",
            instance=instance,
            org=event.org,
            repo=repository,
            requester=event.sender.login,
            job_id=event.workflow_job.id,
            run_id=event.workflow_job.run_id,
            scale_set=route.scale_set.name,
            team=route.team.name,
            delivery_id=delivery,
            action=action,
        )
        try:
            stored = await self.store.store(
                instance=instance,
                delivery=delivery,
                job_id=event.workflow_job.id,
                action=action,
                scale_set=route.scale_set.name,
                entry=job_entry(instance, delivery, event),
                audit=audit,
                decision="recovered",
                reason=f"{action} on GitHub, unknown to the platform (webhook lost)",
            )
        except QueueFull:
            log.warning("reconciler %s: %s is full", instance, route.scale_set.name)
            return
        if stored.duplicate:
            return  # its webhook (or a redelivery) arrived meanwhile
        report.recovered += 1
        if self.metrics is not None:
            kind = "job" if action == "queued" else "event"
            self.metrics.reconciler_recovered.labels(instance, kind).inc()


_ENDPOINTS = {"runs": "workflow_runs", "jobs": "run_jobs"}  # cache key -> metric endpoint


_DEFAULT_PORTS = {"https": 443, "http": 80}


def _normal_url(url: str) -> str:
    """A hook URL as compared: scheme and host lower-cased, the scheme's default port
    dropped, no trailing '/', no query. A URL that cannot be parsed compares as itself."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # a port that is not a number: never ours
        return url
    netloc = parts.netloc.lower()
    if port is not None and port == _DEFAULT_PORTS.get(scheme):
        netloc = netloc.rsplit(":", 1)[0]
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def _items(body: Any, key: str) -> list[dict[str, Any]]:
    """The list ``key`` of a page; malformed answers raise ``ValueError``."""
    if body is None:
        return []
    items = body.get(key, []) if isinstance(body, dict) else None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ValueError(f"malformed answer: {key} is not a list of objects")
    return items


def _time(text: Any) -> float:
    if not isinstance(text, str) or not text:
        return 0.0
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _succeeded(delivery: dict[str, Any]) -> bool:
    code = int(delivery.get("status_code") or 0)
    return delivery.get("status") == "OK" or 200 <= code < 300


def _pending(delivery: dict[str, Any]) -> bool:
    """Not attempted yet (the emulator lists a delivery before its attempt)."""
    return str(delivery.get("status", "")).lower() == "pending"


def _worth_redelivering(delivery: dict[str, Any]) -> bool:
    """A delivery the router would act on that failed on the way, not one it refused
    (a 4xx says the same again: bad signature, bad payload, too large)."""
    event = delivery.get("event")
    if event not in REDELIVERED_EVENTS:
        return False
    if event == "workflow_job" and delivery.get("action") not in JOB_ACTIONS:
        return False
    code = int(delivery.get("status_code") or 0)
    return code == 0 or code >= 500 or code in (408, 429)


def reconcile_settings(values: Settings) -> ReconcileSettings:
    """The reconciler's part of the controller's settings."""
    return ReconcileSettings(
        interval=float(values.reconcile_seconds),
        max_calls=int(values.reconcile_max_calls),
        budget_percent=int(values.reconcile_budget_percent),
        grace=float(values.reconcile_grace_seconds),
        lookback=float(values.reconcile_lookback_seconds),
        lock_seconds=float(values.reconcile_lock_seconds),
        public_url=values.public_url,
    )
