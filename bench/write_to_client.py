"""``write-to-client``: how long a commit takes to reach a live client, beside Postgres's own.

Method. One syncd, one table, one shape of it followed by two clients in this process: the
Python :class:`~shapes.client.ShapeStream` over SSE and over long-polls. Two readers run in
processes of their own (:mod:`bench.arrivals`, so that the time they note is not held up by
this process's interpreter lock while its clients take the same commit): as baseline,
``pg_recvlogical`` with ``pgoutput`` on a slot and publication of its own, which receives the
same commits (what any logical replication client waits for, before syncd does anything); and
a raw SSE reader of the shape, which parses nothing, so its delay is syncd's and the Python
clients' excess over it is theirs. A committer inserts one row per transaction,
``--w2c-commits`` times, ``--w2c-interval`` seconds apart, with ``synchronous_commit`` on, and
notes the wall clock as each ``COMMIT`` returns; each reader notes when the row's insert reached
it (its unique text is searched for in the bytes as they arrive). The delay of one delivery is
the difference.

Two phases. First a quiet disk; then again while another process writes to the same
filesystem (a file rewritten in 8 MB blocks, each followed by ``fsync``), which is where a
flush on syncd's event loop used to show as p99 spikes.

Summary lines (the targets: p50 within 2× of the baseline, p99 within 10 ms)::

    BENCH write-to-client value=<worst client p50 ms> unit=ms baseline=<pg_recvlogical p50 ms>
        ratio=<baseline/value>
    BENCH write-to-client-raw value=<raw SSE reader p50 ms> unit=ms baseline=<the same>
        ratio=<baseline/value>
    BENCH write-to-client-p99 value=<worst client p99 ms> unit=ms baseline=10 ratio=<10/value>
    BENCH write-to-client-busy-disk-p99 value=<the same while the disk is busy> unit=ms
        baseline=10 ratio=<10/value>
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psycopg
from psycopg import sql

from bench.children import cancel_tasks, stop_child
from bench.cluster import BenchDatabase, bench_database
from bench.fanout import _delays, percentile
from bench.large_txn import ROOT, _Daemon
from bench.stalled_readers import live_position
from bench.stats import summary
from shapes.client import LiveMode, ShapeDefinition, ShapeStream
from syncd.daemon import event_loop_factory

TABLE = "w2c_items"
P99_TARGET_MS = 10.0
READY_TIMEOUT = 60.0
DELIVERY_TIMEOUT = 30.0
BASELINE_SLOT = "w2c_baseline"
BASELINE_PUBLICATION = "w2c_baseline"

# A separate process that keeps the disk busy: rewrites a file in 8 MB blocks, fsync after each.
_DISK_WRITER = """
import os, sys
path, size = sys.argv[1], int(sys.argv[2])
block = os.urandom(8 << 20)
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
while True:
    for offset in range(0, size, len(block)):
        os.pwrite(fd, block, offset)
        os.fsync(fd)
