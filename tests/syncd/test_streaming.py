"""Large transactions with pgoutput streaming: spooled per xid, applied on Stream Commit.

The daemon's walsender gets ``logical_decoding_work_mem=64kB`` (``SYNCD_REPLICATION_OPTIONS``),
so a few thousand rows are enough for Postgres to stream a transaction before it commits.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from bench.large_txn import measure_large_txn
from syncd.daemon import with_session_options
from syncd.replication import ReplicationSettings
from tests.shape_reader import ShapeCursor, catch_up
from tests.syncd_process import SyncdProcess

SMALL_WORK_MEM = "-c logical_decoding_work_mem=64kB"
PAD = "p" * 100


@pytest.fixture
def syncd(pg_dsn: str, tmp_path: Path) -> Iterator[SyncdProcess]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, title text)")
        conn.execute("INSERT INTO items SELECT g, 'seed' FROM generate_series(1, 5) g")
    daemon = SyncdProcess(pg_dsn, tmp_path / "storage", replication_options=SMALL_WORK_MEM)
    daemon.start()
    yield daemon
    daemon.stop()


def wal_position(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
        assert row is not None
        return int(row[0])


def follow(client: httpx.Client, daemon: SyncdProcess, cursor: ShapeCursor, dsn: str) -> None:
    """Catch up with everything committed so far (raises on a change delivered twice)."""
    catch_up(client, daemon.shape_url, cursor, min_lsn=wal_position(dsn))


def changes(client: httpx.Client, daemon: SyncdProcess, handle: str) -> list[dict[str, Any]]:
    """Every change message of the shape's log, in order."""
    out: list[dict[str, Any]] = []
    offset = "0_inf"
    while True:
        answer = client.get(
            daemon.shape_url, params={"table": "items", "handle": handle, "offset": offset}
        )
        assert answer.status_code == 200, answer.text
        batch = json.loads(answer.content)
        out += [m for m in batch if "operation" in m["headers"]]
        offset = answer.headers["electric-offset"]
        if "electric-up-to-date" in answer.headers:
            return out


def database_rows(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {
            f'"public"."items"/"{i}"': title
            for i, title in conn.execute("SELECT id, title FROM items").fetchall()
        }


def shape_rows(cursor: ShapeCursor) -> dict[str, str]:
    return {key: row["title"] for key, row in cursor.rows.items()}


def streamed_transactions(dsn: str, slot: str, at_least: int) -> int:
    """``stream_txns`` of the slot (proof that Postgres streamed), once it reaches at_least."""
    deadline = time.monotonic() + 15
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = %s", (slot,)
            ).fetchone()
            count = int(row[0]) if row is not None and row[0] is not None else 0
            if count >= at_least or time.monotonic() > deadline:
                return count
            time.sleep(0.1)


def wait_for(condition: Callable[[], bool], within: float, what: str, every: float = 0.05) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(every)


def spool_files(daemon: SyncdProcess) -> list[Path]:
    spool = daemon.storage_dir / "spool"
    return sorted(spool.glob("*.bin")) if spool.exists() else []


def test_streamed_transaction_that_aborts_leaves_no_trace(syncd: SyncdProcess, pg_dsn: str) -> None:
    cursor = ShapeCursor({"table": "items"})
    with httpx.Client(timeout=30) as client:
        follow(client, syncd, cursor, pg_dsn)
        with psycopg.connect(pg_dsn) as conn:
            conn.execute(
                "INSERT INTO items SELECT g, %s FROM generate_series(1000, 5000) g", (PAD,)
            )
            conn.execute("UPDATE items SET title = 'changed' WHERE id <= 5")
            wait_for(lambda: bool(spool_files(syncd)), 15, "no spool appeared")  # streaming
            conn.rollback()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO items VALUES (100, 'after')")
        follow(client, syncd, cursor, pg_dsn)
        assert shape_rows(cursor) == database_rows(pg_dsn)
        assert len(cursor.rows) == 6
        assert streamed_transactions(pg_dsn, syncd.settings["slot"], 1) >= 1
        wait_for(lambda: not spool_files(syncd), 10, "the aborted transaction's spool stayed")


