"""The audit stream when Redis goes away and comes back (a real redis-server, restarted):
records of effects that happened meanwhile are written in order once it is back, none
twice, even with several writers at once; a required record refuses while Redis is away and
waits its turn behind a flush once it is back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from controller.audit import AUDIT_STREAM, AuditLog, AuditRecord, AuditUnavailable
from localenv.services import Redis


@pytest.fixture
def restartable() -> Iterator[Redis]:
    server = Redis(appendonly=True).start()
    yield server
    server.stop()


def _reasons(server: Redis) -> list[str]:
    entries = redis.Redis.from_url(server.url).xrange(AUDIT_STREAM)
    return [json.loads(fields[b"r"])["reason"] for _, fields in entries]


def test_records_written_while_redis_is_away_arrive_in_order_once(restartable: Redis) -> None:
    async def scenario() -> None:
        client = aioredis.Redis.from_url(restartable.url, socket_timeout=2)
        audit = AuditLog(client)
        await audit.record(AuditRecord(decision="x", reason="before"))
        restartable.stop_process()
        for n in range(1200):  # more than one flush batch
            await audit.record(AuditRecord(decision="x", reason=f"away-{n}"))
        with pytest.raises(AuditUnavailable):
            await audit.record(AuditRecord(decision="x", reason="required"), required=True)
        await audit.flush_on_stop()  # a stop while Redis is away goes on, nothing lost here
        assert len(audit.backlog) == 1200
        restartable.start()
        # Three writers at once, as the provisioner's tasks are.
        await asyncio.gather(
            *(audit.record(AuditRecord(decision="x", reason=f"after-{n}")) for n in range(3))
        )
        assert not audit.backlog
        await client.aclose()

    asyncio.run(scenario())
    reasons = _reasons(restartable)
    assert reasons[0] == "before"
    assert reasons[1:1201] == [f"away-{n}" for n in range(1200)]  # in order, each once
    assert sorted(reasons[1201:]) == ["after-0", "after-1", "after-2"]
    assert "required" not in reasons  # refused, so its effect never happened
    assert len(reasons) == len(set(reasons))


def test_a_record_written_while_the_last_batch_is_in_flight_waits_its_turn(
    restartable: Redis,
) -> None:
    async def scenario() -> None:
        client = aioredis.Redis.from_url(restartable.url, socket_timeout=2)
        audit = AuditLog(client)
        restartable.stop_process()
        for n in range(1200):  # three batches: 500, 500, 200
            await audit.record(AuditRecord(decision="x", reason=f"away-{n}"))
        restartable.start()
        first = asyncio.ensure_future(audit.record(AuditRecord(decision="x", reason="after-0")))
        # The flusher has taken the last batch off the backlog and not written it yet.
        while not (audit._flushing.locked() and not audit.backlog):
            await asyncio.sleep(0)
        await audit.record(AuditRecord(decision="x", reason="after-1"))
        # A required record waits for the flush and is written behind the backlog (Redis is
        # back: refusing it would abort a runner creation for nothing).
        await audit.record(AuditRecord(decision="x", reason="required"), required=True)
        await first
        await audit.flush()
        await client.aclose()

    asyncio.run(scenario())
    reasons = _reasons(restartable)
    assert reasons[:1200] == [f"away-{n}" for n in range(1200)]
    assert sorted(reasons[1200:]) == ["after-0", "after-1", "required"]
    assert reasons.index("required") > reasons.index("after-1")  # behind what was kept first
