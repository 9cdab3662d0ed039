"""The worker's heartbeat beats from its own thread: a busy loop does not stop it, a stalled
one does (on real Postgres)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from psycopg_pool import AsyncConnectionPool

from agents.heartbeat import Heartbeat
from tests.agents.conftest import fetch

Pool = AsyncConnectionPool[Any]


async def row_is_live(pool: Pool, worker: str) -> bool:
    rows = await fetch(pool, "SELECT expires_at > now() FROM agents.workers WHERE id = %s", worker)
    return bool(rows and rows[0][0])


async def test_a_busy_loop_does_not_stop_the_heartbeat(pool: Pool, burn_dsn: str) -> None:
    beats: list[bool] = []
    heartbeat = Heartbeat(burn_dsn, "w1", 1.0, lambda _sent, live: beats.append(live))
    tick = asyncio.create_task(heartbeat.tick())
    heartbeat.start()
    try:
        await asyncio.sleep(0.3)
        time.sleep(2.5)  # noqa: ASYNC251  (the worker's loop busy for over twice the TTL)
        assert await row_is_live(pool, "w1")
        assert beats[0] is False  # a new worker
        assert beats[1:] and all(beats[1:])  # never lapsed
        assert len(beats) >= 8  # every TTL / 4 while the loop was busy
    finally:
        await asyncio.to_thread(heartbeat.stop)
        tick.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tick


async def test_a_stalled_loop_lets_the_row_expire(pool: Pool, burn_dsn: str) -> None:
    beats: list[bool] = []
    heartbeat = Heartbeat(
        burn_dsn, "w2", 0.6, lambda _sent, live: beats.append(live), stall_limit=0.3
    )
    heartbeat.start()  # no tick: the loop never shows that it runs
    try:
        await asyncio.sleep(1.5)
        assert beats  # it beat while the last sign of the loop was recent
        assert not await row_is_live(pool, "w2")
        count = len(beats)
        await asyncio.sleep(0.5)
        assert len(beats) == count  # and beats no more
    finally:
        await asyncio.to_thread(heartbeat.stop)
