"""Compaction in a live daemon: an update-heavy workload while shape logs are compacted in the
background; clients that stopped at offsets before, during and after the compactions catch up
to exactly ``SELECT``, the logs shrink, and ``kill -9`` at any moment loses nothing."""

from __future__ import annotations

import copy
import random
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from shapes.messages import relation_key_prefix, row_key
from tests.shape_reader import ShapeCursor, catch_up
from tests.syncd.test_metrics import scrape, value
from tests.syncd_process import SyncdProcess

pytestmark = pytest.mark.timeout(300)

KEYS = 30
SHAPES = [
    {"table": "items"},
    {"table": "items", "where": "a % 3 = 0"},
    {"table": "items", "where": "id IN (SELECT item FROM picks)"},  # moves in and out, tagged
]
COMPACTION = {"compaction_min_bytes": "4K", "compaction_idle": "0.3"}


def expected(dsn: str, where: str | None) -> dict[str, dict[str, Any]]:
    prefix = relation_key_prefix("public", "items")
    query = "SELECT id::text, a::text, b FROM items" + (f" WHERE {where}" if where else "")
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(query).fetchall()
    return {row_key(prefix, {"id": i}, ["id"]): {"id": i, "a": a, "b": b} for i, a, b in rows}


def churn(dsn: str, rng: random.Random, transactions: int) -> None:
    """Transactions of mostly updates, some deletes and re-inserts of rows, and picks added and
    removed (which move rows in and out of the subquery shape)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(transactions):
            with conn.transaction():
                for _ in range(rng.randint(1, 6)):
                    key = rng.randrange(KEYS)
                    roll = rng.random()
                    if roll < 0.03:
                        conn.execute("DELETE FROM picks WHERE item = %s", (key,))
                    elif roll < 0.06:
                        conn.execute(
                            "INSERT INTO picks VALUES (%s) ON CONFLICT (item) DO NOTHING", (key,)
                        )
                    elif roll < 0.1:
                        conn.execute("DELETE FROM items WHERE id = %s", (key,))
                    elif roll < 0.14:
                        conn.execute(
                            "INSERT INTO items VALUES (%s, %s, %s) ON CONFLICT (id) DO NOTHING",
                            (key, rng.randrange(9), "x" * rng.randrange(200)),
                        )
                    else:
                        conn.execute(
                            "UPDATE items SET a = %s, b = %s WHERE id = %s",
                            (rng.randrange(9), "y" * rng.randrange(200), key),
                        )


def current_lsn(dsn: str) -> int:
    """Past every commit so far: the insert position (the test cluster commits
    asynchronously, so the write position can still be behind a commit)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def table(pg_dsn: str) -> str:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, a int, b text)")
        conn.execute(
            "INSERT INTO items SELECT g, g %% 9, 'row' FROM generate_series(0, %s) g", (KEYS - 1,)
        )
        conn.execute("CREATE TABLE picks (item int PRIMARY KEY)")
        conn.execute("INSERT INTO picks SELECT g FROM generate_series(0, %s, 2) g", (KEYS - 1,))
    return pg_dsn


def check_all(
    client: httpx.Client, daemon: SyncdProcess, dsn: str, cursors: list[ShapeCursor]
) -> None:
    """Every cursor, from wherever it stopped, catches up to exactly SELECT."""
    lsn = current_lsn(dsn)
    for n, cursor in enumerate(cursors):
        start = (cursor.offset, cursor.handle, len(cursor.seen))
        catch_up(client, daemon.shape_url, cursor, min_lsn=lsn)
        want = expected(dsn, cursor.params.get("where"))
        wrong = sorted(k for k in set(want) | set(cursor.rows) if want.get(k) != cursor.rows.get(k))
        assert not wrong, (n, len(cursors), start, cursor.params, wrong[:3])


def log_bytes(storage: Path) -> int:
    return sum(p.stat().st_size for p in storage.glob("shapes/*/log*.bin"))


def test_clients_at_any_offset_converge_while_logs_are_compacted(
    table: str, tmp_path: Path
) -> None:
    daemon = SyncdProcess(table, tmp_path / "storage", **COMPACTION)
    daemon.start()
    rng = random.Random(1)
    try:
        with httpx.Client(timeout=30) as client:
            live = [ShapeCursor(dict(params)) for params in SHAPES]
            for cursor in live:
                catch_up(client, daemon.shape_url, cursor)
            stopped: list[ShapeCursor] = []

            def churn_and_stop_a_client_of_each_shape() -> None:
                churn(table, rng, 40)
                lsn = current_lsn(table)
                for cursor in live:
                    catch_up(client, daemon.shape_url, cursor, min_lsn=lsn)
                    stopped.append(copy.deepcopy(cursor))

            for _ in range(8):  # clients stop at offsets before, between and after compactions
                churn_and_stop_a_client_of_each_shape()
                time.sleep(rng.uniform(0, 1.5))  # a quiet shape is compacted after 0.3 s
            # How many of those pauses a compaction fell into depends on the machine's speed,
            # and the filtered shapes' logs gain little from one (their updates move rows in
            # and out, which end runs). The shape of every row always does: more rounds, each
            # with a pause longer than the compactor's look, until three compactions happened.
            for _ in range(12):
                if value(scrape(daemon), "syncd_compactions_total") >= 3:
                    break
                churn_and_stop_a_client_of_each_shape()
                time.sleep(2.5)
            assert value(scrape(daemon), "syncd_compactions_total") >= 3
            churn(table, rng, 40)
            fresh = [ShapeCursor(dict(params)) for params in SHAPES]
            check_all(client, daemon, table, [*live, *stopped, *fresh])
            written = sum(len(c.seen) for c in live)
            assert written > 1000
            samples = scrape(daemon)
            assert value(samples, "syncd_compaction_failures_total") == 0
            assert value(samples, "syncd_compaction_duration_seconds_count") >= 3
            # most of what was written went: the updates of a key became one
            reclaimed = value(samples, "syncd_compaction_reclaimed_bytes_total")
            assert reclaimed > log_bytes(daemon.storage_dir)
        daemon.restart()
        with httpx.Client(timeout=30) as client:
            check_all(client, daemon, table, [*stopped[:4], ShapeCursor(dict(SHAPES[0]))])
        assert not list(daemon.storage_dir.glob("shapes/*/*.tmp"))
    finally:
        daemon.stop()


def test_kill_9_during_compactions_loses_nothing(table: str, tmp_path: Path) -> None:
    daemon = SyncdProcess(table, tmp_path / "storage", **COMPACTION)
    daemon.start()
    rng = random.Random(2)
    stopped: list[ShapeCursor] = []
    try:
        with httpx.Client(timeout=30) as client:
            for round_ in range(6):
                cursors = [ShapeCursor(dict(params)) for params in SHAPES]
                for cursor in cursors:
                    catch_up(client, daemon.shape_url, cursor)
                stopped.extend(copy.deepcopy(c) for c in cursors)
                churn(table, rng, 60)
                time.sleep(rng.uniform(0.0, 1.2))  # compactions run about every second
                daemon.kill()
                daemon.start()
                if round_ % 2:
                    churn(table, rng, 10)
            check_all(client, daemon, table, [*stopped, ShapeCursor(dict(SHAPES[1]))])
        assert all(c.refetches == 0 for c in stopped), "a shape was lost across a crash"
    finally:
        daemon.stop()
