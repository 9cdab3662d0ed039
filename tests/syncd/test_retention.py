"""Shape retention against a live daemon: unused shapes expire, the storage quota evicts the
least recently used, and clients of a removed shape get the protocol's 409 and start over."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from syncd.log_files import REMOVED_SUFFIX
from tests.shape_reader import ShapeCursor, catch_up
from tests.syncd.test_metrics import scrape, value, wait_until
from tests.syncd_process import SyncdProcess

pytestmark = pytest.mark.timeout(120)

PADDING = 2000
"""Bytes of text per row: 100 rows make a shape of about 200 kB."""


@pytest.fixture
def table(pg_dsn: str) -> str:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, grp int, body text)")
        conn.execute(
            "INSERT INTO items SELECT g, g %% 4, repeat('x', %s) FROM generate_series(1, 400) g",
            (PADDING,),
        )
    return pg_dsn


def follow(daemon: SyncdProcess, group: int) -> ShapeCursor:
    cursor = ShapeCursor({"table": "items", "where": f"grp = {group}"})
    with httpx.Client(timeout=30) as client:
        catch_up(client, daemon.shape_url, cursor)
    assert len(cursor.rows) == 100
    return cursor


def touch(daemon: SyncdProcess, cursor: ShapeCursor) -> int:
    """One request of a client that follows ``cursor``: its status code."""
    query = dict(cursor.params, handle=cursor.handle or "", offset=cursor.offset)
    return httpx.get(daemon.shape_url, params=query, timeout=30).status_code


@pytest.fixture
def expiring(table: str, tmp_path: Path) -> Iterator[SyncdProcess]:
    daemon = SyncdProcess(
        table, tmp_path / "storage", shape_ttl=1.5, retention_interval=0.2, long_poll_timeout=4
    )
    daemon.start()
    yield daemon
    daemon.stop()


def test_unused_shapes_expire_and_their_clients_start_over(expiring: SyncdProcess) -> None:
    unused = follow(expiring, 0)
    polled = follow(expiring, 1)  # used by requests, one after another
    held = follow(expiring, 2)  # one live long-poll held all the time
    stop = threading.Event()

    def hold() -> None:
        query = dict(held.params, handle=held.handle or "", offset=held.offset, live="true")
        while not stop.is_set():
            httpx.get(expiring.shape_url, params=query, timeout=30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        deadline = time.monotonic() + 20
        while expiring.storage_dir.joinpath("shapes", unused.handle or "").exists():
            assert time.monotonic() < deadline, "the unused shape never expired"
            assert touch(expiring, polled) == 200
            time.sleep(0.3)
        time.sleep(0.5)  # more sweeps: the two shapes in use stay
        assert touch(expiring, polled) == 200
        assert touch(expiring, held) == 200
        samples = scrape(expiring)
        assert value(samples, "syncd_shapes_removed_total", cause="expired") == 1
    finally:
        stop.set()
        holder.join(30)
    assert touch(expiring, unused) == 409
    old_handle = unused.handle
    with httpx.Client(timeout=30) as client:
        catch_up(client, expiring.shape_url, unused)
    assert unused.refetches == 1 and unused.handle != old_handle
    assert len(unused.rows) == 100
    assert "expired: unused for" in expiring.log_tail(200)


def test_the_quota_evicts_the_least_recently_used_shapes(table: str, tmp_path: Path) -> None:
    # three shapes of about 200 kB each, 500 kB allowed: one must go, the least recently used
    daemon = SyncdProcess(table, tmp_path / "storage", storage_quota="500K", retention_interval=0.2)
    daemon.start()
    try:
        first = follow(daemon, 0)
        second = follow(daemon, 1)
        assert touch(daemon, first) == 200  # the first is used again: the second is the oldest
        third = follow(daemon, 2)
        shapes = daemon.storage_dir / "shapes"
        wait_until(lambda: not (shapes / (second.handle or "")).exists())
        time.sleep(0.5)  # more sweeps: the two left are within the quota
        assert sorted(p.name for p in shapes.iterdir()) == sorted(
            [str(first.handle), str(third.handle)]
        )
        assert touch(daemon, first) == 200
        assert touch(daemon, third) == 200
        samples = scrape(daemon)
        assert value(samples, "syncd_shapes_removed_total", cause="evicted") == 1
        assert value(samples, "syncd_storage_quota_bytes") == 500 * 1024
        assert "evicting shape" in daemon.log_tail(200)
        daemon.stop()
        cut_short = shapes / ("0-0" + REMOVED_SUFFIX)  # a removal a stop cut short
        cut_short.mkdir()
        (cut_short / "log.bin").write_bytes(b"x" * 4096)
        daemon.start()
        assert not cut_short.exists()
        assert touch(daemon, first) == 200
        # Its clients start over with a new shape. (Asked last: the 409 makes that shape, which
        # takes the quota over again, and the next sweep evicts the least recently used.)
        assert touch(daemon, second) == 409
    finally:
        daemon.stop()


def test_a_free_space_floor_out_of_reach_evicts_every_shape_and_says_so(
    table: str, tmp_path: Path
) -> None:
    daemon = SyncdProcess(
        table, tmp_path / "storage", min_free_disk="1000000T", retention_interval=0.2
    )
    daemon.start()
    try:
        cursor = follow(daemon, 3)
        wait_until(lambda: touch(daemon, cursor) == 409)
        wait_until(lambda: "the storage quota cannot be kept" in daemon.log_tail(200))
    finally:
        daemon.stop()
