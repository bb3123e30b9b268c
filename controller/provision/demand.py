"""Demand per scale set, kept in Redis: jobs queued and not yet started, and busy runners.

The listener appends allowed queued jobs to ``rp:ready:<scale set>`` and passes
``in_progress``/``completed`` through ``rp:events:<scale set>``. Each entry is applied by
one Lua script that also acknowledges and deletes it, so applying is exactly-once even when
a consumer dies mid-way or a stream is replayed:

``rp:pending:<ss>``  sorted set: job id → when it was queued (GitHub's ``created_at``)
``rp:started:<ss>``  sorted set: job ids that started or ended (a late or replayed
                     ``queued`` for them adds no demand), trimmed after two days
``rp:busy:<ss>``     hash: runner name → job id, from ``in_progress`` (GitHub names the
                     runner that took the job); the provisioner never retires those

Adding a job twice is a no-op (set semantics), so 100 deliveries of one job, or a replay
after a restart, are one unit of demand. Demand is a count: GitHub gives a queued job to
any idle runner whose labels match, so no runner is bound to a job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import redis.asyncio as aioredis

from controller.provision.jit import scale_set_of
from controller.streams import decode_entry, events_key, pending_key, ready_key

log = logging.getLogger(__name__)
GROUP = "provisioner"
STARTED_KEEP_SECONDS = 2 * 24 * 3600
# GitHub fails a job that waited 24 hours for a runner; demand older than that is stale.
PENDING_MAX_AGE_SECONDS = 24 * 3600
# How long past its own block a Redis call may take before it is abandoned (and its
# connection with it).
READ_GRACE_SECONDS = 5.0
T = TypeVar("T")

_APPLY_READY = """
if redis.call('ZSCORE', KEYS[2], ARGV[1]) == false then
  redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1])
end
redis.call('XACK', KEYS[3], ARGV[3], ARGV[4])
redis.call('XDEL', KEYS[3], ARGV[4])
return 1
"""

_APPLY_EVENT = """
local was = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4] - ARGV[7])
if ARGV[3] ~= '' then
  if ARGV[2] == 'in_progress' then
    redis.call('HSET', KEYS[3], ARGV[3], ARGV[1])
  elseif ARGV[2] == 'completed' then
    redis.call('HDEL', KEYS[3], ARGV[3])
  end
end
redis.call('XACK', KEYS[4], ARGV[5], ARGV[6])
redis.call('XDEL', KEYS[4], ARGV[6])
return was
"""


def started_key(scale_set: str) -> str:
    return f"rp:started:{scale_set}"


def busy_key(scale_set: str) -> str:
    return f"rp:busy:{scale_set}"


def job_time(job: dict[str, str], field: str = "created_at") -> float:
    """A job's ``created_at`` (or when the router received it) as epoch seconds."""
    text = job.get(field) or ""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        try:
            return float(job.get("received_at") or time.time())
        except ValueError:
            return time.time()


@dataclass(frozen=True)
class Applied:
    scale_set: str
    action: str
    job: dict[str, str]
    was_pending: bool


@dataclass(frozen=True)
class Demand:
    queued: int  # jobs queued and not started (their times: DemandStore.queued_times)
    busy: dict[str, str]  # runner name -> job id


