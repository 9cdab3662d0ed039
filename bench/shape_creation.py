"""``shape-creation``: how fast syncd takes new shapes, and what that costs a live shape meanwhile.

Method. A table of ``--creation-shapes`` rows; as many small shapes ``id = <k>`` (one row each)
are asked for by ``CREATE_CONCURRENCY`` concurrent raw HTTP clients (each on a keep-alive
connection, parsing only what it needs, so that the figure is syncd's), each shape's first
request answered once its snapshot is done, and checked to hold its one row. Meanwhile one
Python :class:`~shapes.client.ShapeStream` follows another table over SSE, in a process of its
own as a real client would (:mod:`bench.live_follower`; sharing the event loop of the creating
clients, it would measure their queueing too), and a committer
inserts a row into that table every 20 ms: the delay from each ``COMMIT`` returning to the row
reaching the stream is the live delivery the creations must not stall. 100 such commits before
the creations (after 100 more to warm up) are the baseline. syncd's CPU time per new shape
(user and system, from ``/proc``) is printed too: it moves less with the machine's load than the
rate does. (Most of the system time is the filesystem allocating inodes, which costs far more
soon after many files were deleted, as by the benchmarks before this one: see the storage
directory in ``docs/operate.md``.)

Summary lines (targets: at least 1,000 shapes/s, and a live p99 within 20 ms)::

    BENCH shape-creation value=<shapes/s> unit=shapes/s baseline=1000 ratio=<value/1000>
    BENCH shape-creation-live-p99 value=<p99 ms during creation> unit=ms
        baseline=<p99 ms without creation> ratio=<baseline/value>
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from bench.children import cpu_times
from bench.cluster import bench_database, create_rows_table
from bench.fanout import _Committer, _delays, percentile
from bench.large_txn import running_syncd
from bench.live_follower import following
from bench.raw_client import first_responses
from bench.stats import summary
from bench.subquery import CREATE_CONCURRENCY
from syncd.daemon import event_loop_factory

TABLE = "creation_items"
LIVE_TABLE = "creation_live"
COMMIT_INTERVAL = 0.02


def log(text: str) -> None:
    print(text, flush=True)


async def _commits_while(dsn: str, running: asyncio.Future[Any]) -> dict[int, float]:
    """Commit every ``COMMIT_INTERVAL`` until ``running`` is done (at least 100 commits)."""
    committer = await asyncio.to_thread(_Committer, dsn, LIVE_TABLE)
    times: dict[int, float] = {}
    try:
        while not running.done() or len(times) < 100:
            await asyncio.sleep(COMMIT_INTERVAL)
            row_id, at = await asyncio.to_thread(committer.commit)
            times[row_id] = at
    finally:
        await asyncio.to_thread(committer.close)
    return times


@dataclass(frozen=True)
class _Creation:
    quiet: list[float]
    """Live delays (ms) without creation."""
    during: list[float]
    """Live delays (ms) during creation."""
    seconds: float
    cpu: tuple[float, float]
    """syncd's user and system CPU seconds during creation."""


async def _measure(url: str, dsn: str, shapes: int, syncd_pid: int) -> _Creation:
    """Live deliveries before and during the creation of ``shapes`` shapes, and its cost."""
    async with following(url, LIVE_TABLE, "sse") as seen:
        await asyncio.sleep(1.0)
        idle: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        idle.set_result(None)
        await _commits_while(dsn, idle)  # warming up: not counted
        quiet = await _commits_while(dsn, idle)

        shapes_asked = [{"table": TABLE, "where": f"id = {k}"} for k in range(1, shapes + 1)]
        cpu_before = cpu_times(syncd_pid)
        started = time.monotonic()

        def progress(done: int) -> None:
            if done % 1_000 == 0:
                log(f"    {done:,} shapes created ({time.monotonic() - started:.0f}s)")

        creating = asyncio.ensure_future(
            first_responses(url, shapes_asked, CREATE_CONCURRENCY, progress)
        )
        during_task = asyncio.create_task(_commits_while(dsn, creating))
        rows = await creating
        seconds = time.monotonic() - started
        cpu_after = cpu_times(syncd_pid)
        during = await during_task
        wrong = [shape for shape, held in zip(shapes_asked, rows, strict=True) if held != 1]
        assert not wrong, f"{len(wrong)} shapes did not hold their one row: {wrong[:3]}"
        await asyncio.sleep(1.0)  # the last commits' deliveries
    quiet_delays, quiet_missing = _delays(quiet, [seen])
    during_delays, during_missing = _delays(during, [seen])
    if quiet_missing or during_missing:
        log(f"  deliveries missing: {quiet_missing} before, {during_missing} during creation")
    cpu = (cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1])
    return _Creation(quiet_delays, during_delays, seconds, cpu)


def run_shape_creation(shapes: int = 10_000, *, keep: bool = False) -> list[str]:
    """Run ``shape-creation``; return (and print) its summary lines."""
    log(f"shape-creation: {shapes:,} shapes id = k, {CREATE_CONCURRENCY} concurrent clients")
    with bench_database("shape_creation", keep=keep) as db:
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            create_rows_table(conn, TABLE, 1, shapes)
            conn.execute(
                sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, body text)").format(
                    sql.Identifier(LIVE_TABLE)
                )
            )
        with running_syncd(
            db, "creation", SYNCD_MAX_INITIAL_REQUESTS=str(max(300, 2 * CREATE_CONCURRENCY))
        ) as daemon:
            with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
                measured = runner.run(
                    _measure(daemon.url + "/v1/shape", db.dsn, shapes, daemon.pid)
                )
    quiet, during, seconds = measured.quiet, measured.during, measured.seconds
    rate = shapes / seconds
    quiet99, during99 = percentile(quiet, 0.99), percentile(during, 0.99)
    user, system = (1e3 * part / shapes for part in measured.cpu)
    log(f"  {shapes:,} shapes in {seconds:.1f}s: {rate:,.0f} shapes/s")
    log(f"  syncd CPU per new shape: {user:.2f} ms user + {system:.2f} ms system")
    log(
        f"  live shape: p50 {percentile(quiet, 0.5):.1f} / p99 {quiet99:.1f} ms without creation,"
        f" p50 {percentile(during, 0.5):.1f} / p99 {during99:.1f} ms during it"
        f" ({len(during)} commits)"
    )
    lines = [
        summary("shape-creation", rate, "shapes/s", 1000, rate / 1000),
        summary("shape-creation-live-p99", during99, "ms", quiet99, quiet99 / during99),
    ]
    for line in lines:
        log(line)
    return lines