"""


def log(text: str) -> None:
    print(text, flush=True)


@dataclass(frozen=True)
class PhaseResult:
    """The delays (ms) of one phase, per reader, and the deliveries that never came."""

    phase: str
    delays: dict[str, list[float]]
    missing: dict[str, int]

    def p(self, reader: str, fraction: float) -> float:
        return percentile(self.delays[reader], fraction)

    def describe(self) -> str:
        parts = [
            f"{reader} p50 {self.p(reader, 0.5):.1f} p99 {self.p(reader, 0.99):.1f}"
            f" max {max(values, default=float('nan')):.1f}"
            + (f" ({self.missing[reader]} missing)" if self.missing[reader] else "")
            for reader, values in self.delays.items()
        ]
        return f"  {self.phase}: " + "; ".join(parts) + " (ms)"


class _Committer:
    """Inserts one row per transaction (synchronous commit); notes the clock after COMMIT."""

    def __init__(self, dsn: str, first_id: int) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute("SET synchronous_commit TO on")
        self.next_id = first_id

    def commit(self) -> tuple[int, float]:
        row_id, self.next_id = self.next_id, self.next_id + 1
        self.conn.execute(
            sql.SQL("INSERT INTO {} (id, body) VALUES (%s, %s)").format(sql.Identifier(TABLE)),
            (row_id, f"w2c-row-{row_id}-end"),
        )
        return row_id, time.time()

    def close(self) -> None:
        self.conn.close()


class _Arrivals:
    """A :mod:`bench.arrivals` child, and a thread that reads the arrivals it prints into
    ``seen`` (``opened`` is set when it says its stream is open)."""

    def __init__(self, args: list[str], stdin: IO[bytes] | None = None) -> None:
        self.seen: dict[int, float] = {}
        self.opened = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.arrivals", *args],
            cwd=ROOT,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.thread = threading.Thread(target=self._read, name="arrivals", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line == b"open\n":
                self.opened.set()
                continue
            row, at = line.split()
            self.seen.setdefault(int(row), float(at))

    def stop(self) -> None:
        stop_child(self.process)
        self.thread.join(10)


class _Baseline:
    """``pg_recvlogical`` streaming ``pgoutput`` into a :class:`_Arrivals` reader."""

    def __init__(self, db: BenchDatabase) -> None:
        bindir = db.server.bindir
        if bindir is None or not (bindir / "pg_recvlogical").is_file():
            raise RuntimeError("no pg_recvlogical matching the server (PostgresServer.bindir)")
        self.program = bindir / "pg_recvlogical"
        self.dsn = db.dsn
        self.process: subprocess.Popen[bytes] | None = None
        self.arrivals: _Arrivals | None = None

    @property
    def seen(self) -> dict[int, float]:
        assert self.arrivals is not None
        return self.arrivals.seen

    def start(self) -> None:
        common = [str(self.program), "--dbname", self.dsn, "--slot", BASELINE_SLOT]
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                    sql.Identifier(BASELINE_PUBLICATION), sql.Identifier(TABLE)
                )
            )
        subprocess.run([*common, "--create-slot", "--plugin", "pgoutput"], check=True, timeout=60)
        options = ["-o", "proto_version=1", "-o", f"publication_names={BASELINE_PUBLICATION}"]
        self.process = subprocess.Popen(
            [*common, "--start", "--no-loop", *options, "-f", "-"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0,
        )
        assert self.process.stdout is not None
        self.arrivals = _Arrivals(["stdin"], stdin=self.process.stdout)
        self.process.stdout.close()  # the reader's copy is the one that counts

    def stop(self) -> None:
        if self.process is not None:
            stop_child(self.process)
        if self.arrivals is not None:
            self.arrivals.stop()
        with contextlib.suppress(psycopg.Error), psycopg.connect(self.dsn, autocommit=True) as c:
            c.execute("SELECT pg_drop_replication_slot(%s)", (BASELINE_SLOT,))
            c.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(BASELINE_PUBLICATION)))


async def note_inserts(
    url: str, table: str, mode: LiveMode, seen: dict[int, float], ready: asyncio.Event
) -> None:
    """Follow ``table`` with the Python client until cancelled: note when each inserted ``id``
    arrived in ``seen``, and set ``ready`` once up to date."""
    async with ShapeStream(url, ShapeDefinition.of(table), live_mode=mode) as stream:
        async for batch in stream:
            now = time.time()
            for message in batch:
                if message.get("headers", {}).get("operation") == "insert":
                    seen.setdefault(int(message["value"]["id"]), now)
            if stream.is_up_to_date:
                ready.set()


@contextlib.contextmanager
def _busy_disk(directory: Path, megabytes: int) -> Iterator[None]:
    """Another process rewriting a file in ``directory`` with fsyncs, until the block ends."""
    path = directory / "busy-disk.bin"
    process = subprocess.Popen(
        [sys.executable, "-c", _DISK_WRITER, str(path), str(megabytes << 20)],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)  # let it reach its steady state
        yield
    finally:
        stop_child(process)
        path.unlink(missing_ok=True)


async def _phase(
    name: str,
    daemon: _Daemon,
    dsn: str,
    baseline: _Baseline,
    commits: int,
    interval: float,
    first_id: int,
) -> PhaseResult:
    """Follow the shape with the raw reader and both clients, commit, and collect every
    reader's delays."""
    shape_url = daemon.url + "/v1/shape"
    received: dict[str, dict[int, float]] = {"sse": {}, "long-poll": {}}
    ready = {mode: asyncio.Event() for mode in received}
    handle, offset = await asyncio.to_thread(live_position, daemon.url, TABLE)
    raw = _Arrivals(["sse", str(daemon.port), TABLE, handle, offset])
    tasks = [
        asyncio.create_task(note_inserts(shape_url, TABLE, mode, received[mode], ready[mode]))
        for mode in ("sse", "long-poll")
    ]
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await asyncio.gather(*(event.wait() for event in ready.values()))
        if not await asyncio.to_thread(raw.opened.wait, READY_TIMEOUT):
            raise TimeoutError("the raw SSE reader's stream did not open")
        await asyncio.sleep(1.0)  # the SSE stream opens with the request after up-to-date
        committer = await asyncio.to_thread(_Committer, dsn, first_id)
        commit_times: dict[int, float] = {}
        try:
            for _ in range(commits):
                await asyncio.sleep(interval)
                row_id, at = await asyncio.to_thread(committer.commit)
                commit_times[row_id] = at
        finally:
            await asyncio.to_thread(committer.close)
        readers = [*received.values(), baseline.seen, raw.seen]
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while time.monotonic() < deadline:
            if all(row_id in seen for seen in readers for row_id in commit_times):
                break
            await asyncio.sleep(0.05)
    finally:
        await cancel_tasks(tasks)
        await asyncio.to_thread(raw.stop)
    delays: dict[str, list[float]] = {}
    missing: dict[str, int] = {}
    for reader, seen in (
        ("pg_recvlogical", baseline.seen),
        ("raw-sse", raw.seen),
        *received.items(),
    ):
        delays[reader], missing[reader] = _delays(commit_times, [seen])
    return PhaseResult(name, delays, missing)


