"""A ``Shape`` outlives its subscribers' bugs, and shared shapes that stopped are never reused.

Against a live syncd daemon: a subscriber that raises is logged and skipped; a shape whose
stream failed (or whose event loop ended) is dropped from the registry, so the next
``get_shape`` starts a fresh one.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings

import psycopg
import pytest

from shapes.client import (
    Batch,
    Shape,
    ShapeDefinition,
    ShapeRegistry,
    ShapeRequestError,
    ShapeStream,
    default_registry,
    get_shape,
)
from tests.syncd_process import SyncdProcess

pytestmark = [pytest.mark.timeout(120)]

ITEMS = ShapeDefinition.of("items")


async def write(dsn: str, statement: str) -> int:
    """Run ``statement`` in its own transaction; return its 32-bit txid."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute(statement)
        cursor = await conn.execute("SELECT pg_current_xact_id()::xid::text")
        row = await cursor.fetchone()
        assert row is not None
        await conn.commit()
    return int(row[0])


def inserted_ids(batches: list[Batch]) -> list[int]:
    return [
        m["value"]["id"]
        for batch in batches
        for m in batch
        if m["headers"].get("operation") == "insert"
    ]


async def test_a_raising_subscriber_stops_neither_the_shape_nor_the_others(
    syncd: SyncdProcess, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[Batch] = []

    def broken(batch: Batch) -> None:
        raise ValueError("subscriber bug")

    async with Shape(ShapeStream(syncd.shape_url, ITEMS)) as shape:
        shape.subscribe(broken)
        shape.subscribe(received.append)
        with caplog.at_level(logging.ERROR, logger="shapes.client.shape"):
            await shape.wait_until_up_to_date(30)
            for row_id in (1, 2):
                txid = await write(syncd.dsn, f"INSERT INTO items VALUES ({row_id}, 0, 'x')")
                await shape.wait_for_txid(txid, 30)
        assert shape.error is None and shape.is_running
        assert inserted_ids(received) == [1, 2]
        assert set(shape.rows) == {'"public"."items"/"1"', '"public"."items"/"2"'}
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is ValueError]
    assert len(logged) == 3  # the snapshot's batch and one per insert
    assert "subscriber bug" in caplog.text


async def test_get_shape_never_hands_out_a_failed_shape(syncd: SyncdProcess) -> None:
    later = ShapeDefinition.of("later")  # no such table yet: the stream fails with a 400
    failed = get_shape(syncd.shape_url, later)
    with pytest.raises(ShapeRequestError):
        await failed.wait_until_up_to_date(30)
    assert isinstance(failed.error, ShapeRequestError) and not failed.is_running
    assert len(default_registry) == 0

    await write(syncd.dsn, "CREATE TABLE later (id int PRIMARY KEY)")
    fresh = get_shape(syncd.shape_url, later)
    assert fresh is not failed
    await fresh.wait_until_up_to_date(30)
    await failed.close()  # the old reference: must not release the fresh shape
    assert len(default_registry) == 1 and fresh.is_running
    assert get_shape(syncd.shape_url, later) is fresh
    await fresh.close()
    assert len(default_registry) == 1
    txid = await write(syncd.dsn, "INSERT INTO later VALUES (1)")
    await fresh.wait_for_txid(txid, 30)
    await fresh.close()
    assert len(default_registry) == 0


async def test_a_shape_that_fails_while_live_is_dropped(syncd: SyncdProcess) -> None:
    registry = ShapeRegistry()
    with_title = ShapeDefinition.of("items", columns=["id", "grp", "title"])
    shape = registry.get(syncd.shape_url, with_title)
    await shape.wait_until_up_to_date(30)
    await write(syncd.dsn, "ALTER TABLE items DROP COLUMN title")
    await write(syncd.dsn, "INSERT INTO items VALUES (8, 0)")  # syncd sees the new schema
    with pytest.raises(ShapeRequestError):  # 409 must-refetch, then 400: no column title
        await shape.wait_for_offset("99999999999_0", 30)
    assert len(registry) == 0
    fresh = registry.get(syncd.shape_url, with_title)  # a new shape, not the failed one
    assert fresh is not shape and fresh.is_running
    with pytest.raises(ShapeRequestError):
        await fresh.wait_until_up_to_date(30)
    assert len(registry) == 0
    await shape.close()
    await fresh.close()
    assert len(registry) == 0


def test_a_shape_of_a_finished_event_loop_is_not_reused(syncd: SyncdProcess) -> None:
    """Two ``asyncio.run`` calls: the first leaves its shared shape open (its task is cancelled
    when that loop ends); the second must get a shape that follows the table again."""
    registry = ShapeRegistry()

    async def first() -> Shape:
        shape = registry.get(syncd.shape_url, ITEMS)
        await shape.wait_until_up_to_date(30)
        return shape

    async def second(old: Shape) -> None:
        shape = registry.get(syncd.shape_url, ITEMS)
        assert shape is not old
        txid = await write(syncd.dsn, "INSERT INTO items VALUES (9, 0, 'x')")
        await shape.wait_for_txid(txid, 30)
        await shape.close()

    old = asyncio.run(first())
    asyncio.run(second(old))
    assert len(registry) == 0
    with warnings.catch_warnings():  # the first loop's shape, left open on purpose, leaves
        warnings.simplefilter("ignore", ResourceWarning)  # its client's idle connection
        del old
        gc.collect()
