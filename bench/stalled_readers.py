"""Benchmark ``stalled-readers-rss``: what readers that stop reading cost syncd and everyone else.

syncd runs as a child process with two tables: ``stalled_items``, written to in bulk, and
``stalled_pings``, one small row at a time. A Python :class:`~shapes.client.ShapeStream`
follows the pings shape live over SSE; its delay from ``COMMIT`` to delivery is the latency
another client sees. The benchmark measures syncd's resident memory (``VmRSS``) and that
latency while idle, then opens ``--stalled-readers`` (1,000) raw sockets that each send a live
SSE request for ``stalled_items``, read the response head and never read again (with a small
receive buffer), and writes ``--stalled-megabytes`` (200 MB) of rows into ``stalled_items`` in
1 MB transactions, ``--stalled-write-rate`` (5) MB per second, while the pings go on: a rate
syncd ingests on a small machine even with no reader at all, so that the other client's delay
measures what the stalled readers cost rather than a replication backlog every change waits
behind. The send deadline is raised for the run so that no
stalled reader is disconnected: the figure is the cost of holding them all.

It prints the peak RSS above idle, the RSS above idle after the sockets are closed, the pings'
p50 delay idle and loaded, and::

    BENCH stalled-readers-rss value=<peak MB above idle> unit=MB baseline=300 ratio=<300/value>
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlencode

import httpx
import psycopg
from psycopg import sql

from bench.cluster import bench_database
from bench.large_txn import _Daemon
from shapes.client import ShapeDefinition, ShapeStream
from syncd.daemon import event_loop_factory

TABLE = "stalled_items"
PING_TABLE = "stalled_pings"
BASELINE_MB = 300.0
ROW_TEXT_BYTES = 1_000
ROWS_PER_TRANSACTION = 1_000
PING_INTERVAL = 0.1
IDLE_PINGS = 30
READER_RECEIVE_BUFFER = 4096
SETTLE_SECONDS = 10.0
DELIVERY_TIMEOUT = 300.0


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (``VmRSS`` of ``/proc/<pid>/status``)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def live_position(base_url: str, table: str) -> tuple[str, str]:
    """Create ``table``'s shape, follow it to up-to-date and return ``(handle, offset)``."""
    url = base_url + "/v1/shape"
    params = {"table": table, "offset": "-1"}
    with httpx.Client(timeout=60) as client:
        while True:
            answer = client.get(url, params=params)
            answer.raise_for_status()
            params = {
                "table": table,
                "handle": answer.headers["electric-handle"],
                "offset": answer.headers["electric-offset"],
            }
            if "electric-up-to-date" in answer.headers:
                return params["handle"], params["offset"]


def sse_request(port: int, table: str, handle: str, offset: str) -> bytes:
    """The raw HTTP/1.1 request of a live SSE reader."""
    query = urlencode(
        {"table": table, "handle": handle, "offset": offset, "live": "true", "live_sse": "true"}
    )
    return f"GET /v1/shape?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()


@contextmanager
def stalled_readers(
    port: int, request: bytes, count: int, receive_buffer: int = READER_RECEIVE_BUFFER
) -> Iterator[list[socket.socket]]:
    """``count`` connections that send ``request``, read the response head and then never
    read; closed (with unread data, so reset) when the block exits."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.settimeout(60)
            sock.connect(("127.0.0.1", port))
            sock.sendall(request)
            head = b""
            while b"\r\n\r\n" not in head:
                data = sock.recv(1)
                if not data:
                    raise ConnectionError("syncd closed a stalled reader before its head")
                head += data
            if not head.startswith(b"HTTP/1.1 200"):
                raise ConnectionError(f"unexpected answer: {head[:200]!r}")
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


class RssSampler(threading.Thread):
    """Samples a process's RSS every 50 ms until stopped; keeps the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0.0
        self.last = 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.last = rss_mb(self.pid)
            self.peak = max(self.peak, self.last)
            self._stop_event.wait(0.05)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


class PingConsumer(threading.Thread):
    """Follows the pings shape live over SSE in its own event loop; records arrival times."""

    def __init__(self, shape_url: str) -> None:
        super().__init__(daemon=True)
        self.shape_url = shape_url
        self.arrived: dict[int, float] = {}
        self.ready = threading.Event()
        self.failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def run(self) -> None:
        loop = event_loop_factory()()
        self._loop = loop
        try:
            self._task = loop.create_task(self._follow())
            loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # reported by the benchmark
            self.failure = exc
        finally:
            loop.close()

    async def _follow(self) -> None:
        definition = ShapeDefinition.of(PING_TABLE)
        async with ShapeStream(self.shape_url, definition, live_mode="sse") as stream:
            async for batch in stream:
                now = time.time()
                for message in batch:
                    if message.get("headers", {}).get("operation") == "insert":
                        self.arrived.setdefault(int(message["value"]["id"]), now)
                self.ready.set()

    def stop(self) -> None:
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)
        self.join(30)


class Pinger:
    """Commits one ping row at a time (synchronously committed) and remembers when."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute("SET synchronous_commit TO on")
        self.committed: dict[int, float] = {}

    def ping(self) -> int:
        query = sql.SQL("INSERT INTO {} DEFAULT VALUES RETURNING id").format(
            sql.Identifier(PING_TABLE)
        )
        row = self.conn.execute(query).fetchone()
        assert row is not None
        self.committed[int(row[0])] = time.time()
        return int(row[0])

    def close(self) -> None:
        self.conn.close()


def delays_ms(pinger: Pinger, consumer: PingConsumer, ids: list[int]) -> list[float]:
    """Commit-to-delivery delays of the pings ``ids`` (waiting for them to arrive)."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while any(i not in consumer.arrived for i in ids):
        if consumer.failure is not None:
            raise RuntimeError("the ping consumer failed") from consumer.failure
        if time.monotonic() > deadline:
            raise TimeoutError("pings were not delivered")
        time.sleep(0.05)
    return [(consumer.arrived[i] - pinger.committed[i]) * 1000 for i in ids]


