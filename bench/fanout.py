"""Latency benchmark: one change fanned out to many live subscribers of one shape.

``fanout-1000-python``
    syncd runs as a child process with one table. One asyncio program opens ``--fanout-subscribers``
    (1,000) :class:`~shapes.client.ShapeStream` objects on the same shape, live over SSE, all on
    one :class:`~shapes.client.transport.AiohttpTransport` (the client's transport for a
    process that follows many shapes), each request on a connection of its own. The program runs on
    the event loop syncd picks for itself (uvloop when installed), with the garbage collector
    tuned as such a process should tune it (:func:`shapes.collector.tune_garbage_collector`;
    restored afterwards). Once every stream is live and
    up to date, the benchmark commits one insert at a time (``--fanout-commits``, about 1 s
    apart; the committing session uses ``synchronous_commit = on``) from a separate thread,
    records the wall-clock time right after ``COMMIT`` returns, and measures, for every
    subscriber, the delay until the batch holding that row arrives.

``fanout-1000-python-long-poll``
    The same in long-poll mode: every delivery ends a request and each subscriber sends the
    next one, so each change costs 1,000 HTTP requests on both sides.

``fanout-1000-js``
    The same with ``bench/fanout_js.mjs``: one Node process of the official
    ``@electric-sql/client`` with N ``ShapeStream`` objects in SSE mode (``liveSse: true``); it
    prints one line per received change with ``Date.now()``, and this side computes the delays
    (both clocks are the wall clock of the same machine).

``fanout-1000-js-long-poll``
    The official client in its default mode, long-polling. On a 2-core machine this measures the
    client more than syncd: the Node process spends about 0.5 ms of CPU on each response (in a
    CPU profile: the client's request and response handling and undici's fetch two thirds,
    garbage collection a seventh), so 1,000 responses keep it busy for about half a second after
    each change, more than both cores could share out within the 150 ms target even with syncd
    taking no time. Each stream has its own abort signal, as each client of an application has:
    one signal shared by 1,000 streams made every request walk 1,000 listeners.

``fanout-1000-raw-long-poll``
    Long-polling with :class:`~bench.raw_client.RawFollower` (a keep-alive connection each,
    nothing parsed beyond what the protocol needs), in one asyncio program: what the fan-out
    costs syncd itself.

Each is run with one subscriber too, as the baseline. The summary lines report the p50 delay::

    BENCH fanout-1000-python value=<p50 ms> unit=ms baseline=<1-subscriber p50 ms> ratio=<b/v>
    BENCH fanout-1000-js value=<p50 ms> unit=ms baseline=<1-connection p50 ms> ratio=<b/v>

The ratio is far below 1 by nature: one subscriber is served in about 2 ms, 1,000 need 1,000
HTTP writes and reads. The target is the value: p50 under 100 ms.
"""

from __future__ import annotations

import asyncio
import gc
import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from bench.children import cancel_tasks
from bench.cluster import bench_database
from bench.large_txn import ROOT, running_syncd
from bench.raw_client import RawFollower, catch_up_all, follow_all, id_noter
from shapes.client import LiveMode, ShapeDefinition, ShapeStream
from shapes.client.transport import AiohttpTransport
from shapes.collector import tune_garbage_collector
from syncd.daemon import event_loop_factory

TABLE = "fanout_items"
JS_SCRIPT = ROOT / "bench" / "fanout_js.mjs"
READY_TIMEOUT = 180.0
DELIVERY_TIMEOUT = 30.0
SETTLE_SECONDS = 2.0


@dataclass(frozen=True)
class FanoutResult:
    subscribers: int
    delays_ms: list[float]
    """One delay per (commit, subscriber) delivery."""
    missing: int
    """Deliveries that did not arrive within the timeout."""
    ready_seconds: float
    """Time until all subscribers were live and up to date."""

    def percentile(self, fraction: float) -> float:
        return percentile(self.delays_ms, fraction)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