def test_streamed_transaction_arrives_whole_and_once(syncd: SyncdProcess, pg_dsn: str) -> None:
    cursor = ShapeCursor({"table": "items"})
    with httpx.Client(timeout=30) as client:
        follow(client, syncd, cursor, pg_dsn)
        with psycopg.connect(pg_dsn) as conn:
            conn.execute(
                "INSERT INTO items SELECT g, %s || g FROM generate_series(1000, 7999) g", (PAD,)
            )
            conn.execute("UPDATE items SET title = 'changed' WHERE id <= 5")
            conn.execute("DELETE FROM items WHERE id BETWEEN 2000 AND 2099")
            # Meanwhile a small transaction commits first (it is not streamed).
            with psycopg.connect(pg_dsn, autocommit=True) as other:
                other.execute("INSERT INTO items VALUES (100, 'small')")
            conn.commit()
        follow(client, syncd, cursor, pg_dsn)
        assert shape_rows(cursor) == database_rows(pg_dsn)
        assert cursor.handle is not None
        messages = changes(client, syncd, cursor.handle)
    assert streamed_transactions(pg_dsn, syncd.settings["slot"], 1) >= 1
    big = [m for m in messages if m["headers"]["lsn"] == messages[-1]["headers"]["lsn"]]
    assert len(big) == 7000 + 5 + 100
    assert [m["headers"]["op_position"] for m in big] == list(range(0, 2 * len(big), 2))
    assert [m["headers"].get("last", False) for m in big] == [False] * (len(big) - 1) + [True]
    assert [m["headers"]["operation"] for m in big[-101:-99]] == ["update", "delete"]
    small = [m for m in messages if m["key"] == '"public"."items"/"100"']
    assert len(small) == 1 and small[0]["headers"]["lsn"] != big[0]["headers"]["lsn"]
    assert int(small[0]["headers"]["lsn"]) < int(big[0]["headers"]["lsn"])
    assert not spool_files(syncd)


def test_rolled_back_savepoints_are_dropped(syncd: SyncdProcess, pg_dsn: str) -> None:
    cursor = ShapeCursor({"table": "items"})
    with httpx.Client(timeout=30) as client:
        follow(client, syncd, cursor, pg_dsn)
        with psycopg.connect(pg_dsn) as conn:

            def insert(first: int, last: int) -> None:
                conn.execute(
                    "INSERT INTO items SELECT g, %s FROM generate_series(%s::int, %s::int) g",
                    (PAD, first, last),
                )

            insert(1000, 2999)  # top level, streamed
            conn.execute("SAVEPOINT a")
            insert(3000, 4999)
            conn.execute("SAVEPOINT b")
            insert(5000, 5999)
            conn.execute("RELEASE SAVEPOINT b")
            conn.execute("ROLLBACK TO SAVEPOINT a")  # drops 3000..5999
            insert(6000, 6999)
            conn.execute("SAVEPOINT c")
            insert(7000, 7999)
            conn.execute("RELEASE SAVEPOINT c")  # kept
            conn.execute("SAVEPOINT d")
            conn.execute("UPDATE items SET title = 'rolled back' WHERE id < 3000")
            conn.execute("ROLLBACK TO SAVEPOINT d")
            conn.execute("UPDATE items SET title = 'kept' WHERE id <= 5")
            conn.commit()
        follow(client, syncd, cursor, pg_dsn)
        rows = shape_rows(cursor)
        assert rows == database_rows(pg_dsn)
        assert cursor.handle is not None
        messages = changes(client, syncd, cursor.handle)
    ids = sorted(int(key.split('"')[-2]) for key in rows)
    assert ids == [*range(1, 6), *range(1000, 3000), *range(6000, 8000)]
    assert "rolled back" not in rows.values()
    assert [rows[f'"public"."items"/"{i}"'] for i in range(1, 6)] == ["kept"] * 5
    assert len(messages) == 2000 + 2000 + 5
    assert [m["headers"]["op_position"] for m in messages] == list(range(0, 2 * 4005, 2))
    assert streamed_transactions(pg_dsn, syncd.settings["slot"], 1) >= 1


