"""Within a thread, ``seq`` follows the order in which events become final (sql/009), so that
an agent's position (a ``seq``) never passes over an event that commits later."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from agents.personas import SARAH_ID
from tests.agents.conftest import fetch, make_thread

Pool = AsyncConnectionPool[Any]
INSERT = (
    "INSERT INTO events (id, thread_id, user_id, kind, data, status)"
    " VALUES (%s, %s, %s, %s, %s, %s)"
)


def text(words: str) -> Jsonb:
    return Jsonb({"text": words})


async def seqs(pool: Pool, thread: uuid.UUID) -> dict[uuid.UUID, int]:
    rows = await fetch(pool, "SELECT id, seq FROM events WHERE thread_id = %s", thread)
    return {row[0]: int(row[1]) for row in rows}


async def test_a_later_commit_gets_a_later_seq(burn_dsn: str, pool: Pool) -> None:
    thread, owner = await make_thread(pool)
    first, second = uuid.uuid4(), uuid.uuid4()
    async with (
        await psycopg.AsyncConnection.connect(burn_dsn) as slow,
        await psycopg.AsyncConnection.connect(burn_dsn, autocommit=True) as quick,
    ):
        # the slow writer inserts first and commits last
        await slow.execute(INSERT, (first, thread, owner, "text", text("first"), "final"))
        blocked = asyncio.create_task(
            quick.execute(INSERT, (second, thread, owner, "text", text("second"), "final"))
        )
        await asyncio.sleep(0.3)
        assert not blocked.done()  # the thread's writers take turns
        await slow.commit()
        await blocked
    numbers = await seqs(pool, thread)
    assert numbers[first] < numbers[second]


async def test_a_streamed_reply_is_numbered_when_it_becomes_final(pool: Pool) -> None:
    thread, owner = await make_thread(pool)
    reply, meanwhile = uuid.uuid4(), uuid.uuid4()
    streaming = {"id": "toolu_1", "name": "roast_user", "input": {"roast": "So far"}}
    final = {"id": "toolu_1", "name": "roast_user", "input": {"roast": "So far, so good."}}
    async with pool.connection() as conn:
        await conn.execute(
            INSERT, (reply, thread, SARAH_ID, "tool_use", Jsonb(streaming), "streaming")
        )
        await conn.execute(INSERT, (meanwhile, thread, owner, "text", text("hello"), "final"))
        before = await seqs(pool, thread)
        assert before[reply] < before[meanwhile]
        await conn.execute(
            "UPDATE events SET data = %s, status = 'final' WHERE id = %s",
            (Jsonb(final), reply),
        )
    after = await seqs(pool, thread)
    assert after[meanwhile] == before[meanwhile] < after[reply]
