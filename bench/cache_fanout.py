"""Thousands of clients following one shape through an HTTP cache (nginx), for the deployment
test and the ``cache-fanout-10k`` benchmark.

Each :class:`CacheFollower` is one client on a keep-alive HTTP/1.1 connection of its own, doing
what the official client does: ``offset=-1``, catch-up requests until ``up-to-date``, then live
long-polls carrying the ``cursor`` it was given, with the query parameters sorted. It folds every
response into its own rows, follows 409s, and notes when each row id first arrived. Everyone at
the same position asks for the same URL, which is what lets a cache answer them all from one
upstream request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple
from urllib.parse import urlencode, urlsplit

import httpx
import msgspec
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from bench.children import cancel_tasks
from bench.cluster import bench_database
from bench.large_txn import running_syncd
from bench.nginx import NginxProcess
from bench.raw_client import read_response
from bench.stats import median, summary
from shapes.materialise import MaterialisedShape
from syncd.daemon import raise_open_file_limit

_decode = msgspec.json.Decoder().decode
RECONNECTS = 20
"""Connections one follower may open again after the server closed one (nginx closes a
keep-alive connection after ``keepalive_requests``)."""


class CacheFollower:
    """One client of one shape (module docstring)."""

    def __init__(
        self, shape_url: str, params: dict[str, str], headers: dict[str, str] | None = None
    ) -> None:
        parts = urlsplit(shape_url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._path = parts.path
        self.params = params
        self.extra_headers = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.shape = MaterialisedShape()
        self.handle: str | None = None
        self.offset = "-1"
        self.cursor: str | None = None
        self.live = False
        """Up to date: the next request is a live one."""
        self.refetches = 0
        self.retries = 0
        """503 answers retried after their ``retry-after``."""
        self.responses = 0
        self.cache_status: dict[str, int] = {}
        """``X-Cache-Status`` values seen, counted."""
        self.arrivals: dict[int, float] = {}
        """When each row ``id`` first arrived (wall clock)."""

    def request_target(self) -> str:
        query = {**self.params, "offset": self.offset}
        if self.handle is not None:
            query["handle"] = self.handle
        if self.live:
            query["live"] = "true"
            if self.cursor is not None:
                query["cursor"] = self.cursor
        return f"{self._path}?{urlencode(sorted(query.items()))}"

    async def run(self) -> None:
        """Follow the shape until cancelled."""
        for _ in range(RECONNECTS):
            reader, writer = await asyncio.open_connection(self._host, self._port)
            try:
                await self._follow(reader, writer)
            finally:
                writer.close()
        raise RuntimeError("the server kept closing this follower's connection")

    async def _follow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Requests on one connection, until the server closes it."""
        while True:
            request = (
                f"GET {self.request_target()} HTTP/1.1\r\nhost: {self._host}\r\n"
                f"{self.extra_headers}\r\n"
            )
            writer.write(request.encode())
            try:
                status, headers, body = await read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionResetError):
                return
            if status == 503:  # overloaded: retry when told, as the official client does
                self.retries += 1
                await asyncio.sleep(float(headers.get("retry-after", "1")))
                continue
            self._handle(status, headers, body, time.time())
            if headers.get("connection", "").lower() == "close":
                return

    def _handle(self, status: int, headers: dict[str, str], body: bytes, arrived: float) -> None:
        self.responses += 1
        cache = headers.get("x-cache-status")
        if cache is not None:
            self.cache_status[cache] = self.cache_status.get(cache, 0) + 1
        if status == 409:
            self.refetches += 1
            self.shape = MaterialisedShape()
            self.handle = headers.get("electric-handle")
            self.offset, self.cursor, self.live = "-1", None, False
            return
        if status != 200:
            raise RuntimeError(f"answered {status}: {body[:200]!r}")
        messages: list[dict[str, Any]] = _decode(body)
        for message in messages:
            self.shape.apply(message)
            value = message.get("value")
            if value is not None and "id" in value:
                self.arrivals.setdefault(int(value["id"]), arrived)
        self.handle = headers["electric-handle"]
        self.offset = headers["electric-offset"]
        self.cursor = headers.get("electric-cursor", self.cursor)
        if "electric-up-to-date" in headers:
            self.live = True

    @property
    def rows(self) -> dict[str, dict[str, Any]]:
        return self.shape.rows


async def start_followers(
    followers: Sequence[CacheFollower], batch: int = 500
) -> list[asyncio.Task[None]]:
    """Start every follower, ``batch`` connections at a time (a burst of ten thousand
    connects overflows the listen backlog and costs seconds of SYN retries)."""
    tasks: list[asyncio.Task[None]] = []
    for start in range(0, len(followers), batch):
        tasks.extend(asyncio.create_task(f.run()) for f in followers[start : start + batch])
        await asyncio.sleep(0.05)
    return tasks


