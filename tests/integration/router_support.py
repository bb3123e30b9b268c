"""Shared setup for the router tests: the dev spec, its secrets, signed deliveries."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

from controller.ingest import signatures
from controller.model import PlatformSpec, load_spec
from tests.conftest import DEV_DOCUMENT

SECRETS = {"cloud": b"cloud-secret", "ghes": b"ghes-secret"}
GHES_HOST = "github.acme.internal"


def dev_spec() -> PlatformSpec:
    return load_spec(copy.deepcopy(DEV_DOCUMENT))


def job_payload(
    *,
    action: str = "queued",
    repo: str = "acme-corp/storefront",
    labels: list[str] | None = None,
    sender: str = "alice",
    job_id: int = 1,
    run_id: int = 10,
    group: str | None = None,
) -> dict[str, Any]:
    org = repo.split("/")[0]
    return {
        "action": action,
        "workflow_job": {
            "id": job_id,
            "run_id": run_id,
            "run_attempt": 1,
            "name": "build",
            "status": action,
            "conclusion": None,
            "labels": labels or ["self-hosted", "linux"],
            "runner_id": None,
            "runner_name": None,
            "runner_group_id": None,
            "runner_group_name": group,
        },
        "repository": {"full_name": repo, "owner": {"login": org}},
        "organization": {"login": org},
        "sender": {"login": sender},
    }


def signed(
    body: bytes,
    instance: str = "cloud",
    *,
    event: str = "workflow_job",
    delivery: str | None = None,
    secret: bytes | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": signatures.sign(secret or SECRETS[instance], body),
        "User-Agent": "GitHub-Hookshot/test",
    }
    if instance == "ghes":
        headers["X-GitHub-Enterprise-Host"] = GHES_HOST
    headers.update(extra or {})
    return headers


def encode(payload: Any) -> bytes:
    return json.dumps(payload).encode()
