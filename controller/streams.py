"""The Redis streams the components hand jobs over in, and how a job travels in them.

``rp:queue:<scale set>``  the router's durable append (ingest) → the listener (teams)
``rp:ready:<scale set>``  verified, allowed queued jobs → the Pod Provisioner (demand)
``rp:events:<scale set>`` ``in_progress``/``completed`` of the scale set's jobs → the
                          Pod Provisioner (they reduce demand)

Shared at the top of the package so that neither side imports the other's internals.
"""

from __future__ import annotations

import json

QUEUE_PREFIX = "rp:queue:"


def queue_key(scale_set: str) -> str:
    return f"{QUEUE_PREFIX}{scale_set}"


def ready_key(scale_set: str) -> str:
    return f"rp:ready:{scale_set}"


def events_key(scale_set: str) -> str:
    return f"rp:events:{scale_set}"


def pending_key(scale_set: str) -> str:
    """The Pod Provisioner's demand: a sorted set, job id -> when it was queued (written by
    controller/provision/demand.py; the reconciler reads it)."""
    return f"rp:pending:{scale_set}"


def encode_entry(job: dict[str, str]) -> str:
    """How a job travels in every stream (queue, ready, events): one JSON field ``j``."""
    return json.dumps(job, separators=(",", ":"))


def decode_entry(fields: dict[bytes, bytes]) -> dict[str, str]:
    """A job from any of the streams, as :func:`encode_entry` wrote it."""
    value: dict[str, str] = json.loads(fields[b"j"])
    return value
