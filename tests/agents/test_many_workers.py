"""Two workers over 200 threads (600 agents): every agent runs in exactly one of them, always,
while the second worker joins and the load is split, and after the first one leaves."""

from __future__ import annotations

import asyncio

import pytest

from agents.leases import AgentKey
from agents.worker import Worker
from tests.agents.conftest import Runtime, fetch, make_thread, wait_until

THREADS = 200


def running(worker: Worker) -> set[AgentKey]:
    return {key for key, entry in worker.running.items() if not entry.task.done()}


@pytest.mark.slow
async def test_two_workers_share_the_agents_without_overlap(runtime: Runtime) -> None:
    for _ in range(THREADS):
        await make_thread(runtime.pool)
    rows = await fetch(runtime.pool, "SELECT thread_id, user_id FROM memberships m"
                       " JOIN users u ON u.id = m.user_id WHERE u.kind = 'agent'")  # fmt: skip
    everyone = {AgentKey(t, a) for t, a in rows}
    assert len(everyone) == 3 * THREADS
    overlaps: list[set[AgentKey]] = []
    first = runtime.start_worker("w1", scan_interval=0.2)

    async def all_in_first() -> bool:
        return running(first) == everyone

    await wait_until(all_in_first, limit=120)
    second = runtime.start_worker("w2", scan_interval=0.2)

    async def sample() -> None:
        while True:
            overlaps.append(running(first) & running(second))
            await asyncio.sleep(0.005)  # many samples, however quick the hand-over

    sampler = asyncio.create_task(sample())

    async def split() -> bool:
        a, b = running(first), running(second)
        return a | b == everyone and abs(len(a) - len(b)) <= 1

    await wait_until(split, limit=120)
    await runtime.stop_worker("w1")

    async def all_in_second() -> bool:
        return running(second) == everyone

    await wait_until(all_in_second, limit=120)
    sampler.cancel()
    assert len(overlaps) > 10
    assert not any(overlaps)
    holders = await fetch(
        runtime.pool, "SELECT DISTINCT worker FROM agents.leases WHERE status = 'active'"
    )
    assert holders == [("w2",)]
