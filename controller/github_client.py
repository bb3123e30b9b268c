"""The one module that talks to GitHub.

GitHub App auth: an RS256 app JWT (``iss`` = app id, 9 minutes) buys a one-hour
installation token per installation, refreshed five minutes before it expires and dropped
on a 401. Limits: ``x-ratelimit-*`` headers feed a metric and the choice of App when
several serve an org; a 403/429 with ``retry-after`` (secondary limit) or with no budget
left (primary) raises :class:`RateLimited` with the wait; mutating calls draw 5 points
each from a per-App bucket of 900 points a minute (GitHub's secondary limit per
endpoint) before they are sent. Direct calls over httpx: the platform needs ETags, 304s
and the headers, which PyGithub does not hand back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt

from controller.errors import GitHubAuthError, GitHubUnavailable, RateLimited
from controller.metrics import Metrics
from controller.model import GitHubInstance

log = logging.getLogger(__name__)
Clock = Callable[[], float]
TOKEN_REFRESH_MARGIN = 300.0
MUTATION_POINTS = 5


@dataclass
class TokenBucket:
    """``capacity`` points refilled evenly over a minute; waits rather than overdraws."""

    capacity: float = 900.0
    clock: Clock = time.monotonic
    tokens: float = field(init=False)
    updated: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens, self.updated = self.capacity, self.clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.capacity / 60)
        self.updated = now

    def wait_time(self, points: float) -> float:
        if self.capacity <= 0:
            return 0.0
        self._refill()
        return 0.0 if self.tokens >= points else (points - self.tokens) * 60 / self.capacity

    async def take(self, points: float) -> None:
        while (delay := self.wait_time(points)) > 0:
            await asyncio.sleep(delay)
        self.tokens -= points


@dataclass
class AppCredentials:
    app_id: int
    private_key: bytes
    installations: dict[str, int]
    bucket: TokenBucket = field(default_factory=TokenBucket)
    """GitHub's secondary limit as seen by this App; ``capacity`` 0 turns pacing off
    (Enterprise Server with rate limits disabled)."""
    remaining: int = 5000
    limit: int = 5000
    """The primary limit per hour GitHub last announced (``x-ratelimit-limit``)."""
    tokens: dict[int, tuple[str, float]] = field(
        default_factory=dict
    )  # installation -> (token, exp)


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any
    etag: str | None
    next_path: str | None = None
    """The next page (``Link: rel="next"``) as a path under the API URL, if any."""


class GitHubClient:
    def __init__(
        self,
        instance: GitHubInstance,
        apps: list[AppCredentials],
        *,
        api_url: str | None = None,
        http: httpx.AsyncClient | None = None,
        clock: Clock = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        if not apps:
            raise ValueError(f"instance {instance.name}: no GitHub App credentials")
        self.instance = instance
        self.apps = apps
        self.api_url = (api_url or instance.api_url).rstrip("/")
        self.http = http or httpx.AsyncClient(timeout=httpx.Timeout(10.0))
        self.clock = clock
        self.metrics = metrics
        self._refresh_locks: dict[int, asyncio.Lock] = {}

    async def aclose(self) -> None:
        await self.http.aclose()

    # -- auth --

    def _app_for(self, org: str) -> tuple[AppCredentials, int]:
        serving = [app for app in self.apps if org in app.installations]
        if not serving:
            raise GitHubAuthError(f"no App of instance {self.instance.name} is installed in {org}")
        app = max(serving, key=lambda a: a.remaining)  # share the load by remaining budget
        return app, app.installations[org]

    def app_jwt(self, app: AppCredentials) -> str:
        now = int(self.clock())
        claims = {"iss": str(app.app_id), "iat": now - 60, "exp": now + 540}
        return jwt.encode(claims, app.private_key, algorithm="RS256")

    async def _installation_token(self, app: AppCredentials, installation: int) -> str:
        cached = app.tokens.get(installation)
        if cached and cached[1] - TOKEN_REFRESH_MARGIN > self.clock():
            return cached[0]
        lock = self._refresh_locks.setdefault(installation, asyncio.Lock())
        async with lock:  # one refresh for many concurrent callers
            cached = app.tokens.get(installation)
            if cached and cached[1] - TOKEN_REFRESH_MARGIN > self.clock():
                return cached[0]
            response = await self._send(
                "POST",
                f"/app/installations/{installation}/access_tokens",
                "access_tokens",
                {"Authorization": f"Bearer {self.app_jwt(app)}"},
                None,
            )
            self._raise_for_limits(response, "access_tokens")
            if response.status_code != 201:
                raise GitHubAuthError(
                    f"installation {installation}: token request answered {response.status_code}"
                )
            body = response.json()
            expires = _parse_time(body["expires_at"])
            app.tokens[installation] = (body["token"], expires)
            return str(body["token"])

    # -- requests --

    async def _send(
        self, method: str, path: str, endpoint: str, headers: dict[str, str], body: Any
    ) -> httpx.Response:
        try:
            response = await self.http.request(
                method,
                f"{self.api_url}{path}",
                json=body,
                headers={
                    "Accept": "application/vnd.github+json",
                    "X-GitHub-Api-Version": "2022-11-28",
                    **headers,
                },
            )
        except httpx.TransportError as error:
            self._count(endpoint, "unreachable")
            raise GitHubUnavailable(f"{endpoint}: {type(error).__name__}") from None
        self._count(endpoint, str(response.status_code))
        if response.status_code >= 500:
            raise GitHubUnavailable(f"{endpoint}: GitHub answered {response.status_code}")
        return response

    def _count(self, endpoint: str, status: str) -> None:
        if self.metrics is not None:
            self.metrics.github_calls.labels(self.instance.name, endpoint, status).inc()

    async def request(
        self,
        method: str,
        path: str,
        *,
        org: str,
        endpoint: str,
        etag: str | None = None,
        body: Any = None,
    ) -> Reply:
        app, installation = self._app_for(org)
        if method != "GET":
            await app.bucket.take(MUTATION_POINTS)
        for attempt in (1, 2):
            token = await self._installation_token(app, installation)
            headers = {"Authorization": f"Bearer {token}"}
            if etag:
                headers["If-None-Match"] = etag
            response = await self._send(method, path, endpoint, headers, body)
            self._note_budget(app, response)
            if response.status_code == 401 and attempt == 1:
                app.tokens.pop(installation, None)  # revoked or expired early: fetch anew
                continue
            break
        self._raise_for_limits(response, endpoint)
        return self._reply(response)

    def _reply(self, response: httpx.Response) -> Reply:
        payload = response.json() if response.content else None
        next_url = response.links.get("next", {}).get("url")
        next_path = None
        if next_url and next_url.startswith(self.api_url):
            next_path = next_url[len(self.api_url) :]
        return Reply(response.status_code, payload, response.headers.get("etag"), next_path)

    async def app_request(
        self,
        app: AppCredentials,
        method: str,
        path: str,
        *,
        endpoint: str,
        etag: str | None = None,
    ) -> Reply:
        """A call as the App itself (App JWT, not an installation token): the App hook's
        deliveries and redeliveries."""
        if method != "GET":
            await app.bucket.take(MUTATION_POINTS)
        headers = {"Authorization": f"Bearer {self.app_jwt(app)}"}
        if etag:
            headers["If-None-Match"] = etag
        response = await self._send(method, path, endpoint, headers, None)
        self._raise_for_limits(response, endpoint)
        return self._reply(response)

    def _note_budget(self, app: AppCredentials, response: httpx.Response) -> None:
        limit = response.headers.get("x-ratelimit-limit")
        if limit is not None and limit.isdigit():
            app.limit = int(limit)
        remaining = response.headers.get("x-ratelimit-remaining")
        if remaining is not None and remaining.isdigit():
            app.remaining = int(remaining)
            if self.metrics is not None:
                self.metrics.github_budget.labels(self.instance.name, str(app.app_id)).set(
                    app.remaining
                )

    def _raise_for_limits(self, response: httpx.Response, endpoint: str) -> None:
        if response.status_code not in (401, 403, 429):
            return
        retry_after = response.headers.get("retry-after")
        if retry_after is not None:
            raise RateLimited(f"{endpoint}: secondary rate limit", float(retry_after))
        if response.headers.get("x-ratelimit-remaining") == "0":
            reset = float(response.headers.get("x-ratelimit-reset") or 0)
            raise RateLimited(f"{endpoint}: primary rate limit", max(60.0, reset - self.clock()))
        if response.status_code == 429:
            raise RateLimited(f"{endpoint}: too many requests", 60.0)
        raise GitHubAuthError(f"{endpoint}: GitHub answered {response.status_code}")

    # -- endpoints the controller uses --

    async def team_membership(
        self, org: str, team: str, user: str, etag: str | None = None
    ) -> Reply:
        """200 with ``{role, state}``, 304 (unchanged since ``etag``) or 404 (not a member)."""
        return await self.request(
            "GET",
            f"/orgs/{org}/teams/{team}/memberships/{user}",
            org=org,
            endpoint="team_membership",
            etag=etag,
        )

    async def cancel_run(self, org: str, repository: str, run_id: int) -> Reply:
        return await self.request(
            "POST",
            f"/repos/{repository}/actions/runs/{run_id}/cancel",
            org=org,
            endpoint="cancel_run",
        )

    async def generate_jitconfig(
        self, org: str, name: str, runner_group_id: int, labels: list[str]
    ) -> Reply:
        return await self.request(
            "POST",
            f"/orgs/{org}/actions/runners/generate-jitconfig",
            org=org,
            endpoint="generate_jitconfig",
            body={"name": name, "runner_group_id": runner_group_id, "labels": labels},
        )

    async def runner_groups(self, org: str, page: int = 1) -> Reply:
        """``{total_count, runner_groups: [{id, name, ...}]}``, 100 a page."""
        return await self.request(
            "GET",
            f"/orgs/{org}/actions/runner-groups?per_page=100&page={page}",
            org=org,
            endpoint="runner_groups",
        )

    async def runner_group_repositories(self, org: str, group_id: int, page: int = 1) -> Reply:
        """``{total_count, repositories: [{full_name, ...}]}``: who may use a 'selected' group."""
        return await self.request(
            "GET",
            f"/orgs/{org}/actions/runner-groups/{group_id}/repositories?per_page=100&page={page}",
            org=org,
            endpoint="runner_group_repositories",
        )

    async def runners(self, org: str, page: int = 1) -> Reply:
        """``{total_count, runners: [{id, name, status, busy, runner_group_id, ...}]}``."""
        return await self.request(
            "GET",
            f"/orgs/{org}/actions/runners?per_page=100&page={page}",
            org=org,
            endpoint="runners",
        )

    async def runner(self, org: str, runner_id: int) -> Reply:
        """200 with the runner, or 404 once it is gone (ephemeral runners after their job)."""
        return await self.request(
            "GET", f"/orgs/{org}/actions/runners/{runner_id}", org=org, endpoint="runner"
        )

    async def delete_runner(self, org: str, runner_id: int) -> Reply:
        """204; 404 if already gone; 422 while the runner is running a job."""
        return await self.request(
            "DELETE", f"/orgs/{org}/actions/runners/{runner_id}", org=org, endpoint="runner_delete"
        )

    # -- what the lost-webhook reconciler reads (controller/ingest/reconcile.py) --

    async def app_hook_config(self, app: AppCredentials, etag: str | None = None) -> Reply:
        """``{url, content_type, insecure_ssl}`` of the App's webhook; 404 without one."""
        return await self.app_request(
            app, "GET", "/app/hook/config", endpoint="app_hook_config", etag=etag
        )

    async def app_hook_deliveries(
        self, app: AppCredentials, path: str | None = None, etag: str | None = None
    ) -> Reply:
        """A page of the App hook's deliveries, newest first; ``path`` is a previous
        reply's ``next_path`` (GitHub pages them by cursor)."""
        return await self.app_request(
            app,
            "GET",
            path or "/app/hook/deliveries?per_page=100",
            endpoint="app_hook_deliveries",
            etag=etag,
        )

    async def redeliver_app_hook(self, app: AppCredentials, delivery_id: int) -> Reply:
        """202: GitHub sends the delivery again (same GUID, ``redelivery: true``)."""
        return await self.app_request(
            app,
            "POST",
            f"/app/hook/deliveries/{delivery_id}/attempts",
            endpoint="app_hook_redeliver",
        )

    async def org_hooks(self, org: str, etag: str | None = None) -> Reply:
        """``[{id, active, events, config: {url, ...}}]``: the org's webhooks."""
        return await self.request(
            "GET", f"/orgs/{org}/hooks?per_page=100", org=org, endpoint="org_hooks", etag=etag
        )

    async def org_hook_deliveries(
        self, org: str, hook_id: int, path: str | None = None, etag: str | None = None
    ) -> Reply:
        return await self.request(
            "GET",
            path or f"/orgs/{org}/hooks/{hook_id}/deliveries?per_page=100",
            org=org,
            endpoint="org_hook_deliveries",
            etag=etag,
        )

    async def redeliver_org_hook(self, org: str, hook_id: int, delivery_id: int) -> Reply:
        return await self.request(
            "POST",
            f"/orgs/{org}/hooks/{hook_id}/deliveries/{delivery_id}/attempts",
            org=org,
            endpoint="org_hook_redeliver",
        )

    async def installation_repositories(
        self, org: str, page: int = 1, etag: str | None = None
    ) -> Reply:
        """``{total_count, repositories: [{full_name, ...}]}`` the org's installation reaches."""
        return await self.request(
            "GET",
            f"/installation/repositories?per_page=100&page={page}",
            org=org,
            endpoint="installation_repositories",
            etag=etag,
        )

    async def workflow_runs(
        self, org: str, repository: str, status: str, page: int = 1, etag: str | None = None
    ) -> Reply:
        """``{total_count, workflow_runs: [{id, status, triggering_actor, ...}]}``."""
        return await self.request(
            "GET",
            f"/repos/{repository}/actions/runs?status={status}&per_page=100&page={page}",
            org=org,
            endpoint="workflow_runs",
            etag=etag,
        )

    async def run_jobs(
        self, org: str, repository: str, run_id: int, page: int = 1, etag: str | None = None
    ) -> Reply:
        """``{total_count, jobs: [{id, status, labels, ...}]}`` of the run's latest attempt."""
        return await self.request(
            "GET",
            f"/repos/{repository}/actions/runs/{run_id}/jobs?filter=latest&per_page=100"
            f"&page={page}",
            org=org,
            endpoint="run_jobs",
            etag=etag,
        )


def _parse_time(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
