"""The one module of the controller that talks to the Kubernetes API.

Configuration (kubeconfig or in-cluster service account) is loaded by the official
``kubernetes`` package; requests go over one pooled ``httpx.AsyncClient`` as plain JSON.
The official clients (``kubernetes`` and ``kubernetes_asyncio``) turn every object into
generated model classes: for a watch over thousands of runner pods that is most of the
CPU and memory the provisioner would spend, and neither has client-side QPS/burst in
Python (ADR 0005). Here:

- a token bucket (``qps``, ``burst``) paces every request, and a semaphore bounds how many
  are in flight — client-go's hidden 5/10 default is the usual limiter at scale;
- 429 (honouring ``Retry-After``), 5xx, 409 on delete/patch of a changed object and
  connection errors are retried with exponential backoff and jitter, up to a limit;
- :meth:`KubeApi.watch` lists, then watches from the list's ``resourceVersion`` with
  bookmarks, resumes from the last version seen, and relists on 410 Gone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from controller.metrics import Metrics

log = logging.getLogger(__name__)
Json = dict[str, Any]


class KubeError(Exception):
    """The API server refused a request (or could not be reached) after retries."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    """409: the object exists already (create) or changed meanwhile (update)."""


class Gone(KubeError):
    """410: a watch's resourceVersion is too old; relist."""


@dataclass(frozen=True)
class KubeConfig:
    server: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    token: str | None = None
    token_file: str | None = None  # in-cluster: bound tokens rotate, so re-read it
    verify: bool = True

    @classmethod
    def load(cls, kubeconfig: Path | None) -> KubeConfig:
        """From a kubeconfig file, or in-cluster (service account) when none is given."""
        from kubernetes import client, config

        conf = client.Configuration()
        token_file = None
        if kubeconfig is not None:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig), client_configuration=conf
            )
        else:
            config.load_incluster_config(client_configuration=conf)  # type: ignore[no-untyped-call]
            token_file = "/var/run/secrets/kubernetes.io/serviceaccount/token"
        bearer = (conf.api_key or {}).get("authorization") or (conf.api_key or {}).get(
            "BearerToken"
        )
        # The in-cluster loader writes "bearer <token>" (lower case), kubeconfigs "Bearer".
        token = bearer.split(" ", 1)[-1].strip() if bearer else None
        return cls(
            server=conf.host.rstrip("/"),
            ca_file=conf.ssl_ca_cert,
            cert_file=conf.cert_file,
            key_file=conf.key_file,
            token=token,
            token_file=token_file,
            verify=bool(conf.verify_ssl),
        )

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.verify:
            return False
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file and self.key_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


class RateLimiter:
    """client-go's token bucket: ``burst`` requests at once, then ``qps`` a second."""

    def __init__(self, qps: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.qps, self.burst, self.clock = qps, burst, clock
        self.tokens, self.updated = float(burst), clock()

    async def take(self) -> None:
        while True:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.qps)
            self.updated = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep((1 - self.tokens) / self.qps)


RETRYABLE = {429, 500, 502, 503, 504}


