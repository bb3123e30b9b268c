"""A scale set's listener: consume its stream, verify each queued job, pass it on.

Streams are read through a consumer group, so several controller replicas can listen
without taking a job twice, and an entry is acknowledged only after its effect: an
allowed job is appended to ``rp:ready:<scale set>`` (the Pod Provisioner's input), a
denied one is audited (and its run optionally cancelled). A ``held`` job (GitHub could not
answer) is not acknowledged; it is claimed again after ``retry_after`` seconds.
Lifecycle events (``in_progress``, ``completed``) pass through to ``rp:events:<scale set>``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from controller.audit import AuditLog, AuditRecord
from controller.errors import GitHubError
from controller.github_client import GitHubClient
from controller.metrics import Metrics
from controller.model import ScaleSet
from controller.streams import decode_entry, encode_entry, events_key, queue_key, ready_key
from controller.teams.verifier import TeamVerifier

log = logging.getLogger(__name__)
GROUP = "verifier"


class Listener:
    def __init__(
        self,
        scale_set: ScaleSet,
        redis: aioredis.Redis,
        verifier: TeamVerifier,
        audit: AuditLog,
        *,
        consumer: str,
        client: GitHubClient | None = None,
        cancel_denied: bool = False,
        retry_after_ms: int = 30_000,
        metrics: Metrics | None = None,
    ) -> None:
        self.scale_set = scale_set
        self.redis = redis
        self.verifier = verifier
        self.audit = audit
        self.consumer = consumer
        self.client = client
        self.cancel_denied = cancel_denied
        self.retry_after_ms = retry_after_ms
        self.metrics = metrics
        self.stream = queue_key(scale_set.name)

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except aioredis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def process_once(self, count: int = 50, block_ms: int | None = None) -> int:
        """Handle held entries due for retry, then new ones; returns how many were handled."""
        try:
            # Bounded on our side too (see controller/provision/demand.py): a read on a
            # connection a Redis restart dropped must not wait for ever.
            claimed: Any = await asyncio.wait_for(
                self.redis.xautoclaim(
                    self.stream,
                    GROUP,
                    self.consumer,
                    min_idle_time=self.retry_after_ms,
                    count=count,
                ),
                timeout=5,
            )
            reclaimed = claimed[1]
            fresh: Any = await asyncio.wait_for(
                self.redis.xreadgroup(
                    GROUP, self.consumer, {self.stream: ">"}, count=count, block=block_ms
                ),
                timeout=(block_ms or 0) / 1000 + 5,
            )
        except aioredis.ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            # Redis came back empty (a restart without persistence): make the group again.
            await self.ensure_group()
            return 0
        entries = list(reclaimed) + [e for _, batch in fresh for e in batch]
        for entry_id, fields in entries:
            await self._handle(entry_id, decode_entry(fields))
        return len(entries)

    async def _handle(self, entry_id: bytes, job: dict[str, str]) -> None:
        fields: dict[FieldT, EncodableT] = {"j": encode_entry(job)}
        if job["action"] != "queued":
            await self.redis.xadd(events_key(self.scale_set.name), fields)
            await self._done(entry_id)
            return
        verdict = await self.verifier.verify(self.scale_set, job["sender"])
        record = AuditRecord(
            decision=verdict.decision,
            reason=verdict.reason,
            instance=job["instance"],
            org=job["org"],
            repo=job["repo"],
            requester=job["sender"],
            job_id=int(job["job_id"]),
            run_id=int(job["run_id"]),
            scale_set=self.scale_set.name,
            team=self.scale_set.team,
            delivery_id=job["delivery"],
            action="queued",
        )
        await self.audit.record(record)
        if self.metrics is not None:
            self.metrics.decisions.labels(verdict.decision, self.scale_set.name).inc()
        if verdict.decision == "held":
            return  # not acknowledged: claimed again after retry_after_ms
        if verdict.decision == "allowed":
            await self.redis.xadd(ready_key(self.scale_set.name), fields)
        elif self.cancel_denied and self.client is not None and not await self._cancel(job):
            # Left queued, the denied job would take the next idle runner of the team's
            # group: not acknowledged, so the cancel is tried again after retry_after_ms.
            return
        await self._done(entry_id)

    async def _done(self, entry_id: bytes) -> None:
        """Acknowledge and delete: the queue's length is then the work not yet taken,
        which is what the router's bound (QUEUE_BOUND) counts."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(self.stream, GROUP, entry_id)
            pipe.xdel(self.stream, entry_id)
            await pipe.execute()

    async def _cancel(self, job: dict[str, Any]) -> bool:
        assert self.client is not None
        try:
            reply = await self.client.cancel_run(job["org"], job["repo"], int(job["run_id"]))
        except GitHubError as error:
            log.warning(
                "could not cancel run %s of denied job %s: %s", job["run_id"], job["job_id"], error
            )
            return False
        # 202 accepted; 404/409 when the run is gone or finished: nothing left to cancel.
        return reply.status in (202, 404, 409)
