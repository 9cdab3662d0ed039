"""The official ``@electric-sql/client`` and TanStack DB read shape logs that syncd has compacted:
runs of updates merged into one update each (all the run's columns, the latest values). Clients
that follow the shape live, and clients that start after the compactions and read the merged
log from its beginning, all hold exactly ``SELECT``."""

from __future__ import annotations

import asyncio
import random

import psycopg
import pytest

from tests.e2e.jsclient import ShapeFollower
from tests.e2e.support import (
    create_items,
    expected_collection_rows,
    expected_rows,
    needs_js_client,
    syncd_fixture,
)
from tests.e2e.tanstack import CollectionFollower, tanstack_modules_ready
from tests.syncd.test_metrics import scrape, value, wait_until
from tests.syncd_process import SyncdProcess

pytestmark = [
    pytest.mark.e2e,
    needs_js_client,
    pytest.mark.skipif(not tanstack_modules_ready(), reason="run `make js` first"),
    pytest.mark.timeout(300),
]

syncd = syncd_fixture(chunk_bytes=8192, compaction_min_bytes="4K", compaction_idle="0.3")

ROWS = 200
HOT_KEYS = 20


def churn(dsn: str, rng: random.Random, transactions: int) -> None:
    """Transactions of updates to a few hot rows, each changing one or two columns (so merged
    updates must join columns from different messages), and now and then a row deleted and
    inserted again (which ends a run of updates)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(transactions):
            with conn.transaction():
                for _ in range(rng.randint(1, 5)):
                    key = rng.randint(1, HOT_KEYS)
                    roll = rng.random()
                    if roll < 0.05:
                        conn.execute("DELETE FROM items WHERE id = %s", (key,))
                        conn.execute(
                            "INSERT INTO items VALUES (%s, %s, %s, %s)",
                            (key, f"again {rng.random()}", rng.randint(0, 99), False),
                        )
                    elif roll < 0.4:
                        title = f"t{rng.random()}" * rng.randint(1, 8)
                        conn.execute("UPDATE items SET title = %s WHERE id = %s", (title, key))
                    elif roll < 0.7:
                        conn.execute(
                            "UPDATE items SET n = %s WHERE id = %s", (rng.randint(0, 99), key)
                        )
                    else:
                        conn.execute("UPDATE items SET flag = NOT flag WHERE id = %s", (key,))


async def compactions_reach(daemon: SyncdProcess, count: int) -> None:
    def reached() -> bool:
        return value(scrape(daemon), "syncd_compactions_total") >= count

    await asyncio.to_thread(wait_until, reached, 90)


async def test_live_and_fresh_clients_read_compacted_logs(syncd: SyncdProcess, pg_dsn: str) -> None:
    create_items(pg_dsn, "public", "items", ROWS)
    rng = random.Random(4)
    async with (
        ShapeFollower(syncd.shape_url, "items") as live_client,
        CollectionFollower(syncd.shape_url, "items") as live_collection,
    ):
        await live_client.wait_for_rows(expected_rows(pg_dsn, "public", "items"), timeout=60)
        await live_collection.wait_for_rows(expected_collection_rows(pg_dsn), timeout=60)
        for _ in range(6):
            churn(pg_dsn, rng, 60)
            await asyncio.sleep(rng.uniform(0.2, 0.8))  # a quiet log is compacted after 0.3 s
        await compactions_reach(syncd, 1)
        churn(pg_dsn, rng, 20)  # a tail after the compacted part
        async with (
            ShapeFollower(syncd.shape_url, "items") as fresh_client,
            ShapeFollower(syncd.shape_url, "items", live_sse=True) as fresh_sse_client,
            CollectionFollower(syncd.shape_url, "items") as fresh_collection,
        ):
            for round_ in range(2):
                rows = expected_rows(pg_dsn, "public", "items")
                collection_rows = expected_collection_rows(pg_dsn)
                for follower in (live_client, fresh_client, fresh_sse_client):
                    await follower.wait_for_rows(rows, timeout=60)
                for collection in (live_collection, fresh_collection):
                    await collection.wait_for_rows(collection_rows, timeout=60)
                if round_ == 0:  # and they go on together after more compactions
                    churn(pg_dsn, rng, 150)
                    await compactions_reach(syncd, 2)
            for follower in (live_client, fresh_client, fresh_sse_client):
                assert not follower.fatal_errors
                assert follower.must_refetch_count == 0
            assert not live_collection.errors and not fresh_collection.errors
    samples = scrape(syncd)
    assert value(samples, "syncd_compaction_failures_total") == 0
    assert value(samples, "syncd_compaction_reclaimed_bytes_total") > 0
