"""Readers that stop reading cost syncd bounded memory, are disconnected after the send
deadline, and do not stop anyone else's delivery.

A real syncd child process (so that its resident memory can be read from ``/proc``), raw
sockets that send a live SSE request, read the response head and never read again, tens of
MB written meanwhile, and a healthy Python client following the same shape over SSE.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

import httpx
import psycopg
import pytest

from shapes.client import ShapeDefinition, ShapeStream
from tests.syncd_process import SyncdProcess

pytestmark = pytest.mark.timeout(600)

TABLE = "items"
STALLED_READERS = 200
TRANSACTIONS = 40
ROWS_PER_TRANSACTION = 1_000
ROW_TEXT_BYTES = 1_024  # 40 MB in all
SEND_TIMEOUT = 5.0
LOADED_BOUND_MB = 150.0
"""Above idle while the readers are stalled. Unbounded buffering holds the backlog once per
reader (gigabytes here); a bounded piece per reader is a few MB in all."""
RETURNED_BOUND_MB = 60.0
"""Above idle once every stalled reader is gone."""
TCP_ESTABLISHED = 1
WAIT_LIMIT = 240.0


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


class PeakRss(threading.Thread):
    """The highest RSS of a process, sampled every 20 ms until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            self.peak = max(self.peak, rss_mb(self.pid))

    def stop(self) -> float:
        self.done.set()
        self.join()
        return self.peak


@pytest.fixture
def syncd(pg_dsn: str, tmp_path: Path) -> Iterator[SyncdProcess]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {TABLE} (id bigserial PRIMARY KEY, body text NOT NULL)")
    daemon = SyncdProcess(pg_dsn, tmp_path / "storage", send_timeout=SEND_TIMEOUT)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def live_position(daemon: SyncdProcess) -> tuple[str, str]:
    params = {"table": TABLE, "offset": "-1"}
    while True:
        answer = httpx.get(daemon.shape_url, params=params, timeout=60)
        answer.raise_for_status()
        params = {
            "table": TABLE,
            "handle": answer.headers["electric-handle"],
            "offset": answer.headers["electric-offset"],
        }
        if "electric-up-to-date" in answer.headers:
            return params["handle"], params["offset"]


def sse_query(handle: str, offset: str) -> dict[str, str]:
    return {"table": TABLE, "handle": handle, "offset": offset, "live": "true", "live_sse": "true"}


@contextmanager
def stalled_readers(
    daemon: SyncdProcess, query: dict[str, str], count: int = STALLED_READERS
) -> Iterator[list[socket.socket]]:
    """Sockets that sent a request for ``query``, read the response head, and read nothing
    more."""
    request = f"GET /v1/shape?{urlencode(query)} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(60)
            sock.connect(("127.0.0.1", daemon.port))
            sock.sendall(request)
            head = b""
            while b"\r\n\r\n" not in head:
                data = sock.recv(1)
                assert data, "syncd closed a reader before the response head"
                head += data
            assert head.startswith(b"HTTP/1.1 200"), head
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of ``sock`` (first byte of ``struct tcp_info``)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    return int(struct.unpack_from("B", info)[0])


def write_rows(dsn: str, transactions: int = TRANSACTIONS) -> int:
    insert = (
        f"INSERT INTO {TABLE} (body) SELECT repeat(md5(random()::text), %s) "
        "FROM generate_series(1, %s)"
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(transactions):
            conn.execute(insert, (ROW_TEXT_BYTES // 32, ROWS_PER_TRANSACTION))
    return transactions * ROWS_PER_TRANSACTION


async def wait_until(condition: object, what: str) -> None:
    """Poll ``condition()`` every 100 ms until true (failing after :data:`WAIT_LIMIT`)."""
    assert callable(condition)
    deadline = time.monotonic() + WAIT_LIMIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_stalled_sse_readers_cost_bounded_memory_and_nobody_else_delivery(
    syncd: SyncdProcess, pg_dsn: str
) -> None:
    assert syncd.process is not None
    pid = syncd.process.pid
    handle, offset = live_position(syncd)
    received: set[int] = set()
    live = asyncio.Event()

    async def follow() -> None:
        definition = ShapeDefinition.of(TABLE)
        async with ShapeStream(syncd.shape_url, definition, live_mode="sse") as stream:
            async for batch in stream:
                for message in batch:
                    if message.get("headers", {}).get("operation") == "insert":
                        received.add(int(message["value"]["id"]))
                live.set()

    consumer = asyncio.create_task(follow())
    try:
        await asyncio.wait_for(live.wait(), 60)
        idle = rss_mb(pid)
        with stalled_readers(syncd, sse_query(handle, offset)) as sockets:
            sampler = PeakRss(pid)
            sampler.start()
            try:
                rows = await asyncio.to_thread(write_rows, pg_dsn)
                # the healthy reader gets every change while the others are stalled
                await wait_until(lambda: len(received) >= rows, "the healthy reader")
            finally:
                peak = sampler.stop()
            assert len(received) == rows
            assert peak - idle < LOADED_BOUND_MB, f"RSS {peak:.0f} MB, idle {idle:.0f} MB"
            # each stalled reader is disconnected once it has not drained for the deadline
            await wait_until(
                lambda: all(tcp_state(sock) != TCP_ESTABLISHED for sock in sockets),
                "the stalled readers to be disconnected",
            )
        await wait_until(
            lambda: rss_mb(pid) - idle < RETURNED_BOUND_MB, "memory to return after closing"
        )
        # and the healthy reader goes on
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            row = conn.execute(f"INSERT INTO {TABLE} (body) VALUES ('after') RETURNING id")
            last = row.fetchone()
        assert last is not None
        await wait_until(lambda: int(last[0]) in received, "a change after the stall")
        assert syncd.process.poll() is None
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)


async def test_stalled_readers_of_a_large_catch_up_body_cost_bounded_memory(
    syncd: SyncdProcess, pg_dsn: str
) -> None:
    """A catch-up response is one log chunk (up to 10 MiB and more): it is written from the log
    in pieces, not built whole per request and left in the transport of a reader that stalls."""
    assert syncd.process is not None
    pid = syncd.process.pid
    handle, offset = live_position(syncd)
    rows = await asyncio.to_thread(write_rows, pg_dsn, 8)  # about 9 MB: one log chunk
    catch_up = {"table": TABLE, "handle": handle, "offset": offset}
    async with httpx.AsyncClient(timeout=60) as client:
        while True:  # until syncd has every row (then up-to-date ends the body)
            whole = await client.get(syncd.shape_url, params=catch_up)
            assert whole.status_code == 200
            if len(whole.json()) == rows + 1:
                break
            await asyncio.sleep(0.1)
    assert len(whole.content) > 8_000_000
    idle = rss_mb(pid)
    sampler = PeakRss(pid)
    sampler.start()
    try:
        with stalled_readers(syncd, catch_up, count=60) as sockets:
            await wait_until(
                lambda: all(tcp_state(sock) != TCP_ESTABLISHED for sock in sockets),
                "the stalled readers to be disconnected",
            )
    finally:
        peak = sampler.stop()
    # unbounded: 60 copies of the body (600 MB); bounded: a piece and small buffers each
    assert peak - idle < LOADED_BOUND_MB, f"RSS {peak:.0f} MB, idle {idle:.0f} MB"
    async with httpx.AsyncClient(timeout=60) as client:
        again = await client.get(syncd.shape_url, params=catch_up)
    # the same changes (the closing up-to-date carries the server's latest LSN, which moves)
    assert again.json()[:-1] == whole.json()[:-1]
