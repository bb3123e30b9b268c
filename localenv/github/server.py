"""The emulator's HTTP server: GitHub's REST shapes, auth, limits, OIDC and webhooks.

One :class:`GitHubEmulator` is one GitHub instance (``cloud`` serves the API at ``/``,
``ghes`` at ``/api/v3`` like a real Enterprise Server). Endpoints are listed in
docs/github-emulator.md. Tests set the world up through the Python methods; anything
else can use the loopback-only ``/_emulator/*`` control API.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import secrets
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from localenv.fault_proxy import Fault, Faults, Injection
from localenv.github.oidc import OidcIssuer
from localenv.github.state import Invalid, NotFound, World
from localenv.github.webhooks import Delivery, drop, send

GHES_VERSION = "3.17.0"
MAX_EVENTS_WAIT = 30.0  # seconds a runner-events long poll may hold a server thread


@dataclass
class DropRule:
    """``drop_webhooks``: which deliveries are recorded as failed instead of sent."""

    fraction: float
    rng: random.Random
    events: tuple[str, ...]
    redeliveries: bool
    status_code: int
    actions: tuple[str, ...] | None = None
    dropped: int = 0

    def drops(self, delivery: Delivery) -> bool:
        if delivery.event not in self.events or (delivery.redelivery and not self.redeliveries):
            return False
        if self.actions is not None and delivery.action not in self.actions:
            return False
        return self.rng.random() < self.fraction


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] | None = None


@dataclass
class Caller:
    kind: str  # "app" | "installation" | "none"
    app_id: int | None = None
    org: str | None = None
    token: str = ""


Handler = Callable[[Caller, dict[str, str], dict[str, Any], dict[str, list[str]]], Response]


class GitHubEmulator:
    """A stateful GitHub over real HTTP on 127.0.0.1."""

    def __init__(self, kind: str = "cloud", host: str = "github.com", port: int = 0) -> None:
        if kind not in ("cloud", "ghes"):
            raise ValueError("kind is 'cloud' or 'ghes'")
        self.kind = kind
        self.world = World(kind=kind, host=host)
        self.clock_offset = 0.0
        self.apps: dict[int, rsa.RSAPublicKey] = {}
        self.installations: dict[int, tuple[int, str]] = {}  # id -> (app id, org)
        self.tokens: dict[str, tuple[int, float]] = {}  # token -> (installation, expiry)
        self.primary_limit: int | None = None
        self.secondary_points: int | None = None
        self._used: dict[str, list[float]] = defaultdict(list)
        self._points: dict[tuple[str, str], list[tuple[float, int]]] = defaultdict(list)
        self.requests: list[tuple[str, str]] = []
        self.faults = Faults(fullmatch=True)  # by route name: fail(), /_emulator/faults
        self.drop_rule: DropRule | None = None  # drop_webhooks()
        self._id_token_requests: dict[str, dict[str, Any]] = {}
        self._routes: list[tuple[str, re.Pattern[str], str, Handler]] = []
        self._register_routes()
        self._server = _QuietServer(("127.0.0.1", port), self._handler_class())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_url = self.url if kind == "cloud" else f"{self.url}/api/v3"
        issuer = f"{self.url}/_services/token" if kind == "ghes" else f"{self.url}/oidc"
        self.oidc = OidcIssuer(issuer)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._threads = [
            threading.Thread(target=self._server.serve_forever, daemon=True),
            threading.Thread(target=self._dispatch, daemon=True),
        ]

    # -- lifecycle --

    def start(self) -> GitHubEmulator:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.world.close()  # long-polls of runner events return now, not at their timeout
        self._server.shutdown()
        self._server.server_close()

    def now(self) -> float:
        return time.time() + self.clock_offset

    def advance(self, seconds: float) -> None:
        """Move the emulator's clock (token expiry, rate-limit windows) forward."""
        self.clock_offset += seconds

    # -- setup API for tests and the local twin --

    def add_app(self, app_id: int) -> str:
        """Register a GitHub App; returns its private key (PEM) for the client to sign with."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.apps[app_id] = key.public_key()
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    def add_installation(self, app_id: int, org: str, installation_id: int | None = None) -> int:
        self.world.add_org(org)
        installation_id = installation_id or self.world.next_id()
        self.installations[installation_id] = (app_id, org)
        return installation_id

    def job_token_request(self, repository: str, **claims: Any) -> tuple[str, str]:
        """What a job with ``permissions: id-token: write`` gets in its environment:
        ``ACTIONS_ID_TOKEN_REQUEST_URL`` and ``ACTIONS_ID_TOKEN_REQUEST_TOKEN``."""
        bearer = secrets.token_urlsafe(24)
        self._id_token_requests[bearer] = {"repository": repository, **claims}
        return f"{self.url}/_emulator/idtoken?api-version=2.0", bearer

    def enable_rate_limits(
        self, primary: int | None = 5000, secondary_points: int | None = 900
    ) -> None:
        self.primary_limit, self.secondary_points = primary, secondary_points

    def fail(
        self,
        route: str,
        status: int | tuple[int, ...] = 502,
        *,
        times: int | None = None,
        share: float = 1.0,
        method: str | None = None,
        retry_after: int | None = None,
        after: bool = False,
    ) -> Fault:
        """Answer ``status`` instead of serving requests to ``route`` (a route name such
        as ``jitconfig``, or a regex over the whole name): all, a share (0.5: the 1st,
        3rd, … match) or the next ``times``. The request is neither served nor charged
        against the limits, unless ``after``: then it is served and its reply is lost."""
        return self.faults.add(Fault(status, method, route, times, share, retry_after, after))

    def clear_faults(self) -> None:
        """Remove every ``fail`` rule and stop ``drop_webhooks``."""
        self.faults.clear()
        self.drop_rule = None

    def drop_webhooks(
        self,
        fraction: float,
        seed: int = 0,
        *,
        events: tuple[str, ...] = ("workflow_job",),
        actions: tuple[str, ...] | None = None,
        redeliveries: bool = False,
        status_code: int = 503,
    ) -> DropRule:
        """Record ``fraction`` of the deliveries of ``events`` (and ``actions``, if given)
        as failed (``status_code``, its reason as ``status``) instead of sending them,
        chosen by a generator seeded with ``seed``; redeliveries go through unless
        ``redeliveries``. Listed and
        redeliverable like any failed delivery; ``clear_faults()`` stops it."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("fraction is between 0 and 1")
        if not 400 <= status_code <= 599:
            raise ValueError("status_code is a 4xx or 5xx")
        self.drop_rule = DropRule(
            fraction,
            random.Random(seed),
            tuple(events),
            redeliveries,
            status_code,
            None if actions is None else tuple(actions),
        )
        return self.drop_rule

    def dropped_deliveries(self) -> list[Delivery]:
        """Every delivery ``drop_webhooks`` recorded as failed instead of sending."""
        with self.world.lock:
            return [d for d in self.world.deliveries if d.dropped]

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every pending webhook delivery has been attempted."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.world.lock:
                pending = bool(self.world.outbox)
            if not pending and self._idle.is_set():
                return
            self._wake.set()
            time.sleep(0.01)
        raise TimeoutError("webhook deliveries still pending")

    # -- webhooks --

    def _dispatch(self) -> None:
        headers = (
            {}
            if self.kind == "cloud"
            else {
                "X-GitHub-Enterprise-Host": self.world.host,
                "X-GitHub-Enterprise-Version": GHES_VERSION,
            }
        )
        while not self._stop.is_set():
            self._idle.set()
            self._wake.wait(0.05)
            self._wake.clear()
            batch = self.world.take_outbox()
            if batch:
                self._idle.clear()
                for hook, delivery in batch:
                    rule = self.drop_rule
                    if rule is not None and rule.drops(delivery):
                        drop(delivery, rule.status_code)
                        rule.dropped += 1
                        continue
                    send(hook, delivery, headers)

    def _changed(self) -> None:
        self._idle.clear()
        self._wake.set()

    # -- auth and limits --

    def _caller(self, header: str | None) -> Caller:
        if not header:
            return Caller("none")
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        if credential.count(".") == 2:  # a JWT: the App itself
            try:
                unverified = jwt.decode(credential, options={"verify_signature": False})
                app_id = int(unverified["iss"])
                key = self.apps[app_id]
                claims = jwt.decode(
                    credential,
                    key,
                    algorithms=["RS256"],
                    options={"verify_exp": False, "verify_iat": False},
                )
            except (jwt.PyJWTError, KeyError, ValueError):
                raise HttpError(401, "A JSON web token could not be decoded") from None
            now = self.now()
            if claims["exp"] < now or claims["exp"] - now > 600 + 60 or claims["iat"] > now + 60:
                raise HttpError(
                    401, "'Expiration time' claim ('exp') is too far in the future or expired"
                )
            return Caller("app", app_id=app_id, token=credential)
        if scheme.lower() not in ("token", "bearer"):
            raise HttpError(401, "Bad credentials")
        entry = self.tokens.get(credential)
        if entry is None or entry[1] <= self.now():
            raise HttpError(401, "Bad credentials")
        app_id, org = self.installations[entry[0]]
        return Caller("installation", app_id=app_id, org=org, token=credential)

    def _limit_headers(self, caller: Caller) -> dict[str, str]:
        limit = self.primary_limit or 5000
        window_start = self.now() - 3600
        used = len([t for t in self._used[caller.token] if t > window_start])
        reset = int(min(self._used[caller.token] or [self.now()]) + 3600)
        return {
            "x-ratelimit-limit": str(limit),
            "x-ratelimit-remaining": str(max(0, limit - used)),
            "x-ratelimit-used": str(used),
            "x-ratelimit-reset": str(reset),
            "x-ratelimit-resource": "core",
        }

    def _charge(self, caller: Caller, method: str, route: str, *, dry_run: bool = False) -> None:
        """Count a request against the limits, or raise the limit's error; ``dry_run``
        only checks (a mutation over a limit is refused before it changes anything)."""
        if caller.kind == "none":
            return
        now = self.now()
        if self.primary_limit is not None:
            recent = [t for t in self._used[caller.token] if t > now - 3600]
            self._used[caller.token] = recent
            if len(recent) >= self.primary_limit:
                raise HttpError(
                    403, "API rate limit exceeded for installation.", self._limit_headers(caller)
                )
        if self.secondary_points is not None:
            points = 1 if method == "GET" else 5
            window = [(t, p) for t, p in self._points[(caller.token, route)] if t > now - 60]
            if sum(p for _, p in window) + points > self.secondary_points:
                oldest = min((t for t, _ in window), default=now)
                raise HttpError(
                    429 if method == "GET" else 403,
                    "You have exceeded a secondary rate limit. Please wait a few "
                    "minutes before you try again.",
                    {"retry-after": str(max(1, int(oldest + 60 - now) + 1))},
                )
            if not dry_run:
                window.append((now, points))
                self._points[(caller.token, route)] = window
        if not dry_run:
            self._used[caller.token].append(now)

    def _require(self, caller: Caller, kind: str, org: str | None = None) -> None:
        if caller.kind != kind:
            raise HttpError(
                401 if caller.kind == "none" else 403,
                "Requires authentication"
                if caller.kind == "none"
                else f"This endpoint needs a{'n' if kind == 'app' else ''} {kind} token",
            )
        if org is not None and caller.org != org:
            raise HttpError(404, "Not Found")  # GitHub hides other orgs' resources

    # -- routes --

    def _route(self, method: str, pattern: str, name: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self._routes.append((method, re.compile(f"^{pattern}$"), name, handler))
            return handler

        return register

    def _register_routes(self) -> None:
        route, world = self._route, self.world
        org_part, num = r"(?P<org>[A-Za-z0-9-]+)", r"(?P<id>\d+)"

        @route("POST", rf"/app/installations/{num}/access_tokens", "access_tokens")
        def access_token(caller: Caller, p: dict[str, str], _b: Any, _q: Any) -> Response:
            self._require(caller, "app")
            installation = self.installations.get(int(p["id"]))
            if installation is None or installation[0] != caller.app_id:
                raise HttpError(404, "Not Found")
            token = "ghs_" + secrets.token_urlsafe(27)
            expires = self.now() + 3600
            self.tokens[token] = (int(p["id"]), expires)
            return Response(
                201,
                {
                    "token": token,
                    "expires_at": _iso(expires),
                    "permissions": {"organization_self_hosted_runners": "write", "members": "read"},
                    "repository_selection": "all",
                },
            )

        @route("GET", r"/app", "app")
        def app(caller: Caller, _p: Any, _b: Any, _q: Any) -> Response:
            self._require(caller, "app")
            return Response(
                200,
                {
                    "id": caller.app_id,
                    "slug": f"app-{caller.app_id}",
                    "name": f"app {caller.app_id}",
                },
            )

        @route("GET", rf"/orgs/{org_part}/installation", "org_installation")
        def org_installation(caller: Caller, p: dict[str, str], _b: Any, _q: Any) -> Response:
            self._require(caller, "app")
            for installation_id, (app_id, org) in self.installations.items():
                if app_id == caller.app_id and org == p["org"]:
                    return Response(
                        200, {"id": installation_id, "app_id": app_id, "account": {"login": org}}
                    )
            raise HttpError(404, "Not Found")

        @route("GET", rf"/orgs/{org_part}", "org")
        def org(caller: Caller, p: dict[str, str], _b: Any, _q: Any) -> Response:
            self._require(caller, "installation", p["org"])
            return Response(
                200,
                {
                    "login": p["org"],
                    "id": world.org_id(p["org"]),
                    "url": f"{self.api_url}/orgs/{p['org']}",
                    "type": "Organization",
                },
            )

        @route("GET", rf"/orgs/{org_part}/teams/(?P<team>[^/]+)", "team")
        def team(caller: Caller, p: dict[str, str], _b: Any, _q: Any) -> Response:
            self._require(caller, "installation", p["org"])
            t = world.team(p["org"], p["team"])
            return Response(
                200,
                {
                    "id": t.id,
                    "slug": t.slug,
                    "name": t.slug,
                    "url": f"{self.api_url}/orgs/{t.org}/teams/{t.slug}",
                    "parent": {"slug": t.parent} if t.parent else None,
                },
            )

        @route(
            "GET",
            rf"/orgs/{org_part}/teams/(?P<team>[^/]+)/memberships/(?P<user>[^/]+)",
            "membership",
        )
        def membership(caller: Caller, p: dict[str, str], _b: Any, _q: Any) -> Response:
            self._require(caller, "installation", p["org"])
            return Response(200, world.membership(p["org"], p["team"], p["user"]))

        @route("GET", rf"/orgs/{org_part}/actions/runner-groups", "runner_groups")
        def groups(caller: Caller, p: dict[str, str], _b: Any, _q: Any) -> Response:
            self._require(caller, "installation", p["org"])
            items = [g.as_json() for g in world.org_groups(p["org"])]
            return Response(200, {"total_count": len(items), "runner_groups": items})

        @route(
            "GET",
            rf"/orgs/{org_part}/actions/runner-groups/{num}/repositories",
            "runner_group_repositories",
        )
        def group_repositories(
            caller: Caller, p: dict[str, str], _b: Any, query: dict[str, list[str]]
        ) -> Response:
            self._require(caller, "installation", p["org"])
            group = world.groups.get(int(p["id"]))
            if group is None or group.org != p["org"]:
                raise HttpError(404, "Not Found")
            per_page = min(100, int(query.get("per_page", ["30"])[0]))
            page = max(1, int(query.get("page", ["1"])[0]))
            names = list(group.selected_repositories)
            items = [
                {"full_name": name, "name": name.split("/", 1)[1]}
                for name in names[(page - 1) * per_page : page * per_page]
            ]
            return Response(200, {"total_count": len(names), "repositories": items})

        @route("POST", rf"/orgs/{org_part}/actions/runners/generate-jitconfig", "jitconfig")
        def jit(caller: Caller, p: dict[str, str], body: dict[str, Any], _q: Any) -> Response:
            self._require(caller, "installation", p["org"])
            return Response(201, world.generate_jit(p["org"], body))

        @route("POST", rf"/orgs/{org_part}/actions/runners/registration-token", "reg_token")
        def registration(caller: Caller, p: dict[str, str], _b: Any, _q: Any) -> Response:
            self._require(caller, "installation", p["org"])
            token, expires = world.registration_token(p["org"], self.now())
            return Response(201, {"token": token, "expires_at": _iso(expires)})

        @route("GET", rf"/orgs/{org_part}/actions/runners", "runners")
        def runners(
            caller: Caller, p: dict[str, str], _b: Any, q: dict[str, list[str]]
        ) -> Response:
            self._require(caller, "installation", p["org"])
            per_page = min(100, int(q.get("per_page", ["30"])[0]))
            page = max(1, int(q.get("page", ["1"])[0]))
            items = world.org_runners(p["org"])
            chunk = items[(page - 1) * per_page : page * per_page]
            headers = {}
            if page * per_page < len(items):
                headers["Link"] = (
                    f"<{self.api_url}/orgs/{p['org']}/actions/runners?per_page="
                    f'{per_page}&page={page + 1}>; rel="next"'
                )
            return Response(
                200, {"total_count": len(items), "runners": [r.as_json() for r in chunk]}, headers
            )

        @route("GET", rf"/orgs/{org_part}/actions/runners/{num}", "runner")
        def runner(caller: Caller, p: dict[str, str], _b: Any, _q: Any) -> Response:
            self._require(caller, "installation", p["org"])
            found = world.runners.get(int(p["id"]))
            if found is None or found.org != p["org"]:
                raise HttpError(404, "Not Found")
            return Response(200, found.as_json())

        @route("DELETE", rf"/orgs/{org_part}/actions/runners/{num}", "runner_delete")
        def delete_runner(caller: Caller, p: dict[str, str], _b: Any, _q: Any) -> Response:
            self._require(caller, "installation", p["org"])
            world.delete_runner(p["org"], int(p["id"]))
            return Response(204)

        repo = rf"/repos/{org_part}/(?P<repo>[A-Za-z0-9._-]+)"

        @route("GET", rf"{repo}/actions/jobs/{num}", "job")
        def job(caller: Caller, p: dict[str, str], _b: Any, _q: Any) -> Response:
            self._require(caller, "installation", p["org"])
            found = world.jobs.get(int(p["id"]))
            if found is None or found.repository != f"{p['org']}/{p['repo']}":
                raise HttpError(404, "Not Found")
            return Response(200, world.job_json(found))

        @route("GET", rf"{repo}/actions/runs", "runs")
        def runs(
            caller: Caller, p: dict[str, str], _b: Any, query: dict[str, list[str]]
        ) -> Response:
            self._require(caller, "installation", p["org"])
            status = query.get("status", [None])[0]
            if status not in (None, "queued", "in_progress", "completed"):
                raise Invalid(f"status {status!r} is not supported here")
            per_page = min(100, max(1, int(query.get("per_page", ["30"])[0])))
            page = max(1, int(query.get("page", ["1"])[0]))
            items = world.workflow_runs(f"{p['org']}/{p['repo']}", status)
            chunk = items[(page - 1) * per_page : page * per_page]
            headers = {}
            if page * per_page < len(items):
                headers["Link"] = (
                    f"<{self.api_url}/repos/{p['org']}/{p['repo']}/actions/runs?status="
                    f'{status or ""}&per_page={per_page}&page={page + 1}>; rel="next"'
                )
            return Response(200, {"total_count": len(items), "workflow_runs": chunk}, headers)

        @route("GET", rf"{repo}/actions/runs/{num}/jobs", "run_jobs")
        def run_jobs(
            caller: Caller, p: dict[str, str], _b: Any, query: dict[str, list[str]]
        ) -> Response:
            self._require(caller, "installation", p["org"])
            per_page = min(100, max(1, int(query.get("per_page", ["30"])[0])))
            page = max(1, int(query.get("page", ["1"])[0]))
            items = world.run_jobs(f"{p['org']}/{p['repo']}", int(p["id"]))
            chunk = items[(page - 1) * per_page : page * per_page]
            headers = {}
            if page * per_page < len(items):
                headers["Link"] = (
                    f"<{self.api_url}/repos/{p['org']}/{p['repo']}/actions/runs/{p['id']}"
                    f'/jobs?per_page={per_page}&page={page + 1}>; rel="next"'
                )
            return Response(200, {"total_count": len(items), "jobs": chunk}, headers)

        @route("GET", r"/installation/repositories", "installation_repositories")
        def installation_repositories(
            caller: Caller, _p: Any, _b: Any, query: dict[str, list[str]]
        ) -> Response:
            self._require(caller, "installation")
            assert caller.org is not None
            per_page = min(100, max(1, int(query.get("per_page", ["30"])[0])))
            page = max(1, int(query.get("page", ["1"])[0]))
            names = world.org_repositories(caller.org)
            items = [
                {
                    "id": abs(hash(name)) % 10**8,
                    "name": name.split("/", 1)[1],
                    "full_name": name,
                    "owner": {"login": caller.org},
                    "private": True,
                }
                for name in names[(page - 1) * per_page : page * per_page]
            ]
            headers = {}
            if page * per_page < len(names):
                headers["Link"] = (
                    f"<{self.api_url}/installation/repositories?per_page={per_page}"
                    f'&page={page + 1}>; rel="next"'
                )
            body = {"total_count": len(names), "repository_selection": "all"}
            return Response(200, {**body, "repositories": items}, headers)

        @route("POST", rf"{repo}/actions/runs/{num}/cancel", "cancel")
        def cancel(caller: Caller, p: dict[str, str], _b: Any, _q: Any) -> Response:
            self._require(caller, "installation", p["org"])
            world.cancel_run(int(p["id"]))
            self._changed()
            return Response(202, {})

        def deliveries_page(path: str, hook_ids: set[int], query: dict[str, list[str]]) -> Response:
            """Newest first, ``per_page`` (≤ 100, default 30) a page; the next page by an
            opaque ``cursor`` in ``Link: rel="next"``, as GitHub pages deliveries."""
            per_page = min(100, max(1, int(query.get("per_page", ["30"])[0])))
            cursor = query.get("cursor", [""])[0]
            below = int(cursor.removeprefix("v1_")) if cursor else None
            with world.lock:
                items = [
                    d
                    for d in reversed(world.deliveries)
                    if d.hook_id in hook_ids and (below is None or d.id < below)
                ]
            page = items[:per_page]
            headers = {}
            if len(items) > per_page:
                headers["Link"] = (
                    f"<{self.api_url}{path}?per_page={per_page}&cursor=v1_{page[-1].id}>; "
                    'rel="next"'
                )
            return Response(200, [d.summary() for d in page], headers)

        @route("GET", rf"/orgs/{org_part}/hooks", "org_hooks")
        def org_hooks(caller: Caller, p: dict[str, str], _b: Any, _q: Any) -> Response:
            self._require(caller, "installation", p["org"])
            world.org_id(p["org"])
            hooks = [world.hooks[h] for h, org in world.hook_orgs.items() if org == p["org"]]
            return Response(
                200,
                [
                    {
                        "id": hook.id,
                        "type": "Organization",
                        "name": "web",
                        "active": True,
                        "events": list(hook.events),
                        "config": {
                            "url": hook.url,
                            "content_type": "json",
                            "insecure_ssl": "0",
                        },
                        "url": f"{self.api_url}/orgs/{p['org']}/hooks/{hook.id}",
                        "deliveries_url": f"{self.api_url}/orgs/{p['org']}/hooks/{hook.id}"
                        "/deliveries",
                    }
                    for hook in sorted(hooks, key=lambda h: h.id)
                ],
            )

        @route("GET", rf"/orgs/{org_part}/hooks/(?P<hook>\d+)/deliveries", "org_deliveries")
        def org_deliveries(
            caller: Caller, p: dict[str, str], _b: Any, query: dict[str, list[str]]
        ) -> Response:
            self._require(caller, "installation", p["org"])
            if world.hook_orgs.get(int(p["hook"])) != p["org"]:
                raise HttpError(404, "Not Found")
            return deliveries_page(
                f"/orgs/{p['org']}/hooks/{p['hook']}/deliveries", {int(p["hook"])}, query
            )

        @route(
            "POST",
            rf"/orgs/{org_part}/hooks/(?P<hook>\d+)/deliveries/{num}/attempts",
            "org_redeliver",
        )
        def org_redeliver(caller: Caller, p: dict[str, str], _b: Any, _q: Any) -> Response:
            self._require(caller, "installation", p["org"])
            if world.hook_orgs.get(int(p["hook"])) != p["org"]:
                raise HttpError(404, "Not Found")
            world.redeliver(int(p["id"]), int(p["hook"]))
            self._changed()
            return Response(202, {})

        @route("GET", r"/app/hook/config", "app_hook_config")
        def app_hook_config(caller: Caller, _p: Any, _b: Any, _q: Any) -> Response:
            self._require(caller, "app")
            app_hooks = [h for h in world.hooks.values() if h.id not in world.hook_orgs]
            if not app_hooks:
                raise HttpError(404, "Not Found")
            return Response(
                200, {"content_type": "json", "insecure_ssl": "0", "url": app_hooks[-1].url}
            )

        @route("GET", r"/app/hook/deliveries", "app_deliveries")
        def app_deliveries(
            caller: Caller, _p: Any, _b: Any, query: dict[str, list[str]]
        ) -> Response:
            self._require(caller, "app")
            app_hooks = {h for h in world.hooks if h not in world.hook_orgs}
            return deliveries_page("/app/hook/deliveries", app_hooks, query)

        @route("POST", rf"/app/hook/deliveries/{num}/attempts", "app_redeliver")
        def app_redeliver(caller: Caller, p: dict[str, str], _b: Any, _q: Any) -> Response:
            self._require(caller, "app")
            world.redeliver(int(p["id"]), None, app_hook=True)
            self._changed()
            return Response(202, {})

        @route("GET", r"/rate_limit", "rate_limit")
        def rate_limit(caller: Caller, _p: Any, _b: Any, _q: Any) -> Response:
            headers = self._limit_headers(caller)
            core = {
                "limit": int(headers["x-ratelimit-limit"]),
                "remaining": int(headers["x-ratelimit-remaining"]),
                "used": int(headers["x-ratelimit-used"]),
                "reset": int(headers["x-ratelimit-reset"]),
            }
            return Response(200, {"resources": {"core": core}, "rate": core})

    # -- HTTP plumbing --

    def _serve(self, method: str, raw_path: str, headers: Any, body: bytes) -> Response:
        parts = urlsplit(raw_path)
        path, query = parts.path, parse_qs(parts.query)
        issuer_path = urlsplit(self.oidc.issuer).path
        if method == "GET" and path == f"{issuer_path}/.well-known/openid-configuration":
            return Response(200, self.oidc.discovery())
        if method == "GET" and path == f"{issuer_path}/.well-known/jwks":
            return Response(200, self.oidc.jwks())
        if method == "GET" and path == "/_emulator/idtoken":
            return self._id_token(headers.get("Authorization", ""), query)
        if path.startswith("/_emulator/"):
            return self._control(method, path.removeprefix("/_emulator/"), body, query)
        prefix = "" if self.kind == "cloud" else "/api/v3"
        if not path.startswith(prefix):
            raise HttpError(404, "Not Found")
        path = path[len(prefix) :] or "/"
        for route_method, pattern, name, handler in self._routes:
            match = pattern.match(path)
            if match and route_method == method:
                injected = self.faults.check(method, name)
                if injected is not None and not injected.fault.after:
                    raise _fault_error(injected)  # before auth and limits, like a gateway
                try:
                    result = self._answer(method, name, handler, match, headers, body, query)
                except (HttpError, NotFound, Invalid):
                    if injected is None:
                        raise
                if injected is not None:  # served, and the reply is lost on its way back
                    raise _fault_error(injected)
                return result
        raise HttpError(404, "Not Found")

    def _answer(
        self,
        method: str,
        name: str,
        handler: Handler,
        match: re.Match[str],
        headers: Any,
        body: bytes,
        query: dict[str, list[str]],
    ) -> Response:
        """One matched route: auth, the handler, ETags and limits."""
        caller = self._caller(headers.get("Authorization"))
        if method != "GET" and name != "rate_limit":
            # Like GitHub: a mutation over a limit is refused and does nothing (no JIT
            # registration behind a 403), not done and then refused.
            self._charge(caller, method, name, dry_run=True)
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            raise HttpError(400, "Problems parsing JSON") from None
        etag_ok = method == "GET" and headers.get("If-None-Match")
        try:
            result = handler(caller, match.groupdict(), payload, query)
        except (NotFound, Invalid):
            self._charge(caller, method, name)  # GitHub counts a 404 or 422 too
            raise
        if method == "GET" and result.status == 200:
            etag = (
                'W/"'
                + hashlib.sha1(json.dumps(result.body, sort_keys=True).encode()).hexdigest()
                + '"'
            )
            result.headers = {**(result.headers or {}), "ETag": etag}
            if etag_ok == etag:  # a 304 costs nothing against the limit
                return Response(304, None, {**result.headers, **self._limit_headers(caller)})
        if name != "rate_limit":  # GitHub does not count /rate_limit itself
            self._charge(caller, method, name)
        if method != "GET":
            self._changed()
        result.headers = {
            **(result.headers or {}),
            **(self._limit_headers(caller) if caller.kind != "none" else {}),
        }
        return result

    def _id_token(self, authorization: str, query: dict[str, list[str]]) -> Response:
        """The Actions runtime's token endpoint: bearer request token in, ``{value}`` out."""
        request = self._id_token_requests.get(authorization.removeprefix("Bearer ").strip())
        if request is None:
            raise HttpError(401, "invalid request token")
        audience = query.get("audience", [f"https://github.com/{request['repository']}"])[0]
        claims = self.oidc.claims(
            request["repository"],
            audience=audience,
            now=self.now(),
            **{k: v for k, v in request.items() if k != "repository"},
        )
        return Response(200, {"count": 1, "value": self.oidc.mint(claims)})

    def _control(
        self, method: str, path: str, body: bytes, query: dict[str, list[str]]
    ) -> Response:
        data = json.loads(body) if body else {}
        world = self.world
        if method == "POST" and path == "oidc/token":
            claims = self.oidc.claims(
                data.pop("repository"), audience=data.pop("audience"), now=self.now(), **data
            )
            return Response(200, {"value": self.oidc.mint(claims)})
        if method == "POST" and path == "jobs":
            job = world.queue_job(
                data.pop("org"),
                data.pop("repository"),
                data.pop("labels"),
                data.pop("sender"),
                **data,
            )
            self._changed()
            return Response(201, world.job_json(job))
        if method == "POST" and (m := re.fullmatch(r"jobs/(\d+)/complete", path)):
            job = world.complete_job(int(m.group(1)), data.get("conclusion", "success"))
            self._changed()
            return Response(200, world.job_json(job))
        if method == "POST" and path == "runners/start":
            runner = world.start_runner(data["encoded_jit_config"])
            self._changed()
            return Response(200, runner.as_json())
        if method == "GET" and path == "runners/events":
            # A long poll: one request per batch of events instead of one per runner.
            after = int(query.get("after", ["0"])[0])
            wait = min(MAX_EVENTS_WAIT, max(0.0, float(query.get("wait", ["0"])[0])))
            limit = min(5000, max(1, int(query.get("limit", ["1000"])[0])))
            events = world.runner_events(after, wait, limit)
            return Response(200, [event.as_json() for event in events])
        if method == "PUT" and path == "memberships":
            world.set_membership(
                data["org"],
                data["team"],
                data["user"],
                role=data.get("role", "member"),
                state=data.get("state", "active"),
            )
            return Response(204)
        if method == "POST" and path == "clock":
            self.advance(float(data["advance"]))
            return Response(204)
        if method == "POST" and path == "faults":
            status = data.pop("status", 502)
            fault = self.fail(
                data.pop("route"),
                tuple(status) if isinstance(status, list) else int(status),
                times=data.pop("times", None),
                share=float(data.pop("share", 1.0)),
                method=data.pop("method", None),
                retry_after=data.pop("retry_after", None),
                after=bool(data.pop("after", False)),
            )
            return Response(201, fault.describe())
        if method == "GET" and path == "faults":
            return Response(200, [f.describe() for f in list(self.faults.rules)])
        if method == "DELETE" and path == "faults":
            self.clear_faults()
            return Response(204)
        if method == "POST" and path == "webhooks/drop":
            rule = self.drop_webhooks(
                float(data["fraction"]),
                int(data.get("seed", 0)),
                events=tuple(data.get("events", ("workflow_job",))),
                actions=tuple(data["actions"]) if data.get("actions") else None,
                redeliveries=bool(data.get("redeliveries", False)),
                status_code=int(data.get("status_code", 503)),
            )
            return Response(201, {"fraction": rule.fraction, "events": list(rule.events)})
        if method == "GET" and path == "webhooks/dropped":
            return Response(200, [d.summary() for d in self.dropped_deliveries()])
        if method == "DELETE" and path == "webhooks/drop":
            self.drop_rule = None
            return Response(204)
        raise HttpError(404, "Not Found")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        emulator = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                emulator.requests.append((self.command, self.path))
                try:
                    response = emulator._serve(self.command, self.path, self.headers, body)
                except HttpError as error:
                    response = Response(
                        error.status,
                        {
                            "message": error.message,
                            "documentation_url": "https://docs.github.com/rest",
                        },
                        error.headers,
                    )
                except NotFound:
                    response = Response(404, {"message": "Not Found"})
                except Invalid as error:
                    response = Response(422, {"message": str(error)})
                except (KeyError, TypeError, ValueError) as error:
                    response = Response(400, {"message": f"bad request: {error}"})
                payload = b"" if response.body is None else json.dumps(response.body).encode()
                self.send_response(response.status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                if emulator.kind == "ghes":
                    self.send_header("X-GitHub-Enterprise-Version", GHES_VERSION)
                for key, value in (response.headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if response.status != 304:
                    self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: tests read emulator.requests instead

        return RequestHandler


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (a long poll its owner stopped) is no emulator error.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def _fault_error(injected: Injection) -> HttpError:
    """What GitHub's edge answers: a 5xx, or a secondary limit (403/429 + retry-after)."""
    status, retry_after = injected.status, injected.fault.retry_after
    headers = {} if retry_after is None else {"retry-after": str(retry_after)}
    if status in (403, 429) and retry_after is not None:
        message = (
            "You have exceeded a secondary rate limit. Please wait a few minutes before "
            "you try again."
        )
    else:
        message = {502: "Server Error", 503: "Service Unavailable", 504: "Gateway Timeout"}.get(
            status, "Internal Server Error" if status >= 500 else "Injected fault"
        )
    return HttpError(status, message, headers)


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))
