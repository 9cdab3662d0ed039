"""``memory-*``: what syncd's resident memory grows by per held long-poll, per open SSE stream
and per idle shape.

Method. For each figure a fresh syncd (one table of ``--memory-items`` rows) and its resident
memory (``VmRSS``) once settled; then ``--memory-items`` (2,000) of the thing, and the memory
again once they are all in place:

* held long-polls: :class:`~bench.raw_client.RawFollower` live requests on one shape, each on
  its own connection, waiting for a change that does not come;
* SSE streams: raw connections each sending a live SSE request at the tail of one shape and
  reading the response head (no event comes: nothing changes), the stream left open;
* idle shapes: shapes ``id = k``, each read to ``up-to-date`` once and then left alone.

The figure is the growth divided by the count (kernel socket buffers are not in it). Summary
lines, against the target of 10 kB each::

    BENCH memory-per-long-poll value=<kB> unit=kB baseline=10 ratio=<10/value>
    BENCH memory-per-sse-stream value=<kB> unit=kB baseline=10 ratio=<10/value>
    BENCH memory-per-idle-shape value=<kB> unit=kB baseline=10 ratio=<10/value>
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode, urlsplit

import psycopg

from bench.children import cancel_tasks
from bench.cluster import bench_database, create_rows_table
from bench.large_txn import _Daemon, _status_kb, running_syncd
from bench.raw_client import RawFollower, catch_up_all, follow_all
from bench.stats import summary
from syncd.daemon import event_loop_factory

TABLE = "memory_items"
TARGET_KB = 10.0
SETTLE_SECONDS = 2.0


def log(text: str) -> None:
    print(text, flush=True)


async def _settled_rss(pid: int) -> float:
    """VmRSS in kB once it stops moving (two readings 0.5 s apart within 100 kB)."""
    await asyncio.sleep(SETTLE_SECONDS)
    last = _status_kb(pid, "VmRSS")
    for _ in range(20):
        await asyncio.sleep(0.5)
        now = _status_kb(pid, "VmRSS")
        if abs(now - last) < 100:
            return float(now)
        last = now
    return float(last)


async def _held_long_polls(url: str, count: int) -> Callable[[], Awaitable[None]]:
    followers = [RawFollower(url, {"table": TABLE, "where": "id = 1"}) for _ in range(count)]
    await catch_up_all(followers[:1])
    for follower in followers[1:]:
        follower.handle, follower.offset = followers[0].handle, followers[0].offset
    tasks = await follow_all(followers, [lambda changes, arrived: None for _ in followers])
    return functools.partial(cancel_tasks, tasks)


async def _open_sse_streams(url: str, count: int) -> Callable[[], Awaitable[None]]:
    first = RawFollower(url, {"table": TABLE, "where": "id = 1"})
    await catch_up_all([first])
    parts = urlsplit(url)
    query = urlencode(
        {
            "table": TABLE,
            "where": "id = 1",
            "handle": first.handle,
            "offset": first.offset,
            "live": "true",
            "live_sse": "true",
        }
    )
    request = f"GET {parts.path}?{query} HTTP/1.1\r\nhost: {parts.hostname}\r\n\r\n".encode()
    writers: list[asyncio.StreamWriter] = []

    async def open_one() -> None:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writers.append(writer)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"SSE request answered {head[:100]!r}")

    gate = asyncio.Semaphore(64)

    async def gated() -> None:
        async with gate:
            await open_one()

    await asyncio.gather(*(gated() for _ in range(count)))

    async def close() -> None:
        for writer in writers:
            writer.close()

    return close


async def _idle_shapes(url: str, count: int) -> Callable[[], Awaitable[None]]:
    followers = [RawFollower(url, {"table": TABLE, "where": f"id = {k}"}) for k in range(count)]
    await catch_up_all(followers)

    async def nothing() -> None:
        return None

    return nothing


Opener = Callable[[str, int], Awaitable[Callable[[], Awaitable[None]]]]
FIGURES: dict[str, Opener] = {
    "memory-per-long-poll": _held_long_polls,
    "memory-per-sse-stream": _open_sse_streams,
    "memory-per-idle-shape": _idle_shapes,
}


async def _measure(daemon: _Daemon, opener: Opener, count: int) -> float:
    url = daemon.url + "/v1/shape"
    await catch_up_all([RawFollower(url, {"table": TABLE})])  # the table is in use before
    before = await _settled_rss(daemon.pid)
    started = time.monotonic()
    close = await opener(url, count)
    opened = time.monotonic() - started
    try:
        after = await _settled_rss(daemon.pid)
    finally:
        await close()
    log(f"  {count:,} in {opened:.1f}s: VmRSS {before / 1024:.1f} -> {after / 1024:.1f} MB")
    return (after - before) / count


def run_memory(count: int = 2_000, *, keep: bool = False) -> list[str]:
    """Run the three ``memory-*`` figures; return (and print) their summary lines."""
    lines: list[str] = []
    for name, opener in FIGURES.items():
        log(f"{name}: {count:,}")
        with bench_database("memory", keep=keep) as db:
            with psycopg.connect(db.dsn, autocommit=True) as conn:
                create_rows_table(conn, TABLE, 0, count)
            with running_syncd(
                db, "memory", SYNCD_MAX_EXISTING_REQUESTS=str(max(10_000, 2 * count))
            ) as daemon:
                with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
                    per_item = runner.run(_measure(daemon, opener, count))
        line = summary(name, per_item, "kB", TARGET_KB, TARGET_KB / max(per_item, 0.01))
        log(line)
        lines.append(line)
    return lines
