"""Signed webhook deliveries, sent the way GitHub's Hookshot sends them, and recorded."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit


def signature_256(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_1(secret: str, body: bytes) -> str:
    return "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


@dataclass
class Hook:
    id: int
    url: str
    secret: str | None
    events: tuple[str, ...] = ("workflow_job", "ping")
    target_type: str = "organization"
    target_id: int = 0


@dataclass
class Delivery:
    id: int
    guid: str
    hook_id: int
    event: str
    action: str | None
    payload: dict[str, Any]
    redelivery: bool = False
    status_code: int = 0
    status: str = "pending"
    duration: float = 0.0
    delivered_at: float = field(default_factory=time.time)
    dropped: bool = False
    """Recorded as failed without being sent (the emulator's ``drop_webhooks`` fault)."""

    def summary(self) -> dict[str, Any]:
        """The shape of GitHub's delivery list items."""
        return {
            "id": self.id,
            "guid": self.guid,
            "event": self.event,
            "action": self.action,
            "status_code": self.status_code,
            "status": self.status,
            "duration": round(self.duration, 3),
            "redelivery": self.redelivery,
            "delivered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.delivered_at)),
            "installation_id": None,
            "repository_id": None,
        }


def send(hook: Hook, delivery: Delivery, extra_headers: dict[str, str]) -> None:
    """POST one delivery and record its outcome on ``delivery`` (never raises)."""
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/emulator",
        "X-GitHub-Event": delivery.event,
        "X-GitHub-Delivery": delivery.guid,
        "X-GitHub-Hook-ID": str(hook.id),
        "X-GitHub-Hook-Installation-Target-Type": hook.target_type,
        "X-GitHub-Hook-Installation-Target-ID": str(hook.target_id),
        **extra_headers,
    }
    if hook.secret:
        headers["X-Hub-Signature-256"] = signature_256(hook.secret, body)
        headers["X-Hub-Signature"] = signature_1(hook.secret, body)
    started = time.monotonic()
    target = urlsplit(hook.url)
    # http.client keeps header names as given (urllib would re-case X-GitHub-Event).
    connection = http.client.HTTPConnection(
        target.hostname or "127.0.0.1", target.port or 80, timeout=10
    )
    try:
        path = (target.path or "/") + (f"?{target.query}" if target.query else "")
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        delivery.status_code = response.status
    except OSError:
        delivery.status_code = 0
    finally:
        connection.close()
    delivery.duration = time.monotonic() - started
    delivery.delivered_at = time.time()
    delivery.status = status_text(delivery.status_code)


def status_text(code: int) -> str:
    """GitHub's ``status`` of a delivery: ``OK``, the reply's reason, or ``failed`` when
    nothing answered."""
    if 200 <= code < 300:
        return "OK"
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "failed"


def drop(delivery: Delivery, status_code: int = 503) -> None:
    """Record ``delivery`` as failed with ``status_code`` without sending it: what GitHub
    lists when its attempt met an edge that failed (a load balancer's 503)."""
    delivery.status_code = status_code
    delivery.status = status_text(status_code)
    delivery.duration = 0.0
    delivery.delivered_at = time.time()
    delivery.dropped = True


def new_guid() -> str:
    return str(uuid.uuid4())