class _Committer:
    """Inserts one row per commit on its own connection; returns the wall clock after COMMIT.

    The session commits synchronously: an asynchronous commit reaches the walsender only when
    Postgres' WAL writer flushes it, a delay that belongs to Postgres and not to syncd.
    """

    def __init__(self, dsn: str, table: str = TABLE) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute("SET synchronous_commit TO on")
        self.insert = sql.SQL("INSERT INTO {} (body) VALUES ('row') RETURNING id").format(
            sql.Identifier(table)
        )

    def commit(self) -> tuple[int, float]:
        row = self.conn.execute(self.insert).fetchone()
        at = time.time()
        assert row is not None
        return int(row[0]), at

    def close(self) -> None:
        self.conn.close()


def _delays(commits: dict[int, float], received: list[dict[int, float]]) -> tuple[list[float], int]:
    delays: list[float] = []
    missing = 0
    for row_id, committed in commits.items():
        for seen in received:
            at = seen.get(row_id)
            if at is None:
                missing += 1
            else:
                delays.append((at - committed) * 1000)
    return delays, missing


# --- Python client ---------------------------------------------------------------------------


async def _python_fanout(
    shape_url: str, dsn: str, subscribers: int, commits: int, interval: float, live_mode: LiveMode
) -> FanoutResult:
    with _collector_tuned():
        return await _python_subscribers(shape_url, dsn, subscribers, commits, interval, live_mode)


@contextmanager
def _collector_tuned() -> Iterator[None]:
    """The collector tuned for a program following many shapes, for one measurement."""
    thresholds = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    tune_garbage_collector()
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        if not frozen_before:
            gc.unfreeze()


async def _python_subscribers(
    shape_url: str, dsn: str, subscribers: int, commits: int, interval: float, live_mode: LiveMode
) -> FanoutResult:
    received: list[dict[int, float]] = [{} for _ in range(subscribers)]
    ready = 0
    all_ready = asyncio.Event()
    started = time.monotonic()
    # One aiohttp transport for every stream: the Python client's choice for a process that
    # follows many shapes (through httpx a request costs about four times the CPU).
    transport = AiohttpTransport()

    async def follow(seen: dict[int, float]) -> None:
        nonlocal ready
        first = True
        definition = ShapeDefinition.of(TABLE)
        async with ShapeStream(
            shape_url, definition, live_mode=live_mode, transport=transport
        ) as stream:
            async for batch in stream:
                now = time.time()
                for message in batch:
                    if message.get("headers", {}).get("operation") == "insert":
                        seen.setdefault(int(message["value"]["id"]), now)
                if first:
                    first = False
                    ready += 1
                    if ready == subscribers:
                        all_ready.set()

    tasks = [asyncio.create_task(follow(seen)) for seen in received]
    try:
        await _wait_ready(all_ready, tasks)
        ready_seconds = time.monotonic() - started
        # SSE streams are opened by the request after the first up-to-date: let them settle.
        await asyncio.sleep(SETTLE_SECONDS)
        commit_times = await _commit_rounds(dsn, commits, interval, received)
    finally:
        await cancel_tasks(tasks)
        await transport.aclose()
    delays, missing = _delays(commit_times, received)
    return FanoutResult(subscribers, delays, missing, ready_seconds)


async def _commit_rounds(
    dsn: str, commits: int, interval: float, received: list[dict[int, float]]
) -> dict[int, float]:
    """Commit ``commits`` rows ``interval`` apart, then wait (up to ``DELIVERY_TIMEOUT``) for
    every subscriber to note them all; the time of each commit by row id."""
    committer = await asyncio.to_thread(_Committer, dsn)
    try:
        commit_times: dict[int, float] = {}
        for _ in range(commits):
            await asyncio.sleep(interval)
            row_id, at = await asyncio.to_thread(committer.commit)
            commit_times[row_id] = at
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while time.monotonic() < deadline:
            if all(row_id in seen for seen in received for row_id in commit_times):
                break
            await asyncio.sleep(0.05)
    finally:
        await asyncio.to_thread(committer.close)
    return commit_times


