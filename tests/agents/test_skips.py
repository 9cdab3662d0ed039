"""A worker's skips written together, fenced row by row, on real Postgres."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

import agents.skips
from agents import leases
from agents.leases import AgentKey, Lease
from agents.personas import FRANKIE_ID, JERRY_ID, SARAH_ID
from agents.skips import Skips
from agents.turns import write_skips
from tests.agents.conftest import fetch, make_thread

Pool = AsyncConnectionPool[Any]


async def held_agents(pool: Pool, worker: str, threads: int) -> list[Lease]:
    keys = []
    for _ in range(threads):
        thread, _ = await make_thread(pool)
        keys += [AgentKey(thread, agent) for agent in (SARAH_ID, JERRY_ID, FRANKIE_ID)]
    await leases.ensure_agents(pool, keys)
    await leases.register_worker(pool, worker, ttl=30)
    return await leases.acquire(pool, worker, limit=len(keys))


async def positions(pool: Pool) -> dict[AgentKey, tuple[int, int]]:
    rows = await fetch(
        pool, "SELECT thread_id, agent_id, position, position_lsn FROM agents.leases"
    )
    return {AgentKey(r[0], r[1]): (int(r[2]), int(r[3])) for r in rows}


async def test_skips_move_positions_forward_together(pool: Pool) -> None:
    held = await held_agents(pool, "w1", threads=4)
    lost: list[Lease] = []
    skips = Skips(pool, "w1", lost.append)
    # a burst: every agent skips three times before the loop yields; later skips win, a lower
    # position never moves one back
    for step in (3, 7, 5):
        for n, lease in enumerate(held):
            skips.record(lease, step + n, 100 * step + n)
    assert skips.pending == len(held)
    await skips.flush()
    assert skips.pending == 0 and lost == []
    moved = await positions(pool)
    assert moved == {lease.key: (7 + n, 700 + n) for n, lease in enumerate(held)}

    # a position already further on stays where it is
    skips.record(held[0], 1, 1)
    await skips.flush()
    assert (await positions(pool))[held[0].key] == (7, 700)


async def test_a_skip_of_a_lost_lease_writes_nothing_and_is_reported(pool: Pool) -> None:
    held = await held_agents(pool, "w1", threads=2)
    taken = held[0]
    async with pool.connection() as conn:  # another worker took it over: a new epoch
        await conn.execute(
            "UPDATE agents.leases SET worker = 'w2', epoch = epoch + 1"
            " WHERE thread_id = %s AND agent_id = %s",
            (taken.key.thread_id, taken.key.agent_id),
        )
    lost: list[Lease] = []
    skips = Skips(pool, "w1", lost.append)
    for lease in held:
        skips.record(lease, 9, 90)
    await skips.flush()
    assert lost == [taken]
    moved = await positions(pool)
    assert moved[taken.key] == (0, 0)
    assert all(moved[lease.key] == (9, 90) for lease in held[1:])


async def test_skips_noted_during_a_write_go_in_the_next_one(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = await held_agents(pool, "w1", threads=10)
    writes: list[int] = []

    async def counted(pool: Pool, worker: str, batch: Sequence[tuple[Lease, int, int]]) -> Any:
        writes.append(len(batch))
        return await write_skips(pool, worker, batch)

    monkeypatch.setattr(agents.skips, "write_skips", counted)
    skips = Skips(pool, "w1", lambda lease: None)
    for round_ in range(1, 6):
        for lease in held:
            skips.record(lease, round_, round_)
        await asyncio.sleep(0)  # the first write starts; the next rounds are noted meanwhile
    await skips.flush()
    assert await positions(pool) == {lease.key: (5, 5) for lease in held}
    # 150 skips of 30 agents: the first round in one write, the others in one or two more
    assert writes[0] == len(held) and 2 <= len(writes) <= 3, writes
