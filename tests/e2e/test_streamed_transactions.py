"""Large transactions that Postgres streams before they commit, followed by the official client.

The daemon's walsender gets ``logical_decoding_work_mem=64kB`` so that a few thousand rows are
enough to make Postgres stream a transaction in blocks before its commit or abort.
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from tests.e2e.jsclient import ShapeFollower
from tests.e2e.support import create_items, expected_rows, needs_js_client, syncd_fixture
from tests.syncd_process import SyncdProcess

pytestmark = [pytest.mark.e2e, needs_js_client]

syncd = syncd_fixture(replication_options="-c logical_decoding_work_mem=64kB")


def big_transaction(
    dsn: str, first_id: int, rows: int, *, commit: bool, spool_dir: Path | None = None
) -> None:
    """Insert ``rows`` rows and touch a few old ones, then commit or roll back.

    With ``spool_dir``, the rollback waits until syncd has spooled part of the transaction:
    Postgres (16+) never streams a transaction that has already aborted when it is decoded.
    """
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO items SELECT g, repeat('x', 200) || g, g %% 100, true"
            " FROM generate_series(%s::int, %s::int) g",
            (first_id, first_id + rows - 1),
        )
        conn.execute("UPDATE items SET title = 'touched' WHERE id <= 50")
        if commit:
            conn.commit()
            return
        deadline = time.monotonic() + 30
        while spool_dir is not None and not any(spool_dir.glob("*")):
            assert time.monotonic() < deadline, "the transaction was never streamed"
            time.sleep(0.02)
        conn.rollback()


@pytest.mark.parametrize("live_sse", [False, True], ids=["long-poll", "sse"])
async def test_streamed_abort_leaves_no_trace_and_commit_arrives_whole(
    syncd: SyncdProcess, pg_dsn: str, live_sse: bool
) -> None:
    create_items(pg_dsn, "public", "items", 100)
    async with ShapeFollower(syncd.shape_url, "items", live_sse=live_sse) as follower:
        await follower.wait_for_rows(expected_rows(pg_dsn, "public", "items"))
        spool_dir = syncd.storage_dir / "spool"
        big_transaction(pg_dsn, 10_000, 5_000, commit=False, spool_dir=spool_dir)
        big_transaction(pg_dsn, 20_000, 5_000, commit=True)
        rows = await follower.wait_for_rows(expected_rows(pg_dsn, "public", "items"), timeout=120)
        assert len(rows) == 5_100
        assert not any(key.endswith('/"10000"') for key in rows)
        assert follower.must_refetch_count == 0
    log = syncd.log_tail(10_000)
    assert "aborted" in log and "applied streamed transaction" in log  # really streamed
