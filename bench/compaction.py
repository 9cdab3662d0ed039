"""``compaction`` and ``compaction-ingest``: how small compaction keeps an update-heavy shape,
and what it costs the ingest.

``compaction``: one shape over a table of 1,000 rows takes 1M updates (a thousand transactions,
each updating every row). Once syncd has them all and the shape has been quiet long enough for
its tail to be compacted, the shape's bytes on disk (snapshot, change log, chunk index) are set
against the bytes of its live rows, measured as the snapshot a new shape of the same rows takes.
The baseline is the same figure without compaction: the bytes on disk plus the bytes compaction
reclaimed (``syncd_compaction_reclaimed_bytes_total``).

``compaction-ingest``: syncd, stopped, misses 200k updates of that kind; started again, it reads
them from its slot. The time from its start to the last change applied, with compaction on, is
set against the same with compaction off (``SYNCD_COMPACTION=off``), each on a database of its
own; the ratio is rows per second with compaction over rows per second without (target ≥ 0.9).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from bench.cluster import bench_database
from bench.large_txn import running_syncd
from bench.stats import summary

KEYS = 1_000


def _metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return sample.value
    return 0.0


def _create_table(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, n int, body text)")
        conn.execute(
            "INSERT INTO items SELECT g, 0, 'row ' || g FROM generate_series(1, %s) g", (KEYS,)
        )


def _update_all(dsn: str, rounds: int) -> int:
    """``rounds`` transactions, each updating every row; the WAL position after them."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(rounds):
            conn.execute("UPDATE items SET n = n + 1")
        row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    assert row is not None
    return int(row[0])


def _wait_applied(url: str, changes: float, limit: float = 600) -> float:
    """Wait until syncd has applied ``changes`` row changes; the wall clock then."""
    deadline = time.monotonic() + limit
    while _metric(url, "syncd_changes_total") < changes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"syncd applied fewer than {changes:.0f} changes in {limit} s")
        time.sleep(0.05)
    return time.monotonic()


def _shape_bytes(directory: Path) -> int:
    return sum(
        p.stat().st_size
        for p in directory.iterdir()
        if p.name.startswith(("snapshot-", "log", "chunks")) and not p.name.endswith(".tmp")
    )


def _shape_dir(storage: Path, handle: str) -> Path:
    return storage / "shapes" / handle


def _first(url: str, params: dict[str, str]) -> str:
    answer = httpx.get(url + "/v1/shape", params={**params, "offset": "-1"}, timeout=120)
    answer.raise_for_status()
    return answer.headers["electric-handle"]


def run_compaction(updates: int = 1_000_000, *, keep: bool = False) -> str:
    """The ``make bench`` entry point of ``compaction``; prints and returns its line."""
    rounds = max(1, updates // KEYS)
    with bench_database("compaction", keep=keep) as db:
        _create_table(db.dsn)
        settings = {"SYNCD_COMPACTION_IDLE": "2"}
        with running_syncd(db, "compaction", **settings) as daemon:
            handle = _first(daemon.url, {"table": "items"})
            started = time.monotonic()
            _update_all(db.dsn, rounds)
            _wait_applied(daemon.url, rounds * KEYS)
            applied = time.monotonic() - started
            storage = db.base / "storage"
            shape = _shape_dir(storage, handle)
            stable, last = 0, -1
            deadline = time.monotonic() + 120
            while stable < 3 and time.monotonic() < deadline:  # the quiet tail's compaction
                time.sleep(1)
                size = _shape_bytes(shape)
                stable = stable + 1 if size == last else 0
                last = size
            stored = _shape_bytes(shape)
            reclaimed = _metric(daemon.url, "syncd_compaction_reclaimed_bytes_total")
            compactions = _metric(daemon.url, "syncd_compactions_total")
            fresh = _first(daemon.url, {"table": "items", "columns": "id,n,body"})
            live = _shape_bytes(_shape_dir(storage, fresh))
    value = stored / live
    baseline = (stored + reclaimed) / live
    print(
        f"compaction: {rounds * KEYS:,} updates to {KEYS:,} rows applied in {applied:.1f} s; "
        f"{compactions:.0f} compactions reclaimed {reclaimed / 1e6:.1f} MB; the shape holds "
        f"{stored / 1e3:.0f} kB for {live / 1e3:.0f} kB of live rows",
        flush=True,
    )
    line = summary("compaction", value, "x-live-bytes", baseline, baseline / value)
    print(line, flush=True)
    return line


def _ingest_seconds(compaction: bool, updates: int, keep: bool) -> float:
    rounds = max(1, updates // KEYS)
    name = "compaction_on" if compaction else "compaction_off"
    with bench_database(name, keep=keep) as db:
        _create_table(db.dsn)
        settings: dict[str, Any] = {"SYNCD_COMPACTION": "on" if compaction else "off"}
        with running_syncd(db, name, **settings) as daemon:
            _first(daemon.url, {"table": "items"})
            daemon.stop()
            _update_all(db.dsn, rounds)
            daemon.start(timeout=60)
            started = time.monotonic()
            # the counter starts over with the process: it counts the missed updates
            return _wait_applied(daemon.url, rounds * KEYS) - started


def run_compaction_ingest(updates: int = 200_000, *, keep: bool = False) -> str:
    """The ``make bench`` entry point of ``compaction-ingest``; prints and returns its line."""
    without = _ingest_seconds(False, updates, keep)
    with_compaction = _ingest_seconds(True, updates, keep)
    rate, baseline = updates / with_compaction, updates / without
    print(
        f"compaction-ingest: {updates:,} updates caught up in {with_compaction:.2f} s with "
        f"compaction, {without:.2f} s without",
        flush=True,
    )
    line = summary("compaction-ingest", rate, "rows/s", baseline, rate / baseline)
    print(line, flush=True)
    return line
