"""TanStack DB's electric collection syncs from syncd: eager and on-demand modes, awaitTxId."""

from __future__ import annotations

from typing import Any, Literal

import psycopg
import pytest

from tests.e2e.support import create_items, random_transactions, syncd_fixture
from tests.e2e.support import expected_collection_rows as expected_rows
from tests.e2e.tanstack import CollectionFollower, Filter, tanstack_modules_ready
from tests.syncd_process import SyncdProcess

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not tanstack_modules_ready(), reason="run `make js` first"),
]

syncd = syncd_fixture(chunk_bytes=65536)


def execute(dsn: str, *statements: str) -> int:
    """Run ``statements`` in one transaction; return its 32-bit xid, as Electric's txids."""
    with psycopg.connect(dsn) as conn:
        for statement in statements:
            conn.execute(statement)  # test-controlled text
        row = conn.execute("SELECT pg_current_xact_id()::xid::text").fetchone()
        assert row is not None
        txid = int(row[0])
    return txid


@pytest.mark.parametrize(
    "filters",
    [(), (("lt", "n", 50),)],
    ids=["whole-table", "n<50"],
)
async def test_eager_live_query_follows_changes(
    syncd: SyncdProcess, pg_dsn: str, filters: tuple[Filter, ...]
) -> None:
    create_items(pg_dsn, "public", "items", 2_000)
    where = "n < 50" if filters else "true"
    async with CollectionFollower(syncd.shape_url, "items", filters=filters) as follower:
        await follower.wait_for_rows(expected_rows(pg_dsn, where), timeout=60)
        random_transactions(pg_dsn, "public", "items", 100, seed=5)
        expected, table_size = expected_rows(pg_dsn, where), len(expected_rows(pg_dsn))
        # The source collection may apply its last transactions after the live query matches.
        await follower.wait_for(
            lambda rows: rows == expected and follower.source_size == table_size,
            timeout=60,
            expected=expected,
        )
        assert not follower.errors


async def test_await_txid(syncd: SyncdProcess, pg_dsn: str) -> None:
    # Committed before the collection started: visible through the snapshot-end's xmin/xmax.
    created = execute(
        pg_dsn,
        "CREATE TABLE items (id bigint PRIMARY KEY, title text, n int4 NOT NULL, flag bool)",
        "INSERT INTO items SELECT g, 'title ' || g, g % 100, g % 3 = 0"
        " FROM generate_series(1, 100) g",
    )
    async with CollectionFollower(syncd.shape_url, "items") as follower:
        await follower.wait_for_rows(expected_rows(pg_dsn))
        assert await follower.await_txid(created, timeout=5.0), follower.last_txid_reply

        # A live write: resolved by the txids header of its change messages.
        inserted = execute(pg_dsn, "INSERT INTO items VALUES (1001, 'new', 7, true)")
        assert await follower.await_txid(inserted, timeout=10.0), follower.last_txid_reply
        await follower.wait_for(lambda rows: "1001" in rows, timeout=5.0)

        # Awaited before it is written: resolves when the change arrives.
        with psycopg.connect(pg_dsn) as conn:
            conn.execute("UPDATE items SET title = 'changed' WHERE id = 5")
            row = conn.execute("SELECT pg_current_xact_id()::xid::text").fetchone()
            assert row is not None
            updated = int(row[0])
        assert await follower.await_txid(updated, timeout=10.0), follower.last_txid_reply
        await follower.wait_for_rows(expected_rows(pg_dsn), timeout=5.0)

        # A rolled-back transaction never shows up.
        with psycopg.connect(pg_dsn) as conn:
            conn.execute("DELETE FROM items WHERE id = 6")
            row = conn.execute("SELECT pg_current_xact_id()::xid::text").fetchone()
            assert row is not None
            rolled_back = int(row[0])
            conn.rollback()
        assert not await follower.await_txid(rolled_back, timeout=1.0)
        assert follower.last_txid_reply is not None
        assert follower.last_txid_reply["error"]["name"] == "TimeoutWaitingForTxIdError"
        assert not follower.errors


def subset_requests(follower: CollectionFollower) -> list[dict[str, Any]]:
    """The subset snapshot requests the client made (GET with subset__*, or POST)."""
    return [
        r
        for r in follower.requests
        if r["type"] == "request" and ("subset__" in r["url"] or r["method"] == "POST")
    ]


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_on_demand_loads_subsets(
    syncd: SyncdProcess, pg_dsn: str, method: Literal["GET", "POST"]
) -> None:
    create_items(pg_dsn, "public", "items", 2_000)
    async with CollectionFollower(
        syncd.shape_url,
        "items",
        sync_mode="on-demand",
        filters=[("lt", "n", 50)],
        subset_method=method,
        log_requests=True,
    ) as follower:
        await follower.wait_for_rows(expected_rows(pg_dsn, "n < 50"), timeout=20)
        # Only the subset was loaded, through a subset request.
        assert follower.source_size == len(expected_rows(pg_dsn, "n < 50"))
        requests = subset_requests(follower)
        assert requests, follower.requests
        assert all(r["method"] == method for r in requests), requests

        # Live changes arrive through the changes_only log: rows entering the filter by
        # insert, changing inside it, leaving it by update and by delete.
        execute(
            pg_dsn,
            "INSERT INTO items VALUES (5001, 'in', 10, true), (5002, 'out', 90, false)",
            "UPDATE items SET title = 'renamed' WHERE id = 1",
            "UPDATE items SET n = 95 WHERE id = 2",
            "DELETE FROM items WHERE id = 3",
        )
        await follower.wait_for_rows(expected_rows(pg_dsn, "n < 50"), timeout=20)
        assert not follower.errors


async def test_on_demand_ordered_limit(syncd: SyncdProcess, pg_dsn: str) -> None:
    create_items(pg_dsn, "public", "items", 500)
    async with CollectionFollower(
        syncd.shape_url,
        "items",
        sync_mode="on-demand",
        filters=[("gte", "n", 90)],
        order_by="id",
        descending=True,
        limit=10,
        subset_method="POST",
        log_requests=True,
    ) as follower:
        expected = expected_rows(
            pg_dsn, "id IN (SELECT id FROM items WHERE n >= 90 ORDER BY id DESC LIMIT 10)"
        )
        await follower.wait_for_rows(expected, timeout=20)
        assert any(r["body"].get("limit") for r in subset_requests(follower)), follower.requests
        assert not follower.errors