def ping_until(pinger: Pinger, done: threading.Event, ids: list[int]) -> None:
    """Ping every :data:`PING_INTERVAL` until ``done``."""
    while not done.wait(PING_INTERVAL):
        ids.append(pinger.ping())


def write_rows(dsn: str, megabytes: int, rate: float) -> int:
    """Insert about ``megabytes`` MB into :data:`TABLE`, 1 MB per transaction, at ``rate`` MB
    per second; the rows written."""
    per_row = ROW_TEXT_BYTES // 32
    insert = sql.SQL(
        "INSERT INTO {} (body) SELECT repeat(md5(random()::text), %s) FROM generate_series(1, %s)"
    ).format(sql.Identifier(TABLE))
    transaction_mb = ROW_TEXT_BYTES * ROWS_PER_TRANSACTION / 1_000_000
    transactions = max(1, round(megabytes / transaction_mb))
    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for k in range(transactions):
            conn.execute(insert, (per_row, ROWS_PER_TRANSACTION))
            ahead = started + (k + 1) * transaction_mb / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    return transactions * ROWS_PER_TRANSACTION


def run_stalled_readers(
    readers: int, megabytes: int, rate: float = 5.0, *, keep: bool = False
) -> float:
    """Run the benchmark and print its lines; returns the peak MB above idle."""
    with bench_database("stalled", keep=keep) as db:
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {TABLE} (id bigserial PRIMARY KEY, body text NOT NULL)")
            conn.execute(f"CREATE TABLE {PING_TABLE} (id bigserial PRIMARY KEY, at timestamptz)")
        slot = f"bench_stalled_{secrets.token_hex(4)}"
        daemon = _Daemon(db.dsn, db.base / "storage", slot, None, db.base / "syncd.log")
        daemon.env["SYNCD_SEND_TIMEOUT"] = "3600"
        daemon.start(60)
        try:
            return _measure(daemon, db.dsn, readers, megabytes, rate)
        finally:
            daemon.stop()


def _measure(daemon: _Daemon, dsn: str, readers: int, megabytes: int, rate: float) -> float:
    shape_url = daemon.url + "/v1/shape"
    handle, offset = live_position(daemon.url, TABLE)
    consumer = PingConsumer(shape_url)
    consumer.start()
    pinger = Pinger(dsn)
    try:
        if not consumer.ready.wait(60):
            raise TimeoutError("the ping consumer did not start")
        time.sleep(2)
        idle_ids = []
        idle_rss_samples = []
        for _ in range(IDLE_PINGS):
            idle_ids.append(pinger.ping())
            idle_rss_samples.append(rss_mb(daemon.pid))
            time.sleep(PING_INTERVAL)
        idle_p50 = statistics.median(delays_ms(pinger, consumer, idle_ids))
        idle_rss = statistics.median(idle_rss_samples)
        print(f"stalled-readers: idle RSS {idle_rss:.0f} MB, ping p50 {idle_p50:.1f} ms")
        request = sse_request(daemon.port, TABLE, handle, offset)
        sampler = RssSampler(daemon.pid)
        with stalled_readers(daemon.port, request, readers):
            print(f"stalled-readers: {readers} stalled readers open", flush=True)
            sampler.start()
            loaded_ids: list[int] = []
            done = threading.Event()
            pinging = threading.Thread(target=ping_until, args=(pinger, done, loaded_ids))
            pinging.start()
            started = time.monotonic()
            try:
                rows = write_rows(dsn, megabytes, rate)
                written = time.monotonic() - started
                # pings committed after the last write arrive after it: syncd has it all
                loaded_ids.append(pinger.ping())
                delays_ms(pinger, consumer, loaded_ids[-1:])
                ingested = time.monotonic() - started
                time.sleep(SETTLE_SECONDS)
            finally:
                done.set()
                pinging.join()
            loaded_p50 = statistics.median(delays_ms(pinger, consumer, loaded_ids))
            with_readers = sampler.last
        closed_at = time.monotonic()
        time.sleep(SETTLE_SECONDS)
        sampler.stop()
        after_close = sampler.last
        peak = sampler.peak - idle_rss
        print(
            f"stalled-readers: {rows} rows ({megabytes} MB) written in {written:.1f} s, "
            f"in syncd after {ingested:.1f} s"
        )
        print(
            f"stalled-readers: RSS peak {sampler.peak:.0f} MB ({peak:.0f} above idle), "
            f"{with_readers - idle_rss:.0f} above idle before closing, "
            f"{after_close - idle_rss:.0f} above idle {time.monotonic() - closed_at:.0f} s "
            "after closing the sockets"
        )
        print(
            f"stalled-readers: other client's ping p50 idle {idle_p50:.1f} ms, "
            f"loaded {loaded_p50:.1f} ms ({len(loaded_ids)} pings, "
            f"ratio {loaded_p50 / idle_p50:.2f})"
        )
        value = max(peak, 0.1)
        print(
            f"BENCH stalled-readers-rss value={value:.1f} unit=MB baseline={BASELINE_MB:.0f} "
            f"ratio={BASELINE_MB / value:.2f}",
            flush=True,
        )
        return peak
    finally:
        pinger.close()
        consumer.stop()
