"""Durable ingest: dedupe, idempotency and the scale-set streams, in one Redis round trip.

A delivery is stored by one Lua script that (atomically, in this order) refuses a delivery
id seen before, refuses a (instance, job, action) seen before, appends the job to its
scale set's stream (one JSON field: few arguments to encode), remembers both keys, and
appends the audit record (rewritten with Lua's cjson in the rare duplicate case). Redis scripts are
not rolled back on error, so every write comes after every check. A 202 is sent only
after the script returned.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from controller.audit import AUDIT_STREAM, AuditRecord
from controller.errors import QueueFull
from controller.ingest.events import WorkflowJobEvent
from controller.streams import encode_entry, queue_key

QUEUE_BOUND = 100_000  # jobs waiting per scale set before the router answers 503

_SCRIPT = """
local function duplicate()
  local record = cjson.decode(ARGV[4])
  record['decision'] = 'duplicate'
  record['reason'] = 'delivery or job action seen before'
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', 'r', cjson.encode(record))
  return 'duplicate'
end
if redis.call('EXISTS', KEYS[1]) == 1 then return duplicate() end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
  return duplicate()
end
if redis.call('XLEN', KEYS[3]) >= tonumber(ARGV[2]) then return 'full' end
local id = redis.call('XADD', KEYS[3], '*', 'j', ARGV[5])
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
redis.call('SET', KEYS[2], ARGV[6], 'EX', ARGV[1])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', 'r', ARGV[4])
return id
"""


def job_entry(instance: str, delivery: str, job: WorkflowJobEvent) -> dict[str, str]:
    """How a job travels from the router (a webhook, or the reconciler's recovery) on."""
    return {
        "delivery": delivery,
        "instance": instance,
        "action": job.action,
        "job_id": str(job.workflow_job.id),
        "run_id": str(job.workflow_job.run_id),
        "org": job.org,
        "repo": job.repository.full_name,
        "sender": job.sender.login,
        "labels": json.dumps(job.workflow_job.labels),
        "runner_name": job.workflow_job.runner_name or "",
        "runner_group": job.workflow_job.runner_group_name or "",
        "conclusion": job.workflow_job.conclusion or "",
        "created_at": job.workflow_job.created_at or "",
        "received_at": f"{time.time():.3f}",
    }


def delivery_key(instance: str, delivery: str) -> str:
    """Set once a delivery id was stored (or refused as a duplicate)."""
    return f"rp:delivery:{instance}:{delivery}"


def job_action_key(instance: str, job_id: int | str, action: str) -> str:
    """Set once a job's action was stored, whichever delivery (or recovery) brought it."""
    return f"rp:jobaction:{instance}:{job_id}:{action}"


@dataclass(frozen=True)
class Stored:
    duplicate: bool
    entry_id: str | None


class IngestStore:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        dedupe_ttl: int,
        audit_max: int,
        queue_bound: int = QUEUE_BOUND,
    ) -> None:
        if queue_bound < 1:  # 0 would answer every webhook 503 "queue full"
            raise ValueError(
                f"RUNNER_PLATFORM_QUEUE_BOUND={queue_bound}: a scale set's queue must hold "
                "at least one job"
            )
        self.redis = redis
        self.queue_bound = queue_bound
        self.dedupe_ttl = dedupe_ttl
        self.audit_max = audit_max
        self._script = redis.register_script(_SCRIPT)
        self._pending: list[tuple[list[str], list[Any], asyncio.Future[Any]]] = []
        self._flush_scheduled = False

    async def _batch(self, keys: list[str], args: list[Any]) -> Any:
        """Run the script, sharing one pipelined round trip with the calls of the same
        event-loop turn. Each caller still waits for its own result before replying."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((keys, args, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self._flush()))
        return await future

    async def _flush(self) -> None:
        batch, self._pending, self._flush_scheduled = self._pending, [], False
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for keys, args, _ in batch:
                    await self._script(keys=keys, args=args, client=pipe)  # buffered
                results = await pipe.execute(raise_on_error=False)
        except BaseException as error:  # the connection failed: every caller hears of it
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def store(
        self,
        *,
        instance: str,
        delivery: str,
        job_id: int,
        action: str,
        scale_set: str,
        entry: dict[str, str],
        audit: AuditRecord,
        decision: str = "accepted",
        reason: str = "",
    ) -> Stored:
        """Queue ``entry`` (one JSON field ``j``) unless seen; ``audit`` ends up saying which
        (``decision``: ``accepted`` for a webhook, ``recovered`` for the reconciler's)."""
        audit.decision, audit.reason = decision, reason
        result = await self._batch(
            [
                delivery_key(instance, delivery),
                job_action_key(instance, job_id, action),
                queue_key(scale_set),
                AUDIT_STREAM,
            ],
            [
                self.dedupe_ttl,
                self.queue_bound,
                self.audit_max,
                audit.to_json(),
                encode_entry(entry),
                # Where the job came from, kept with its action: the reconciler asks GitHub
                # about a job that stays pending, and GitHub's path needs the repository.
                json.dumps({"repo": entry.get("repo", ""), "requester": entry.get("sender", "")}),
            ],
        )
        text = result.decode() if isinstance(result, bytes) else str(result)
        if text == "full":
            # Never trim past work nobody has taken (XADD MAXLEN would drop the oldest
            # jobs silently): refuse, and GitHub shows the failure and can redeliver.
            raise QueueFull(f"scale set {scale_set}'s queue is full; redeliver later")
        if text == "duplicate":
            audit.decision, audit.reason = "duplicate", "delivery or job action seen before"
            return Stored(True, None)
        return Stored(False, text)

    async def queue_depths(self, scale_sets: list[str]) -> dict[str, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in scale_sets:
                pipe.xlen(queue_key(name))
            lengths = await pipe.execute()
        return dict(zip(scale_sets, (int(n) for n in lengths), strict=True))

    async def ping(self) -> bool:
        return bool(await self.redis.ping())
