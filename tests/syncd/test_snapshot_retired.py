"""A shape removed while its snapshot query runs: the snapshot ends quietly, nothing is an error.

The snapshot is held up deterministically: another session holds an ACCESS EXCLUSIVE lock on
the table, so the snapshot's SELECT waits; the shape is deleted while it waits, then the lock
is released and the rows arrive for a log whose files are gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import psycopg
import pytest

from shapes.shape import CanonicalShape
from syncd.engine import Engine, EngineSettings


async def _until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(3000):  # a generous bound for a loaded machine, not a latency limit
        if await condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


async def test_shape_removed_during_its_snapshot_ends_quietly(
    pg_dsn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="syncd.engine")
    with psycopg.connect(pg_dsn, autocommit=True) as setup:
        setup.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
        setup.execute("INSERT INTO items SELECT g, 'x' FROM generate_series(1, 200) g")
    engine = Engine(EngineSettings(pg_dsn, tmp_path / "storage", slot="snapshot_retired"))
    await engine.open()
    locker = await psycopg.AsyncConnection.connect(pg_dsn)
    try:
        # A first shape publishes the table, so the second one's creation needs no lock.
        first = await engine.get_or_create(CanonicalShape("public", "items"))
        await first.ready.wait()
        assert first.status == "ready"

        await locker.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        shape = await engine.get_or_create(CanonicalShape("public", "items", where="id > 10"))

        async def snapshot_waits() -> bool:
            cur = await locker.execute(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'items'::regclass"
            )
            row = await cur.fetchone()
            return row is not None and row[0] > 0

        await _until(snapshot_waits, "the snapshot to wait for the lock")
        engine.delete(shape, "deleted by the test")
        await locker.rollback()

        async def snapshot_ended() -> bool:
            return any(
                shape.handle in r.getMessage() and "snapshot of" in r.getMessage()
                for r in caplog.records
            )

        await _until(snapshot_ended, "the snapshot task to end")
    finally:
        await locker.close()
        await engine.close()

    loud = [r for r in caplog.records if r.name == "syncd.engine" and r.levelno >= logging.WARNING]
    assert loud == [], [r.getMessage() for r in loud]
    assert shape.status == "gone"
    assert shape.failure is None  # waiters see a removed shape, not a failed snapshot
    assert engine.get(first.handle) is first