async def wait_for(
    condition: Callable[[], bool],
    tasks: Sequence[asyncio.Task[None]],
    limit: float,
    what: str,
) -> None:
    """Wait until ``condition()`` holds; raise when a follower failed or ``limit`` seconds
    ran out."""
    deadline = time.monotonic() + limit
    while not condition():
        for task in tasks:
            if task.done():
                error = None if task.cancelled() else task.exception()
                raise RuntimeError(f"a follower stopped while waiting for {what}") from error
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {limit:.0f} s for {what}")
        await asyncio.sleep(0.05)


def all_at(followers: Sequence[CacheFollower], row_id: int) -> Callable[[], bool]:
    """Every follower has received row ``row_id`` and is live again."""

    def check() -> bool:
        return all(f.live and row_id in f.arrivals for f in followers)

    return check


# --- the cache-fanout-10k benchmark ------------------------------------------------------------

CACHE_FANOUT_CHANGES = 7
LONG_POLL_SECONDS = 20


def syncd_shape_requests(syncd_url: str) -> float:
    """Shape responses syncd has started (its own ``/metrics``)."""
    text = httpx.get(syncd_url + "/metrics", timeout=30).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "syncd_http_responses_total" and sample.labels["route"] == "shape"
    )


class FanoutRound(NamedTuple):
    """One way of reaching the clients: the median time until all of them held a change, the
    median delay of one client, and syncd's requests per change."""

    all_ms: float
    one_ms: float
    requests_per_change: float


def _insert(dsn: str, row_id: int) -> float:
    """Insert row ``row_id`` (synchronous commit); the wall clock after COMMIT."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit TO on")
        conn.execute("INSERT INTO items VALUES (%s, 'new')", (row_id,))
        return time.time()


async def _fanout_round(
    shape_url: str, syncd_url: str, dsn: str, clients: int, first_id: int
) -> FanoutRound:
    followers = [CacheFollower(shape_url, {"table": "items"}) for _ in range(clients)]
    tasks = await start_followers(followers)
    try:
        await wait_for(lambda: all(f.live for f in followers), tasks, 300, "every catch-up")
        await asyncio.sleep(1)
        before = await asyncio.to_thread(syncd_shape_requests, syncd_url)
        every: list[float] = []
        each: list[float] = []
        for k in range(CACHE_FANOUT_CHANGES):
            row_id = first_id + k
            committed = await asyncio.to_thread(_insert, dsn, row_id)
            await wait_for(all_at(followers, row_id), tasks, 120, f"row {row_id}")
            delays = sorted((f.arrivals[row_id] - committed) * 1000 for f in followers)
            every.append(delays[-1])
            each.append(median(delays))
            await asyncio.sleep(0.5)
        after = await asyncio.to_thread(syncd_shape_requests, syncd_url)
    finally:
        await cancel_tasks(tasks)
    return FanoutRound(median(every), median(each), (after - before) / CACHE_FANOUT_CHANGES)


def run_cache_fanout(clients: int = 10_000, *, keep: bool = False) -> list[str]:
    """The ``make bench`` entry point: ``clients`` followers of one shape through nginx
    (``deploy/nginx/syncd.conf``), then the same followers straight on syncd (the baseline);
    prints and returns the two ``BENCH`` lines."""
    raise_open_file_limit()
    name = "cache-fanout-10k" if clients == 10_000 else f"cache-fanout-{clients}"
    with bench_database("cache") as db:
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, title text)")
            conn.execute("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 50) g")
        settings = {
            "SYNCD_LONG_POLL_TIMEOUT": str(LONG_POLL_SECONDS),
            "SYNCD_MAX_EXISTING_REQUESTS": str(2 * clients + 100),
        }
        with running_syncd(db, "cache", **settings) as daemon:
            nginx = NginxProcess(db.base / "nginx", f"127.0.0.1:{daemon.port}")
            nginx.start()
            try:
                cached = asyncio.run(
                    _fanout_round(nginx.url + "/v1/shape", daemon.url, db.dsn, clients, 100_000)
                )
            finally:
                nginx.stop()
            direct = asyncio.run(
                _fanout_round(daemon.url + "/v1/shape", daemon.url, db.dsn, clients, 200_000)
            )
        if keep:
            print(f"kept {db.base}", flush=True)
    for label, result in (("through nginx", cached), ("straight to syncd", direct)):
        print(
            f"{name}: {clients:,} clients {label}: every client held a change after "
            f"{result.all_ms:.0f} ms (median of {CACHE_FANOUT_CHANGES}), one client after "
            f"{result.one_ms:.0f} ms; syncd answered {result.requests_per_change:.1f} requests "
            "per change",
            flush=True,
        )
    lines = [
        summary(name, cached.all_ms, "ms", direct.all_ms, direct.all_ms / cached.all_ms),
        summary(
            f"{name}-requests",
            cached.requests_per_change,
            "requests/change",
            float(clients),
            clients / max(cached.requests_per_change, 1e-9),
        ),
    ]
    for line in lines:
        print(line, flush=True)
    return lines
