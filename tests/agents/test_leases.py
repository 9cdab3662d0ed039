"""Leases with epoch fencing, on real Postgres."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from agents import leases
from agents.leases import AgentKey, LeaseLost
from agents.personas import FRANKIE_ID, JERRY_ID, SARAH_ID
from agents.turns import write_skips
from tests.agents.conftest import make_thread

Pool = AsyncConnectionPool[Any]


async def expire_worker(pool: Pool, worker: str) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE agents.workers SET expires_at = now() - interval '1 second' WHERE id = %s",
            (worker,),
        )


async def live(pool: Pool, *workers: str) -> None:
    for worker in workers:
        await leases.register_worker(pool, worker, ttl=30)


async def test_a_lease_goes_to_one_worker_and_fences_the_old_holder(pool: Pool) -> None:
    thread, _ = await make_thread(pool)
    key = AgentKey(thread, SARAH_ID)
    await leases.ensure_agents(pool, [key])
    await live(pool, "w1", "w2")
    [first] = await leases.acquire(pool, "w1", limit=10)
    assert first.key == key and first.epoch == 1
    assert await leases.acquire(pool, "w2", limit=10) == []

    await expire_worker(pool, "w1")
    [second] = await leases.acquire(pool, "w2", limit=10)
    assert second.epoch == 2 and second.worker == "w2"

    # the old holder, live again, learns it lost the lease and cannot write
    assert await leases.register_worker(pool, "w1", ttl=30) is False
    assert await leases.still_held(pool, "w1", [first]) == set()
    async with pool.connection() as conn:
        with pytest.raises(LeaseLost):
            async with conn.transaction():
                await leases.fence(conn, first)
                await leases.advance(conn, first, 99, 99)
        async with conn.transaction():
            await leases.fence(conn, second)
            await leases.advance(conn, second, 5, 7)
        cursor = await conn.execute("SELECT position, position_lsn FROM agents.leases")
        assert await cursor.fetchall() == [(5, 7)]
    assert await leases.still_held(pool, "w2", [second]) == {key}
    assert await leases.register_worker(pool, "w2", ttl=30) is True


async def test_a_stopped_agent_cannot_be_renewed_or_fenced(pool: Pool) -> None:
    thread, _ = await make_thread(pool)
    key = AgentKey(thread, JERRY_ID)
    await leases.ensure_agents(pool, [key])
    await live(pool, "w1", "w2")
    [lease] = await leases.acquire(pool, "w1", limit=1)
    await leases.stop_agents(pool, [key], "membership deleted")
    assert await leases.still_held(pool, "w1", [lease]) == set()
    async with pool.connection() as conn:
        with pytest.raises(LeaseLost):
            async with conn.transaction():
                await leases.fence(conn, lease)
        cursor = await conn.execute("SELECT state FROM agent_status")
        assert await cursor.fetchall() == [("stopped",)]
    assert await leases.acquire(pool, "w2", limit=1) == []
    await leases.ensure_agents(pool, [key])  # the membership came back
    [again] = await leases.acquire(pool, "w2", limit=1)
    assert again.epoch == lease.epoch + 1


async def test_racing_workers_split_agents_without_overlap(pool: Pool) -> None:
    keys = []
    for _ in range(40):
        thread, _ = await make_thread(pool, agents=False)
        keys.append(AgentKey(thread, SARAH_ID))
    await leases.ensure_agents(pool, keys)
    await live(pool, *(f"w{n}" for n in range(4)))
    got = await asyncio.gather(*(leases.acquire(pool, f"w{n}", limit=40) for n in range(4)))
    held = [lease.key for batch in got for lease in batch]
    assert sorted(held, key=str) == sorted(keys, key=str)


async def test_fair_share_counts_live_workers(pool: Pool) -> None:
    keys = [AgentKey((await make_thread(pool, agents=False))[0], SARAH_ID) for _ in range(5)]
    await leases.ensure_agents(pool, keys)
    await leases.register_worker(pool, "w1", ttl=30)
    assert await leases.fair_share(pool) == 5
    await leases.register_worker(pool, "w2", ttl=30)
    assert await leases.fair_share(pool) == 3
    await leases.unregister_worker(pool, "w2")
    assert await leases.fair_share(pool) == 5
    assert uuid.UUID(int=0) not in {k.thread_id for k in keys}


async def test_a_worker_that_is_not_live_takes_nothing(pool: Pool) -> None:
    thread, _ = await make_thread(pool)
    await leases.ensure_agents(pool, [AgentKey(thread, SARAH_ID)])
    assert await leases.acquire(pool, "w1", limit=1) == []
    assert await leases.register_worker(pool, "w1", ttl=30) is False  # new
    await expire_worker(pool, "w1")
    assert await leases.acquire(pool, "w1", limit=1) == []


async def test_a_worker_takes_the_agents_of_its_threads_first(pool: Pool) -> None:
    threads = [(await make_thread(pool, agents=False))[0] for _ in range(6)]
    await leases.ensure_agents(pool, [AgentKey(t, SARAH_ID) for t in threads])
    await live(pool, "w1")
    [first] = await leases.acquire(pool, "w1", limit=1)
    await leases.ensure_agents(
        pool, [AgentKey(t, agent) for t in threads for agent in (JERRY_ID, FRANKIE_ID)]
    )
    taken = await leases.acquire(pool, "w1", limit=2)
    assert {lease.key.thread_id for lease in taken} == {first.key.thread_id}
    for _ in range(5):  # each of the other threads comes whole
        chunk = await leases.acquire(pool, "w1", limit=3)
        assert len(chunk) == 3 and len({lease.key.thread_id for lease in chunk}) == 1


async def test_leases_given_back_together_are_claimable(pool: Pool) -> None:
    threads = [(await make_thread(pool, agents=False))[0] for _ in range(3)]
    await leases.ensure_agents(pool, [AgentKey(t, SARAH_ID) for t in threads])
    await live(pool, "w1", "w2")
    held = await leases.acquire(pool, "w1", limit=3)
    await leases.release_all(pool, held[:2])
    assert await leases.still_held(pool, "w1", held) == {held[2].key}
    again = await leases.acquire(pool, "w2", limit=3)
    assert {lease.key for lease in again} == {lease.key for lease in held[:2]}
    assert all(lease.epoch == 2 for lease in again)


async def test_skips_move_only_leases_held_under_the_worker_and_epoch_and_never_back(
    pool: Pool,
) -> None:
    thread, _ = await make_thread(pool)
    keys = [AgentKey(thread, agent) for agent in (SARAH_ID, JERRY_ID, FRANKIE_ID)]
    await leases.ensure_agents(pool, keys)
    await live(pool, "w1")
    by_key = {lease.key: lease for lease in await leases.acquire(pool, "w1", limit=10)}
    sarah, jerry, frankie = (by_key[key] for key in keys)
    stale_jerry = dataclasses.replace(jerry, epoch=jerry.epoch + 1)
    moved = await write_skips(
        pool, "w1", [(sarah, 10, 100), (stale_jerry, 7, 70), (sarah, 4, 40), (frankie, 9, 90)]
    )
    assert moved == {sarah.key, frankie.key}
    assert await write_skips(pool, "w2", [(frankie, 20, 200)]) == set()  # not w2's lease
    assert await write_skips(pool, "w1", []) == set()
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT agent_id, position, position_lsn FROM agents.leases WHERE thread_id = %s",
            (thread,),
        )
        positions = {agent: (position, lsn) for agent, position, lsn in await cursor.fetchall()}
    # sarah's later, lower position did not move her back; jerry's fenced skip wrote nothing
    assert positions == {SARAH_ID: (10, 100), JERRY_ID: (0, 0), FRANKIE_ID: (9, 90)}