# --- raw client ------------------------------------------------------------------------------


async def _raw_fanout(
    shape_url: str, dsn: str, subscribers: int, commits: int, interval: float
) -> FanoutResult:
    received: list[dict[int, float]] = [{} for _ in range(subscribers)]
    started = time.monotonic()
    followers = [RawFollower(shape_url, {"table": TABLE}) for _ in range(subscribers)]
    await catch_up_all(followers)
    tasks = await follow_all(followers, [id_noter(seen) for seen in received])
    try:
        ready_seconds = time.monotonic() - started
        await asyncio.sleep(SETTLE_SECONDS)
        commit_times = await _commit_rounds(dsn, commits, interval, received)
    finally:
        await cancel_tasks(tasks)
    delays, missing = _delays(commit_times, received)
    return FanoutResult(subscribers, delays, missing, ready_seconds)


def measure_raw_long_poll(
    shape_url: str, dsn: str, subscribers: int, commits: int, interval: float
) -> FanoutResult:
    return _run(_raw_fanout(shape_url, dsn, subscribers, commits, interval))


async def _wait_ready(all_ready: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    waiter = asyncio.create_task(all_ready.wait())
    try:
        done, _ = await asyncio.wait(
            [waiter, *tasks], timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        waiter.cancel()
    if waiter not in done:
        for task in done:
            if task is not waiter and task.exception() is not None:
                raise RuntimeError("a subscriber failed") from task.exception()
        raise TimeoutError(f"subscribers not up to date within {READY_TIMEOUT}s")


def measure_python(
    shape_url: str, dsn: str, subscribers: int, commits: int, interval: float
) -> FanoutResult:
    return _run(_python_fanout(shape_url, dsn, subscribers, commits, interval, "sse"))


def measure_python_long_poll(
    shape_url: str, dsn: str, subscribers: int, commits: int, interval: float
) -> FanoutResult:
    return _run(_python_fanout(shape_url, dsn, subscribers, commits, interval, "long-poll"))


def _run(measurement: Coroutine[Any, Any, FanoutResult]) -> FanoutResult:
    """Run on the event loop syncd itself picks (uvloop when installed)."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(measurement)


# --- JavaScript client -----------------------------------------------------------------------


def measure_js(
    shape_url: str, dsn: str, subscribers: int, commits: int, interval: float
) -> FanoutResult:
    return _measure_js(shape_url, dsn, subscribers, commits, interval, sse=True)


def measure_js_long_poll(
    shape_url: str, dsn: str, subscribers: int, commits: int, interval: float
) -> FanoutResult:
    return _measure_js(shape_url, dsn, subscribers, commits, interval, sse=False)


def _measure_js(
    shape_url: str, dsn: str, subscribers: int, commits: int, interval: float, *, sse: bool
) -> FanoutResult:
    config = json.dumps({"url": shape_url, "table": TABLE, "count": subscribers, "sse": sse})
    process = subprocess.Popen(
        ["node", str(JS_SCRIPT), config],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=None,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    received: list[dict[int, float]] = [{} for _ in range(subscribers)]

    def reader() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        _await_js(lines, received, lambda: time.monotonic() > started + READY_TIMEOUT, "ready")
        ready_seconds = time.monotonic() - started
        committer = _Committer(dsn)
        commit_times: dict[int, float] = {}
        try:
            for _ in range(commits):
                end = time.monotonic() + interval
                while time.monotonic() < end:
                    _drain_js(lines, received, timeout=max(0.0, end - time.monotonic()))
                row_id, at = committer.commit()
                commit_times[row_id] = at
        finally:
            committer.close()
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while time.monotonic() < deadline:
            if all(row_id in seen for seen in received for row_id in commit_times):
                break
            _drain_js(lines, received, timeout=0.05)
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        thread.join(5)
    delays, missing = _delays(commit_times, received)
    return FanoutResult(subscribers, delays, missing, ready_seconds)


def _handle_js(line: str, received: list[dict[int, float]]) -> str | None:
    event = json.loads(line)
    kind = event.get("type")
    if kind == "change":
        received[int(event["stream"])].setdefault(int(event["id"]), float(event["at"]) / 1000)
    elif kind == "error" and event.get("transient"):
        print(f"  fanout_js.mjs (retried): {event}", flush=True)
    elif kind == "error":
        raise RuntimeError(f"fanout_js.mjs: {event}")
    return str(kind)


def _drain_js(
    lines: queue.Queue[str | None], received: list[dict[int, float]], timeout: float
) -> str | None:
    """Handle the lines available within ``timeout``; returns the kind of the last one."""
    kind: str | None = None
    try:
        line = lines.get(timeout=timeout)
        while True:
            if line is None:
                raise RuntimeError("fanout_js.mjs exited")
            kind = _handle_js(line, received)
            if kind == "ready":
                return kind
            line = lines.get_nowait()
    except queue.Empty:
        return kind


def _await_js(
    lines: queue.Queue[str | None],
    received: list[dict[int, float]],
    expired: Callable[[], bool],
    wanted: str,
) -> None:
    while not expired():
        if _drain_js(lines, received, timeout=0.2) == wanted:
            return
    raise TimeoutError(f"fanout_js.mjs did not report {wanted!r}")


# --- driver ----------------------------------------------------------------------------------


@contextmanager
def _syncd(subscribers: int) -> Iterator[tuple[str, str]]:
    """Own Postgres, database, table and syncd; yields (shape URL, DSN)."""
    with bench_database("fanout") as db:
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, body text)").format(
                    sql.Identifier(TABLE)
                )
            )
        with running_syncd(
            db,
            "fanout",
            SYNCD_MAX_EXISTING_REQUESTS=str(max(10_000, 4 * subscribers)),
            SYNCD_MAX_INITIAL_REQUESTS=str(max(300, 2 * subscribers)),
        ) as daemon:
            yield daemon.url + "/v1/shape", db.dsn


Measure = Callable[[str, str, int, int, float], FanoutResult]
MEASURES: dict[str, Measure] = {
    "python": measure_python,
    "python-long-poll": measure_python_long_poll,
    "js": measure_js,
    "js-long-poll": measure_js_long_poll,
    "raw-long-poll": measure_raw_long_poll,
}


def run_fanout(
    client: str, subscribers: int = 1_000, commits: int = 10, interval: float = 1.0
) -> str:
    """The ``make bench`` entry point for a ``client`` of :data:`MEASURES`; prints the line."""
    measure = MEASURES[client]
    name = f"fanout-{subscribers}-{client}"
    results: list[FanoutResult] = []
    with _syncd(subscribers) as (shape_url, dsn):
        for count in (1, subscribers):
            result = measure(shape_url, dsn, count, commits, interval)
            results.append(result)
            print(
                f"{name}: {count:,} subscriber(s) up to date in {result.ready_seconds:.1f}s; "
                f"{len(result.delays_ms):,} deliveries, {result.missing} missing; "
                f"p50 {result.percentile(0.5):.1f} ms, p99 {result.percentile(0.99):.1f} ms, "
                f"max {max(result.delays_ms, default=float('nan')):.1f} ms",
                flush=True,
            )
    baseline, fanout = (r.percentile(0.5) for r in results)
    if results[1].missing:  # reported, not fatal: the line still says how slow it was
        print(f"{name}: {results[1].missing} deliveries missing after {DELIVERY_TIMEOUT:.0f}s")
    line = (
        f"BENCH {name} value={fanout:.1f} unit=ms baseline={baseline:.1f} "
        f"ratio={baseline / fanout:.3f}"
    )
    print(line, flush=True)
    return line