class DemandStore:
    def __init__(
        self,
        redis: aioredis.Redis,
        scale_sets: Iterable[str],
        consumer: str,
        teams: dict[str, str] | None = None,
    ) -> None:
        self.redis = redis
        self.scale_sets = list(scale_sets)
        self.teams = teams or {}  # scale set -> team: which runner names a team may own
        self.consumer = consumer
        self._ready = redis.register_script(_APPLY_READY)
        self._event = redis.register_script(_APPLY_EVENT)
        self._streams = {ready_key(s): s for s in self.scale_sets} | {
            events_key(s): s for s in self.scale_sets
        }

    async def ensure_groups(self) -> None:
        for stream in self._streams:
            try:
                await _bounded(self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True))
            except aioredis.ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise

    def _streams_of(self, only: set[str] | None) -> list[str]:
        return [k for k, s in self._streams.items() if only is None or s in only]

    async def consume(
        self, block_ms: int = 1000, count: int = 1000, only: set[str] | None = None
    ) -> list[Applied]:
        """Apply this consumer's unacknowledged entries (after a crash), then new ones;
        with ``only``, just those scale sets' streams (the ones this replica holds)."""
        streams = self._streams_of(only)
        if not streams:
            await asyncio.sleep(block_ms / 1000)
            return []
        applied: list[Applied] = []
        for start in ("0", ">"):
            try:
                # Bounded on our side too: a read on a connection the server dropped in a
                # restart was seen to wait past the client's socket timeout (redis-py
                # 8.1); cancelling it closes that connection and the next gets a new one.
                reply: Any = await asyncio.wait_for(
                    self.redis.xreadgroup(
                        GROUP,
                        self.consumer,
                        dict.fromkeys(streams, start),
                        count=count,
                        block=None if start == "0" else block_ms,
                    ),
                    timeout=block_ms / 1000 + READ_GRACE_SECONDS,
                )
            except aioredis.ResponseError as error:
                if "NOGROUP" not in str(error):
                    raise
                # Redis came back without the streams (a restart without persistence):
                # the groups are made again, and lost demand comes back by reconciliation.
                log.warning("consumer group missing after a Redis restart: recreating")
                await self.ensure_groups()
                return applied
            for stream, entries in reply or []:
                name = stream.decode() if isinstance(stream, bytes) else str(stream)
                applied += await self._apply_all(name, entries)
        return applied

    async def claim_abandoned(
        self, min_idle_ms: int = 30_000, only: set[str] | None = None
    ) -> list[Applied]:
        """Entries another consumer read and never applied (it died): take them over."""
        applied: list[Applied] = []
        for stream in self._streams_of(only):
            claimed: Any = await asyncio.wait_for(
                self.redis.xautoclaim(
                    stream, GROUP, self.consumer, min_idle_time=min_idle_ms, count=1000
                ),
                timeout=READ_GRACE_SECONDS,
            )
            applied += await self._apply_all(stream, claimed[1])
        return applied

    async def _apply_all(self, stream: str, entries: list[Any]) -> list[Applied]:
        """Apply a batch in one pipelined round trip; each script result says whether the
        job was pending (so queue time is observed once per job, not per replay)."""
        scale_set = self._streams[stream]
        applied: list[Applied] = []
        skip: list[Any] = []  # deleted meanwhile, or an action that changes no demand
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id, fields in entries:
                job = decode_entry(fields) if fields else None
                if job is None or not await self._apply_one(pipe, stream, scale_set, entry_id, job):
                    skip.append(entry_id)
                    continue
                applied.append(Applied(scale_set, job.get("action", ""), job, False))
            if skip:
                pipe.xack(stream, GROUP, *skip)
                pipe.xdel(stream, *skip)
            results = await _bounded(pipe.execute())
        return [
            Applied(a.scale_set, a.action, a.job, bool(result))
            for a, result in zip(applied, results, strict=False)
        ]

    async def _apply_one(
        self, pipe: Any, stream: str, scale_set: str, entry_id: Any, job: dict[str, str]
    ) -> bool:
        """Queue the script for one entry on ``pipe``; False if the entry changes nothing."""
        if stream.startswith("rp:ready:"):
            await self._ready(
                keys=[pending_key(scale_set), started_key(scale_set), stream],
                args=[job["job_id"], f"{job_time(job):.3f}", GROUP, entry_id],
                client=pipe,
            )
            return True
        action = job.get("action", "")
        if action not in ("in_progress", "completed"):  # e.g. waiting: no change of demand
            return False
        runner_set = self.runner_scale_set(scale_set, job.get("runner_name", ""))
        await self._event(
            keys=[pending_key(scale_set), started_key(scale_set), busy_key(runner_set), stream],
            args=[
                job["job_id"],
                action,
                job.get("runner_name", ""),
                f"{time.time():.3f}",
                GROUP,
                entry_id,
                STARTED_KEEP_SECONDS,
            ],
            client=pipe,
        )
        return True

    def runner_scale_set(self, scale_set: str, runner_name: str) -> str:
        """The scale set whose runner took a job. A job is routed by its labels (a bare
        ``[self-hosted, linux]`` to the team's first pool), but any of the team's idle
        runners whose labels cover it may take it: busy is counted where the runner is.
        Runner names are ``<scale set>-<5 chars>``; only the same team's scale sets count."""
        owner = scale_set_of(runner_name)
        team = self.teams.get(scale_set)
        if owner is not None and team is not None and self.teams.get(owner) == team:
            return owner
        return scale_set

    async def demand(self, scale_sets: list[str]) -> dict[str, Demand]:
        # A count, not the queued jobs themselves: a pass runs after every change, and
        # reading thousands of queued jobs each time was most of a pass (bench/provision.py).
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in scale_sets:
                pipe.zcard(pending_key(name))
                pipe.hgetall(busy_key(name))
            replies = await asyncio.wait_for(pipe.execute(), timeout=READ_GRACE_SECONDS)
        result = {}
        for index, name in enumerate(scale_sets):
            busy = {_text(k): _text(v) for k, v in replies[2 * index + 1].items()}
            result[name] = Demand(int(replies[2 * index]), busy)
        return result

    async def queued_times(self, scale_set: str, start: int, count: int) -> list[float]:
        """When the queued jobs ranked ``start`` to ``start + count - 1`` (oldest first)
        were queued. For latency metrics only: a failed read is an empty list."""
        if count <= 0:
            return []
        try:
            reply: Any = await _bounded(
                self.redis.zrange(pending_key(scale_set), start, start + count - 1, withscores=True)
            )
        except (aioredis.RedisError, TimeoutError) as error:
            log.warning("reading when %s's jobs were queued failed: %r", scale_set, error)
            return []
        return [float(score) for _, score in reply]

    async def reconnect(self, after: BaseException) -> None:
        """Drop every pooled connection after Redis went away (a connection error or a
        call that timed out): the next call opens new ones instead of reusing one the
        restart left half-open. Any other failure (a script error, a bug) keeps the pool:
        dropping it would cut the concurrent calls of other tasks for nothing."""
        if not isinstance(after, aioredis.ConnectionError | aioredis.TimeoutError | OSError):
            return  # TimeoutError (asyncio's, from a bounded call) is an OSError
        try:
            await self.redis.connection_pool.disconnect(inuse_connections=True)
        except Exception as error:  # closing a dead connection may fail too: never fatal
            log.debug("closing Redis connections: %r", error)

    async def busy_job(self, scale_set: str, runner_name: str) -> str:
        """The job a runner is busy with, "" when none is known."""
        value = await _bounded(self.redis.hget(busy_key(scale_set), runner_name))
        return _text(value) if value is not None else ""

    async def mark_busy(self, scale_set: str, runner_name: str, job_id: str) -> None:
        """GitHub says the runner is busy (read back after a lost event or a restart)."""
        await _bounded(self.redis.hsetnx(busy_key(scale_set), runner_name, job_id))

    async def forget_busy(self, scale_set: str, runner_name: str) -> None:
        """The runner's pod is gone: it is busy no more (if ``completed`` was lost)."""
        await _bounded(self.redis.hdel(busy_key(scale_set), runner_name))

    async def expire_stale(self, now: float | None = None) -> int:
        """Drop demand older than GitHub lets a job wait; returns how many were dropped."""
        cutoff = (now or time.time()) - PENDING_MAX_AGE_SECONDS
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in self.scale_sets:
                pipe.zremrangebyscore(pending_key(name), "-inf", cutoff)
            dropped = await _bounded(pipe.execute())
        return sum(int(n) for n in dropped)


async def _bounded(call: Awaitable[T], seconds: float = READ_GRACE_SECONDS) -> T:
    """A Redis call that gives up after ``seconds`` (and closes its connection): after a
    Redis restart, a call on a pooled connection was seen to wait past the client's socket
    timeout for ever (redis-py 8.1), which stalled a scale set's passes."""
    return await asyncio.wait_for(call, timeout=seconds)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