def test_crash_during_a_streamed_transaction(syncd: SyncdProcess, pg_dsn: str) -> None:
    cursor = ShapeCursor({"table": "items"})
    with httpx.Client(timeout=30) as client:
        follow(client, syncd, cursor, pg_dsn)
        with psycopg.connect(pg_dsn) as conn:
            conn.execute(
                "INSERT INTO items SELECT g, %s FROM generate_series(1000, 4999) g", (PAD,)
            )
            wait_for(lambda: bool(spool_files(syncd)), 15, "no spool appeared")
            syncd.kill()  # mid-stream: the spool holds part of the transaction
            syncd.start()  # start-up deletes it; Postgres sends the transaction again
            conn.execute(
                "INSERT INTO items SELECT g, %s FROM generate_series(5000, 5999) g", (PAD,)
            )
            conn.commit()
        follow(client, syncd, cursor, pg_dsn)
        assert shape_rows(cursor) == database_rows(pg_dsn)
        assert len(cursor.rows) == 5 + 5000
        assert cursor.refetches == 0

        # A larger one, killed as soon as its replay has started writing the shape log.
        assert cursor.handle is not None
        log_file = syncd.storage_dir / "shapes" / cursor.handle / "log.bin"
        before = log_file.stat().st_size
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO items SELECT g, repeat('z', 300) FROM generate_series(10000, 59999) g"
            )
        wait_for(
            lambda: log_file.stat().st_size != before,
            60,
            "the transaction never reached the shape log",
            every=0.005,
        )
        syncd.kill()
        syncd.start()
        follow(client, syncd, cursor, pg_dsn)
        assert shape_rows(cursor) == database_rows(pg_dsn)
        assert len(cursor.rows) == 5 + 5000 + 50000
        assert cursor.refetches == 0
        messages = changes(client, syncd, cursor.handle)
    big = [m for m in messages if m["headers"]["lsn"] == messages[-1]["headers"]["lsn"]]
    assert [m["headers"]["op_position"] for m in big] == list(range(0, 100000, 2))
    assert [m["headers"].get("last", False) for m in big].count(True) == 1
    assert big[-1]["headers"]["last"] is True
    assert not spool_files(syncd)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_large_transaction_memory_stays_bounded(pg_dsn: str, tmp_path: Path) -> None:
    """A 200 MB transaction (streamed past the default 64 MB work_mem) in well under 300 MB."""
    result = measure_large_txn(pg_dsn, tmp_path, rows=200_000, row_bytes=1000, timeout=90)
    assert result.peak_rss_mb < 200, result
    assert result.log_mb > 200


def test_streaming_falls_back_on_servers_before_14() -> None:
    settings = ReplicationSettings("dbname=x", "s", "p", proto_version=2, streaming=True)
    assert b"proto_version '2'" in settings.start_command(0, 160004)
    assert b"streaming 'on'" in settings.start_command(0, 140000)
    old = settings.start_command(0, 130011)
    assert b"proto_version '1'" in old and b"streaming" not in old


def test_replication_options_are_added_to_the_conninfo() -> None:
    assert with_session_options("dbname=x", None) == "dbname=x"
    params = conninfo_to_dict(with_session_options("dbname=x", SMALL_WORK_MEM))
    assert params["options"] == SMALL_WORK_MEM
    params = conninfo_to_dict(
        with_session_options("dbname=x options='-c wal_sender_timeout=2s'", SMALL_WORK_MEM)
    )
    assert params["options"] == f"-c wal_sender_timeout=2s {SMALL_WORK_MEM}"
