"""Every decision as a structured record: in the JSON log and in a bounded Redis stream.

The ingest path writes its records inside the store's Lua script (one round trip per
delivery); everything else calls :meth:`AuditLog.record`. ``python -m controller audit``
reads the stream back with filters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

AUDIT_STREAM = "rp:audit"
log = logging.getLogger("runner_platform.audit")


@dataclass
class AuditRecord:
    decision: str
    reason: str = ""
    instance: str = ""
    org: str = ""
    repo: str = ""
    requester: str = ""
    job_id: int | None = None
    run_id: int | None = None
    scale_set: str = ""
    team: str = ""
    delivery_id: str = ""
    action: str = ""
    time: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))  # flat values only: no need for asdict's deep copies

    def to_json(self) -> str:
        return json.dumps(vars(self), separators=(",", ":"))


def log_record(record: AuditRecord) -> None:
    if log.isEnabledFor(logging.INFO):  # the hot path pays nothing when not logging
        log.info("%s", record.decision, extra={"audit": record.as_dict()})


class AuditUnavailable(RuntimeError):
    """A required audit record could not be written."""


class AuditLog:
    """The audit stream. A record that cannot be written (Redis away) is kept in memory,
    in order, and written before the next record that can be (up to ``backlog`` records;
    past that the oldest are dropped, counted in the log): a restart of Redis loses no
    record of an effect that happened meanwhile."""

    def __init__(
        self, redis: aioredis.Redis, max_records: int = 1_000_000, backlog: int = 100_000
    ) -> None:
        self.redis = redis
        self.max_records = max_records
        self.backlog: deque[str] = deque(maxlen=backlog)
        self.dropped = 0
        self._flushing = asyncio.Lock()

    async def record(self, record: AuditRecord, *, required: bool = False) -> None:
        """Log, then append to the stream (after any backlog). On a Redis failure the
        record joins the backlog — unless ``required``: then :class:`AuditUnavailable` is
        raised, for an effect that must not happen unrecorded (the caller does not go
        ahead)."""
        log_record(record)
        text = record.to_json()
        if self._flushing.locked() and not required:
            # A flush is under way: its batches left the backlog and are not written yet.
            # Behind them is this record's place; the flusher writes it too.
            self._keep(text)
            return
        try:
            if self.backlog or self._flushing.locked():
                # A required record waits for the flush (its caller waits to go ahead) and
                # is written behind everything kept before it.
                await self.flush()
            await asyncio.wait_for(
                self.redis.xadd(
                    AUDIT_STREAM, {"r": text}, maxlen=self.max_records, approximate=True
                ),
                timeout=5,
            )
        except Exception as error:  # Redis away, or anything else: never the caller's
            what = type(error).__name__
            log.warning("audit stream unavailable: %s", what)
            if required:
                raise AuditUnavailable(f"audit stream unavailable: {what}") from None
            self._keep(text)

    def _keep(self, text: str) -> None:
        if len(self.backlog) == self.backlog.maxlen:
            self.dropped += 1
            log.error("audit backlog full: %d records dropped so far", self.dropped)
        self.backlog.append(text)

    async def flush_on_stop(self) -> None:
        """The last flush of a stopping process: what Redis still refuses is reported, and
        the stop goes on (Leases released, connections closed)."""
        try:
            await self.flush()
        except Exception as error:
            log.error(
                "audit stream unavailable at stop (%s): %d records lost with the process",
                type(error).__name__,
                len(self.backlog),
            )

    async def flush(self) -> None:
        """Write the backlog in order, one flusher at a time; a batch leaves the backlog
        only once written (a failure puts it back in front). Also on a clean stop, so
        records kept while Redis was away are not lost with the process."""
        async with self._flushing:
            while self.backlog:
                batch = [self.backlog.popleft() for _ in range(min(500, len(self.backlog)))]
                try:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for text in batch:
                            pipe.xadd(
                                AUDIT_STREAM, {"r": text}, maxlen=self.max_records, approximate=True
                            )
                        await asyncio.wait_for(pipe.execute(), timeout=10)
                except BaseException:
                    self.backlog.extendleft(reversed(batch))
                    raise


def _matches(
    record: dict[str, Any],
    team: str | None,
    user: str | None,
    repo: str | None,
    decision: str | None,
) -> bool:
    return (
        (
            team is None
            or record.get("team") == team
            or str(record.get("scale_set", "")).startswith(f"{team}-")
        )
        and (user is None or str(record.get("requester", "")).lower() == user.lower())
        and (repo is None or str(record.get("repo", "")).lower() == repo.lower())
        and (decision is None or record.get("decision") == decision)
    )


def iter_records(
    client: Any,
    *,
    team: str | None = None,
    user: str | None = None,
    repo: str | None = None,
    decision: str | None = None,
    since: float | None = None,
    until: float | None = None,
    limit: int = 100,
    batch: int = 500,
) -> Iterator[dict[str, Any]]:
    """Newest first, filtered; ``client`` is a synchronous redis.Redis."""
    upper = f"{int(until * 1000)}" if until is not None else "+"
    lower = f"{int(since * 1000)}" if since is not None else "-"
    found = 0
    while found < limit:
        entries = client.xrevrange(AUDIT_STREAM, max=upper, min=lower, count=batch)
        if not entries:
            return
        for _entry_id, fields in entries:
            record = json.loads(fields[b"r"])
            if _matches(record, team, user, repo, decision):
                yield record
                found += 1
                if found >= limit:
                    return
        last = entries[-1][0].decode()
        ms, seq = (int(part) for part in last.split("-"))
        upper = f"{ms}-{seq - 1}" if seq > 0 else f"{ms - 1}"
        if len(entries) < batch:
            return