def run_write_to_client(
    commits: int = 200, interval: float = 0.05, busy_megabytes: int = 256, *, keep: bool = False
) -> list[str]:
    """Run ``write-to-client``; return (and print) its summary lines."""
    log(f"write-to-client: {commits} commits {interval * 1000:.0f} ms apart, SSE and long-poll")
    with bench_database("write_to_client", keep=keep) as db:
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(
                    sql.Identifier(TABLE)
                )
            )
        slot = f"syncd_w2c_{secrets.token_hex(4)}"
        daemon = _Daemon(db.dsn, db.base / "storage", slot, None, db.base / "syncd.log")
        daemon.start(timeout=60)
        baseline = _Baseline(db)
        baseline.start()
        results: list[PhaseResult] = []
        try:
            for number, name in enumerate(("quiet disk", "busy disk")):
                busy = _busy_disk(db.base, busy_megabytes) if name == "busy disk" else None
                with busy or contextlib.nullcontext():
                    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
                        result = runner.run(
                            _phase(
                                name,
                                daemon,
                                db.dsn,
                                baseline,
                                commits,
                                interval,
                                first_id=1 + number * commits,
                            )
                        )
                log(result.describe())
                results.append(result)
            daemon.check_alive()
        finally:
            baseline.stop()
            daemon.stop()
    quiet, busy_result = results
    clients = ("sse", "long-poll")
    p50 = max(quiet.p(c, 0.5) for c in clients)
    base50 = quiet.p("pg_recvlogical", 0.5)
    raw50 = quiet.p("raw-sse", 0.5)
    p99 = max(quiet.p(c, 0.99) for c in clients)
    busy99 = max(busy_result.p(c, 0.99) for c in clients)
    lines = [
        summary("write-to-client", p50, "ms", base50, base50 / p50),
        summary("write-to-client-raw", raw50, "ms", base50, base50 / raw50),
        summary("write-to-client-p99", p99, "ms", P99_TARGET_MS, P99_TARGET_MS / p99),
        summary(
            "write-to-client-busy-disk-p99", busy99, "ms", P99_TARGET_MS, P99_TARGET_MS / busy99
        ),
    ]
    for line in lines:
        log(line)
    return lines
