"""The Webhook Router: an ASGI app for GitHub deliveries, health and metrics.

Order per delivery (ARC's webhook server, STYLE.md §7): size limit while reading →
signature over the raw bytes with that instance's secret → enterprise host → event
dispatch (``ping`` answered) → parse → route → store durably → reply. Every outcome is
audited and counted; no reply is ever a 500 or carries a stack trace.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controller.audit import AuditLog, AuditRecord, log_record
from controller.errors import BadPayload, IngestError, PayloadTooLarge, QueueFull, SignatureError
from controller.ingest import signatures
from controller.ingest.events import action_of, parse_workflow_job
from controller.ingest.routing import Router
from controller.ingest.store import QUEUE_BOUND, IngestStore, job_entry
from controller.metrics import Metrics
from controller.model import GitHubInstance, PlatformSpec

log = logging.getLogger(__name__)
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
WEBHOOK_PREFIX = "/webhooks/github/"
USED_ACTIONS = ("queued", "in_progress", "completed")
_HEADERS = frozenset(
    {
        b"x-github-event",
        b"x-github-delivery",
        b"x-hub-signature-256",
        b"x-github-enterprise-host",
        b"content-type",
        b"content-length",
    }
)
InvalidateMembership = Callable[[str, str, str], Awaitable[None]]


# Events GitHub sends to an App or org hook that are worth telling apart in the metrics.
COUNTED_EVENTS = frozenset(
    {"workflow_job", "ping", "installation", "installation_repositories", "membership", "team"}
)


class WebhookApp:
    def __init__(
        self,
        spec: PlatformSpec,
        secrets: dict[str, bytes],
        redis: aioredis.Redis,
        *,
        metrics: Metrics | None = None,
        dedupe_ttl: int = 8 * 24 * 3600,
        audit_max: int = 1_000_000,
        queue_bound: int = QUEUE_BOUND,
        invalidate_membership: InvalidateMembership | None = None,
        background: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> None:
        missing = [i.name for i in spec.github_instances if i.name not in secrets]
        if missing:
            raise ValueError(f"no webhook secret for instance(s) {missing}")
        self.spec = spec
        self.instances: dict[str, GitHubInstance] = {i.name: i for i in spec.github_instances}
        self.secrets = secrets
        self.redis = redis
        self.metrics = metrics or Metrics()
        self.router = Router(spec)
        self.store = IngestStore(
            redis, dedupe_ttl=dedupe_ttl, audit_max=audit_max, queue_bound=queue_bound
        )
        self.audit = AuditLog(redis, audit_max)
        self.body_limit = spec.controller.webhook_body_limit_bytes
        self.invalidate_membership = invalidate_membership
        self.scale_sets = [s.name for s in spec.scale_sets()]
        # Loops that live as long as the server (the lost-webhook reconcilers): started
        # at lifespan startup, cancelled (and so cleaned up) at shutdown.
        self.background = list(background)
        self._tasks: list[asyncio.Task[None]] = []
        self._counters: dict[tuple[str, str, str], Any] = {}
        self._latencies: dict[str, Any] = {}

    # -- ASGI --

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path.startswith(WEBHOOK_PREFIX):
            if method != "POST":
                await _reply(send, 405, {"error": "POST only"})
                return
            await self._webhook(path[len(WEBHOOK_PREFIX) :], scope, receive, send)
        elif path == "/healthz" and method == "GET":
            await _reply(send, 200, {"status": "alive"})
        elif path == "/readyz" and method == "GET":
            await self._ready(send)
        elif path == "/metrics" and method == "GET":
            await self._metrics(send)
        else:
            await _reply(send, 404, {"error": "not found"})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._tasks = [asyncio.create_task(_logged(job)) for job in self.background]
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for task in self._tasks:
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                await self.audit.flush_on_stop()  # records kept while Redis was away
                await self.redis.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _ready(self, send: Send) -> None:
        try:
            await self.store.ping()
        except (aioredis.RedisError, OSError):
            await _reply(send, 503, {"status": "redis unreachable"})
            return
        await _reply(send, 200, {"status": "ready", "scale_sets": len(self.scale_sets)})

    async def _metrics(self, send: Send) -> None:
        try:
            for name, depth in (await self.store.queue_depths(self.scale_sets)).items():
                self.metrics.queue_depth.labels(name).set(depth)
        except (aioredis.RedisError, OSError):
            pass  # metrics still answer; depth keeps its last value
        body = generate_latest(self.metrics.registry)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    # -- one delivery --

    async def _webhook(
        self, instance_name: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        started = time.perf_counter()
        instance = self.instances.get(instance_name)
        if instance is None:
            await _reply(send, 404, {"error": "unknown GitHub instance"})
            return
        # ASGI header names are lowercase bytes; decode only the few the router reads.
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope.get("headers", [])
            if k in _HEADERS
        }
        event = headers.get("x-github-event", "")
        delivery = headers.get("x-github-delivery", "")
        audit = AuditRecord(decision="error", instance=instance.name, delivery_id=delivery[:64])
        try:
            status, body = await self._handle(instance, headers, event, delivery, audit, receive)
        except IngestError as error:
            status, body = error.status, {"error": error.reason}
            decision = "queue-full" if isinstance(error, QueueFull) else "error"
            audit.decision, audit.reason = decision, error.reason
            await self._audit_refusal(audit)
        except (aioredis.RedisError, OSError) as error:
            status, body = 503, {"error": "storage unavailable; redeliver later"}
            audit.decision, audit.reason = "error", f"storage: {type(error).__name__}"
            log_record(audit)
        except Exception:  # never a 500: log without the payload, let GitHub redeliver
            log.exception("unexpected error on delivery %s", delivery[:64])
            status, body = 503, {"error": "internal error; redeliver later"}
            audit.decision, audit.reason = "error", "internal"
            log_record(audit)
        self._counted(instance.name, event, audit.decision)
        self._latency(instance.name).observe(time.perf_counter() - started)
        await _reply(send, status, body)

    def _counted(self, instance: str, event: str, decision: str) -> None:
        # The event header is whatever a sender wrote, signed or not: as a label value it
        # would let anyone grow /metrics and this dict without bound. Known names only.
        key = (instance, event if event in COUNTED_EVENTS else "other", decision)
        child = self._counters.get(key)
        if child is None:  # labels() costs a lock and a lookup; keep each child once
            child = self._counters[key] = self.metrics.deliveries.labels(*key)
        child.inc()

    def _latency(self, instance: str) -> Any:
        child = self._latencies.get(instance)
        if child is None:
            child = self._latencies[instance] = self.metrics.webhook_seconds.labels(instance)
        return child

    async def _audit_refusal(self, audit: AuditRecord) -> None:
        try:
            await self.audit.record(audit)
        except Exception:  # auditing a refusal must never turn it into a 500
            log_record(audit)

    async def _handle(
        self,
        instance: GitHubInstance,
        headers: dict[str, str],
        event: str,
        delivery: str,
        audit: AuditRecord,
        receive: Receive,
    ) -> tuple[int, dict[str, Any]]:
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.body_limit:
            raise PayloadTooLarge(f"body over {self.body_limit} bytes")
        raw = await _read_body(receive, self.body_limit)
        signatures.verify(self.secrets[instance.name], raw, headers.get("x-hub-signature-256"))
        enterprise_host = headers.get("x-github-enterprise-host")
        if instance.kind == "ghes" and enterprise_host != instance.host:
            raise SignatureError(f"X-GitHub-Enterprise-Host is not {instance.host}")
        if instance.kind == "cloud" and enterprise_host is not None:
            raise SignatureError("a GitHub Enterprise Server delivery on a github.com endpoint")
        if not delivery:
            raise BadPayload("missing X-GitHub-Delivery")
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise BadPayload("content type must be application/json")
        if event == "ping":
            audit.decision, audit.reason = "ignored", "ping"
            await self.audit.record(audit)
            return 200, {"status": "pong"}
        if event in ("membership", "team") and self.invalidate_membership is not None:
            await self._invalidate(raw, instance)
        if event != "workflow_job":
            audit.decision, audit.reason = "ignored", f"event {event[:40] or 'missing'}"
            await self.audit.record(audit)
            return 202, {"status": "ignored"}
        try:
            job = parse_workflow_job(raw)  # one parse on the hot path
            action: str | None = job.action
        except BadPayload:
            action = action_of(raw)  # an action GitHub added later is ignored, not refused
            if action is None or action in USED_ACTIONS or action == "waiting":
                raise  # a known (or missing) action with a bad body is malformed
        if action not in USED_ACTIONS:
            audit.decision, audit.reason = "ignored", f"action {str(action)[:40]}"
            await self.audit.record(audit)
            return 202, {"status": "ignored"}
        audit.org, audit.repo = job.org, job.repository.full_name
        audit.requester, audit.action = job.sender.login, job.action
        audit.job_id, audit.run_id = job.workflow_job.id, job.workflow_job.run_id
        route = self.router.route(instance.name, job)
        if route is None:
            audit.decision, audit.reason = "unroutable", "no scale set matches"
            await self.audit.record(audit)
            return 202, {"status": "unroutable"}
        audit.scale_set, audit.team = route.scale_set.name, route.team.name
        entry = job_entry(instance.name, delivery, job)
        stored = await self.store.store(
            instance=instance.name,
            delivery=delivery,
            job_id=job.workflow_job.id,
            action=job.action,
            scale_set=route.scale_set.name,
            entry=entry,
            audit=audit,
        )
        log_record(audit)
        return 202, {
            "status": "duplicate" if stored.duplicate else "queued",
            "scale_set": route.scale_set.name,
        }

    async def _invalidate(self, raw: bytes, instance: GitHubInstance) -> None:
        try:
            payload = json.loads(raw)
            org = payload["organization"]["login"]
            slug = payload["team"]["slug"]
            member = (payload.get("member") or {}).get("login", "*")
        except (ValueError, KeyError, TypeError):
            return
        assert self.invalidate_membership is not None
        await self.invalidate_membership(f"{instance.name}/{org}", slug, member)


async def _logged(job: Callable[[], Awaitable[None]]) -> None:
    """Run a background loop; one that ends by an error is logged, never silent."""
    try:
        await job()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("background task %s ended", getattr(job, "__qualname__", job))


async def _read_body(receive: Receive, limit: int) -> bytes:
    """Read the body chunk by chunk, refusing as soon as it passes ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadPayload("client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body over {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _reply(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
