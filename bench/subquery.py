"""Subquery shape benchmarks: move-in latency and ingest with many subquery shapes.

``subquery-move-in``
    syncd runs as a child process. ``events`` holds ``--move-in-rounds`` threads of
    ``--move-in-rows`` (1,000) events each; one long-poll reader follows
    ``thread_id IN (SELECT thread_id FROM memberships WHERE user_id = 1)`` (user 1 is a member
    of no thread at first) and another a plain shape over ``plain_items``. Each round commits
    one membership (user 1 joins the next thread) and measures the delay from right after
    ``COMMIT`` until the reader holds every event of that thread; then commits one plain
    single-row insert and measures the delay until the plain reader holds that row. Summary::

        BENCH subquery-move-in value=<p50 ms> unit=ms baseline=<plain p50 ms> ratio=<b/v>

``subquery-shapes-ingest``
    The rate at which syncd takes ``--ingest-rows`` events (transactions of 1,000 rows,
    committed as fast as one connection can) with one plain shape over the table, against the
    rate with ``--subquery-shapes`` (10,000) shapes
    ``thread_id IN (SELECT thread_id FROM memberships WHERE user_id = $1)``, one per user, user
    ``k`` the one member of thread ``k`` and the events spread evenly over the threads, so that
    each event belongs to exactly one shape (as each row does in ``ingest-10k-shapes``); both in
    the same run and daemon.
    A run's time goes from the first commit until the daemon reports (``global_last_seen_lsn``
    of an up-to-date answer) that it has processed the WAL up to the last commit. Summary::

        BENCH subquery-shapes-ingest value=<rows/s> unit=rows/s baseline=<plain rows/s> ratio=<v/b>
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg

from bench.cluster import bench_database
from bench.fanout import percentile
from bench.large_txn import _Daemon
from bench.stats import summary

MEMBERSHIPS_DDL = (
    "CREATE TABLE memberships (user_id int, thread_id int, PRIMARY KEY (user_id, thread_id))"
)
MEMBERS_WHERE = "thread_id IN (SELECT thread_id FROM memberships WHERE user_id = $1)"
POLL_TIMEOUT = 60.0
READY_TIMEOUT = 600.0
CREATE_CONCURRENCY = 64


def log(text: str) -> None:
    print(text, flush=True)


class ShapeFailed(RuntimeError):
    """syncd refused or failed a shape request."""


# -- a minimal long-poll reader ------------------------------------------------------------------


@dataclass
class Reader:
    """Follows one shape with long-polls and records when each key arrived."""

    url: str
    params: dict[str, str]
    handle: str | None = None
    offset: str = "-1"
    up_to_date: bool = False
    last_seen_lsn: int = 0
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    requests: int = 0

    async def request(self, client: httpx.AsyncClient, *, live: bool) -> None:
        query = dict(self.params, offset=self.offset)
        if self.handle is not None:
            query["handle"] = self.handle
        if live:
            query["live"] = "true"
        answer = await client.get(self.url, params=query, timeout=POLL_TIMEOUT)
        self.requests += 1
        if answer.status_code != 200:
            raise ShapeFailed(f"{answer.status_code} for {self.params}: {answer.text[:300]}")
        self.handle = answer.headers["electric-handle"]
        self.offset = answer.headers["electric-offset"]
        self._apply(json.loads(answer.content))

    def _apply(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            headers = message["headers"]
            if headers.get("control") == "up-to-date":
                self.up_to_date = True
                self.last_seen_lsn = int(headers.get("global_last_seen_lsn", 0))
            elif "key" in message:
                operation = headers.get("operation")
                if operation == "delete":
                    self.rows.pop(message["key"], None)
                else:
                    self.rows.setdefault(message["key"], {}).update(message["value"])
        self.changed.set()

    async def catch_up(self, client: httpx.AsyncClient, min_lsn: int = 0) -> None:
        self.up_to_date = False
        while not (self.up_to_date and self.last_seen_lsn >= min_lsn):
            if self.up_to_date:
                await asyncio.sleep(0.01)
            self.up_to_date = False
            await self.request(client, live=False)

    async def follow(self, client: httpx.AsyncClient) -> None:
        """Long-poll until cancelled."""
        await self.catch_up(client)
        while True:
            await self.request(client, live=True)

    async def wait_until(self, condition: Callable[[], bool]) -> float:
        """Wait for ``condition`` on the rows; the wall-clock time it first held."""
        while not condition():
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), POLL_TIMEOUT)
        return time.time()


# -- subquery-move-in ----------------------------------------------------------------------------


def _setup_move_in(dsn: str, rounds: int, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(MEMBERSHIPS_DDL)
        conn.execute("CREATE TABLE events (id int PRIMARY KEY, thread_id int NOT NULL, body text)")
        conn.execute("CREATE INDEX ON events (thread_id)")
        conn.execute("CREATE TABLE plain_items (id int PRIMARY KEY, body text)")
        conn.execute(
            "INSERT INTO events SELECT t * %s + i, t, 'event ' || i"
            " FROM generate_series(1, %s::int) t, generate_series(1, %s::int) i",
            (rows, rounds, rows),
        )


def _holds_thread(reader: Reader, thread: str, rows: int) -> bool:
    return sum(1 for row in reader.rows.values() if row.get("thread_id") == thread) >= rows


def _holds_key(reader: Reader, key: str) -> bool:
    return key in reader.rows


def _commit(
    conn: psycopg.Connection[tuple[Any, ...]], statement: str, args: tuple[Any, ...]
) -> float:
    conn.execute(statement.encode(), args)
    return time.time()


async def _move_in_rounds(
    url: str, dsn: str, rounds: int, rows: int
) -> tuple[list[float], list[float]]:
    subquery = Reader(url, {"table": "events", "where": MEMBERS_WHERE, "params[1]": "1"})
    plain = Reader(url, {"table": "plain_items"})
    move_in_ms: list[float] = []
    plain_ms: list[float] = []
    async with httpx.AsyncClient() as client:
        await subquery.catch_up(client)
        await plain.catch_up(client)
        tasks = [asyncio.create_task(r.follow(client)) for r in (subquery, plain)]
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("SET synchronous_commit = on")
                for thread in range(1, rounds + 1):
                    requests_before = subquery.requests
                    committed = await asyncio.to_thread(
                        _commit, conn, "INSERT INTO memberships VALUES (1, %s)", (thread,)
                    )
                    arrived = await subquery.wait_until(
                        functools.partial(_holds_thread, subquery, str(thread), rows)
                    )
                    move_in_ms.append((arrived - committed) * 1000)
                    committed = await asyncio.to_thread(
                        _commit, conn, "INSERT INTO plain_items VALUES (%s, 'x')", (thread,)
                    )
                    key = f'"public"."plain_items"/"{thread}"'
                    arrived = await plain.wait_until(functools.partial(_holds_key, plain, key))
                    plain_ms.append((arrived - committed) * 1000)
                    log(
                        f"  round {thread}: move-in of {rows:,} rows {move_in_ms[-1]:8.1f} ms"
                        f" ({subquery.requests - requests_before} requests),"
                        f" plain insert {plain_ms[-1]:6.1f} ms"
                    )
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException) and not isinstance(
                    result, asyncio.CancelledError
                ):
                    raise result
    return move_in_ms, plain_ms


def run_move_in(rounds: int = 10, rows: int = 1_000, *, keep: bool = False) -> str:
    """Run ``subquery-move-in``; return (and print) its summary line."""
    with bench_database("subquery_move_in", keep=keep) as db:
        _setup_move_in(db.dsn, rounds, rows)
        daemon = _Daemon(
            db.dsn, db.base / "storage", "bench_subquery_move_in", None, db.base / "syncd.log"
        )
        daemon.start(READY_TIMEOUT)
        try:
            log(f"subquery-move-in: {rounds} rounds, {rows:,} events per thread, long-poll reader")
            move_in, plain = asyncio.run(
                _move_in_rounds(daemon.url + "/v1/shape", db.dsn, rounds, rows)
            )
        finally:
            daemon.stop()
    value, baseline = percentile(move_in, 0.5), percentile(plain, 0.5)
    line = summary("subquery-move-in", value, "ms", baseline, baseline / value)
    log(line)
    return line


# -- subquery-shapes-ingest ----------------------------------------------------------------------


def _setup_ingest(dsn: str, users: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(MEMBERSHIPS_DDL)
        conn.execute(
            "INSERT INTO memberships SELECT u, u FROM generate_series(1, %s::int) u",
            (users,),
        )
        for table in ("events_plain", "events_sq"):
            conn.execute(
                f"CREATE TABLE {table} (id int PRIMARY KEY, thread_id int NOT NULL,"
                " body text)".encode()
            )


def _insert_events(dsn: str, table: str, rows: int, threads: int) -> tuple[float, int]:
    """Insert ``rows`` events in transactions of 1,000; returns (start time, end LSN)."""
    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for first in range(1, rows + 1, 1_000):
            last = min(rows, first + 999)
            conn.execute(
                f"INSERT INTO {table} SELECT g, 1 + g %% %s, 'event ' || g"
                f" FROM generate_series(%s::int, %s::int) g".encode(),
                (threads, first, last),
            )
        row = conn.execute("SELECT (pg_current_wal_insert_lsn() - '0/0')::int8").fetchone()
    assert row is not None
    return started, int(row[0])


async def _create_shapes(url: str, readers: list[Reader]) -> None:
    """Create every shape (its first request returns once its snapshot is done),
    ``CREATE_CONCURRENCY`` at a time."""
    queue: asyncio.Queue[Reader] = asyncio.Queue()
    for reader in readers:
        queue.put_nowait(reader)

    started = time.monotonic()
    done = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done
        while not queue.empty():
            reader = queue.get_nowait()
            await reader.request(client, live=False)  # answered once the snapshot is done
            done += 1
            if done % 1_000 == 0:
                log(f"    {done:,} shapes created ({time.monotonic() - started:.0f}s)")

    limits = httpx.Limits(max_connections=CREATE_CONCURRENCY)
    async with httpx.AsyncClient(limits=limits, timeout=POLL_TIMEOUT) as client:
        await asyncio.gather(*(worker(client) for _ in range(CREATE_CONCURRENCY)))


async def _timed_ingest(
    url: str, dsn: str, table: str, probe: Reader, rows: int, threads: int
) -> float:
    started, end_lsn = await asyncio.to_thread(_insert_events, dsn, table, rows, threads)
    async with httpx.AsyncClient() as client:
        await probe.catch_up(client, min_lsn=end_lsn)
    return rows / (time.monotonic() - started)


async def _ingest(url: str, dsn: str, rows: int, shapes: int, threads: int) -> tuple[float, float]:
    plain = Reader(url, {"table": "events_plain"})
    await _create_shapes(url, [plain])
    plain_rate = await _timed_ingest(url, dsn, "events_plain", plain, rows, threads)
    log(f"  1 plain shape: {plain_rate:,.0f} rows/s")
    readers = [
        Reader(url, {"table": "events_sq", "where": MEMBERS_WHERE, "params[1]": str(user)})
        for user in range(1, shapes + 1)
    ]
    created = time.monotonic()
    await _create_shapes(url, readers)
    log(f"  {shapes:,} subquery shapes created in {time.monotonic() - created:.1f}s")
    rate = await _timed_ingest(url, dsn, "events_sq", readers[0], rows, threads)
    log(f"  {shapes:,} subquery shapes: {rate:,.0f} rows/s")
    return rate, plain_rate


def run_shapes_ingest(rows: int = 100_000, shapes: int = 10_000, *, keep: bool = False) -> str:
    """Run ``subquery-shapes-ingest``; return (and print) its summary line."""
    threads = shapes  # user k is the one member of thread k
    with bench_database("subquery_ingest", keep=keep) as db:
        _setup_ingest(db.dsn, shapes)
        daemon = _Daemon(
            db.dsn, db.base / "storage", "bench_subquery_ingest", None, db.base / "syncd.log"
        )
        daemon.start(READY_TIMEOUT)
        try:
            log(
                f"subquery-shapes-ingest: {rows:,} events, {shapes:,} shapes"
                f" over {threads:,} threads"
            )
            rate, plain = asyncio.run(
                _ingest(daemon.url + "/v1/shape", db.dsn, rows, shapes, threads)
            )
        finally:
            daemon.stop()
    line = summary("subquery-shapes-ingest", rate, "rows/s", plain, rate / plain)
    log(line)
    return line