class KubeApi:
    def __init__(
        self,
        config: KubeConfig,
        *,
        qps: float = 200.0,
        burst: int = 400,
        concurrency: int = 64,
        max_attempts: int = 6,
        backoff_base: float = 0.1,
        metrics: Metrics | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.limiter = RateLimiter(qps, burst)
        self.inflight = asyncio.Semaphore(concurrency)
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.metrics = metrics
        self._token: tuple[str | None, float] = (config.token, time.monotonic())
        limits = httpx.Limits(
            max_connections=concurrency + 16, max_keepalive_connections=concurrency
        )
        self.http = httpx.AsyncClient(
            base_url=config.server,
            verify=config.ssl_context(),
            limits=limits,
            timeout=httpx.Timeout(30.0, connect=5.0),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    def _headers(self) -> dict[str, str]:
        token, read_at = self._token
        if self.config.token_file and time.monotonic() - read_at > 60:
            token = Path(self.config.token_file).read_text().strip()
            self._token = (token, time.monotonic())
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    # -- requests with pacing and retries --

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Json | list[Any] | None = None,
        params: dict[str, str] | None = None,
        content_type: str | None = None,
        resource: str = "",
        retry_conflict: bool = False,
        guard: Callable[[], bool] | None = None,
    ) -> Json:
        """One API call, retried on 429/5xx and transport errors. With ``guard``, every
        attempt (retries too) is sent only while ``guard()`` is true — a write for a scale
        set whose Lease this replica no longer holds is never sent late."""
        content = None if body is None else json.dumps(body, separators=(",", ":"))
        headers = self._headers()
        if content_type:
            headers["Content-Type"] = content_type
        verb = method.lower()
        for attempt in range(1, self.max_attempts + 1):
            await self.limiter.take()
            started = time.perf_counter()
            try:
                async with self.inflight:
                    if guard is not None and not guard():
                        raise KubeError(0, f"{method} {path}: not sent, the Lease is gone")
                    response = await self.http.request(
                        method, path, content=content, params=params, headers=headers
                    )
            except httpx.TransportError as error:
                self._observe(verb, resource, started, "unreachable")
                if attempt == self.max_attempts:
                    raise KubeError(0, f"{method} {path}: {type(error).__name__}") from None
                await self._backoff(attempt, None)
                continue
            status = response.status_code
            self._observe(verb, resource, started, None if status < 400 else str(status))
            if status < 400:
                return response.json() if response.content else {}
            retry = status in RETRYABLE or (status == 409 and retry_conflict)
            if retry and attempt < self.max_attempts:
                await self._backoff(attempt, response.headers.get("retry-after"))
                continue
            raise _error(status, method, path, response.text)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _observe(self, verb: str, resource: str, started: float, error: str | None) -> None:
        if self.metrics is None:
            return
        self.metrics.kube_api_seconds.labels(verb, resource).observe(time.perf_counter() - started)
        if error is not None:
            self.metrics.kube_api_errors.labels(verb, resource, error).inc()

    async def _backoff(self, attempt: int, retry_after: str | None) -> None:
        delay = self.backoff_base * 2 ** (attempt - 1)
        if retry_after and retry_after.isdigit():
            delay = max(delay, float(retry_after))
        await asyncio.sleep(min(delay, 10.0) * random.uniform(0.8, 1.2))

    # -- the calls the provisioner makes --

    async def create(
        self,
        namespace: str,
        resource: str,
        body: Json,
        *,
        guard: Callable[[], bool] | None = None,
    ) -> Json:
        return await self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/{resource}",
            body=body,
            resource=resource,
            guard=guard,
        )

    async def get(self, namespace: str, resource: str, name: str) -> Json:
        return await self.request(
            "GET", f"/api/v1/namespaces/{namespace}/{resource}/{quote(name)}", resource=resource
        )

    async def delete(
        self, namespace: str, resource: str, name: str, *, uid: str | None = None
    ) -> bool:
        """Delete one object (only that ``uid`` if given); False when it was gone already."""
        body: Json = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "propagationPolicy": "Background",
        }
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self.request(
                "DELETE",
                f"/api/v1/namespaces/{namespace}/{resource}/{quote(name)}",
                body=body,
                resource=resource,
            )
        except NotFound:
            return False
        except Conflict:
            return False  # the uid precondition failed: a different object has that name now
        return True

    async def patch(self, namespace: str, resource: str, name: str, patch: Json) -> Json:
        return await self.request(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/{resource}/{quote(name)}",
            body=patch,
            content_type="application/merge-patch+json",
            resource=resource,
            retry_conflict=True,
        )

    async def list(
        self,
        namespace: str,
        resource: str,
        selector: str,
        *,
        limit: int = 500,
        transform: Callable[[Json], Any] | None = None,
    ) -> tuple[list[Any], str]:
        """Every object matching ``selector`` (paged), and the list's resourceVersion.

        With ``transform``, each page's objects are replaced by what it returns as the
        page arrives: 10,000 parsed Pods held at once would be ~250 MB of dicts that the
        process keeps as RSS after they are freed (bench/provision.py)."""
        items: list[Any] = []
        params = {"labelSelector": selector, "limit": str(limit)}
        while True:
            page = await self.request(
                "GET",
                f"/api/v1/namespaces/{namespace}/{resource}",
                params=params,
                resource=resource,
            )
            objects = page.get("items", [])
            items += objects if transform is None else [transform(o) for o in objects]
            del objects
            token = page.get("metadata", {}).get("continue")
            if not token:
                return items, str(page.get("metadata", {}).get("resourceVersion", ""))
            params = {**params, "continue": token}

    async def watch(
        self,
        namespace: str,
        resource: str,
        selector: str,
        *,
        timeout_seconds: int = 300,
        transform: Callable[[Json], Any] | None = None,
    ) -> AsyncIterator[tuple[str, Json]]:
        """``("SYNC", {"items": [...]})`` after each (re)list, then ``(type, object)`` for
        each change; runs until cancelled, resuming and relisting as the server demands.
        ``transform`` applies to the listed items only (see :meth:`list`)."""
        version = ""
        failures = 0
        while True:
            try:
                # The (re)list too: a list that fails past its retries must not end the
                # watch (the caller's cache would go stale for good); back off, list again.
                if not version:
                    items, version = await self.list(
                        namespace, resource, selector, transform=transform
                    )
                    yield "SYNC", {"items": items}
                params = {
                    "labelSelector": selector,
                    "watch": "1",
                    "resourceVersion": version,
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": str(timeout_seconds),
                }
                async for kind, obj in self._watch_once(namespace, resource, params):
                    failures = 0
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if kind != "BOOKMARK":
                        yield kind, obj
            except Gone:
                version = ""  # too old: relist
            except (httpx.TransportError, KubeError) as error:
                failures += 1
                log.warning("watch %s in %s broke (%s); resuming", resource, namespace, error)
                await self._backoff(min(failures, 6), None)

    async def _watch_once(
        self, namespace: str, resource: str, params: dict[str, str]
    ) -> AsyncIterator[tuple[str, Json]]:
        await self.limiter.take()
        async with self.http.stream(
            "GET",
            f"/api/v1/namespaces/{namespace}/{resource}",
            params=params,
            headers=self._headers(),
            # The server ends a watch after timeout_seconds; a read silent for longer is a
            # half-open connection, which would otherwise stall the cache for good.
            timeout=httpx.Timeout(None, connect=5.0, read=float(params["timeoutSeconds"]) + 30),
        ) as response:
            if response.status_code >= 400:
                text = (await response.aread()).decode(errors="replace")
                raise _error(response.status_code, "WATCH", resource, text)
            async for line in response.aiter_lines():
                if not line:
                    continue
                event = json.loads(line)
                if event["type"] == "ERROR":
                    status = event["object"]
                    code = int(status.get("code", 500))
                    raise _error(code, "WATCH", resource, str(status.get("message", "")))
                yield event["type"], event["object"]


def _error(status: int, method: str, path: str, text: str) -> KubeError:
    try:
        message = json.loads(text).get("message", text)
    except ValueError:
        message = text
    message = f"{method} {path}: {str(message)[:300]}"  # truncated: never a whole body in logs
    if status == 404:
        return NotFound(status, message)
    if status == 409:
        return Conflict(status, message)
    if status == 410:
        return Gone(status, message)
    return KubeError(status, message)
