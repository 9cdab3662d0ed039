"""Memory benchmark: one very large transaction through syncd with pgoutput streaming.

``large-txn-rss``
    syncd runs as a child process (``python -m syncd``) with one shape on a table; one
    transaction inserts ``--large-rows`` rows of ``--large-row-bytes`` bytes of text (2,000,000
    x 1,000 bytes, about 2 GB, by default) with ``INSERT ... SELECT repeat(...)``. The benchmark
    waits until syncd has the transaction durable (the slot's confirmed flush LSN reaches the
    WAL position after the commit: syncd confirms only what it has fsynced), stops syncd, checks
    that the shape log holds exactly the transaction (one entry per row, consecutive op
    positions, ``"last":true`` on the final entry only) and reports syncd's peak resident memory:
    ``VmHWM`` from ``/proc/<pid>/status`` (the kernel's high-water mark, start-up included), and
    the highest of the ``VmRSS`` samples taken every 50 ms.

Electric drops every shape once a transaction exceeds 250 MiB (``max_txn_size``); syncd spools
a streamed transaction to disk and writes it to the shape logs in pieces, so its memory should
not depend on the transaction's size. The summary line compares the peak with a 300 MB budget::

    BENCH large-txn-rss value=<peak RSS MB> unit=MB baseline=300 ratio=<300/value>
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
from psycopg import sql

from bench.cluster import BenchDatabase, bench_database
from shapes.offset import LogOffset
from syncd.storage import LOG_FILE, ShapeLog

ROOT = Path(__file__).resolve().parent.parent
TABLE = "large_rows"
BUDGET_MB = 300.0
_RECORD = struct.Struct(">QQBI")


@dataclass(frozen=True)
class LargeTxnResult:
    rows: int
    row_bytes: int
    insert_seconds: float
    """Time Postgres took to run the transaction."""
    durable_seconds: float
    """From the commit until syncd had confirmed it as flushed."""
    peak_rss_mb: float
    """syncd's VmHWM (peak resident set) in MiB."""
    sampled_peak_mb: float
    """The highest VmRSS sample (every 50 ms) in MiB."""
    idle_rss_mb: float
    """VmRSS just before the transaction started."""
    log_mb: float
    """Size of the shape's change log."""

    def summary(self) -> str:
        value = self.peak_rss_mb
        return (
            f"BENCH large-txn-rss value={value:.1f} unit=MB baseline={BUDGET_MB:.0f} "
            f"ratio={BUDGET_MB / value:.2f}"
        )


def measure_large_txn(
    dsn: str,
    work_dir: Path,
    *,
    rows: int,
    row_bytes: int,
    timeout: float,
    replication_options: str | None = None,
) -> LargeTxnResult:
    """Run one large transaction through a syncd child process (see the module docstring)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, payload text)").format(
                sql.Identifier(TABLE)
            )
        )
    storage_dir = work_dir / "storage"
    slot = f"syncd_large_{secrets.token_hex(4)}"
    daemon = _Daemon(dsn, storage_dir, slot, replication_options, work_dir / "syncd.log")
    daemon.start(timeout=60)
    try:
        handle = daemon.create_shape()
        sampler = _RssSampler(daemon.pid)
        sampler.start()
        idle = _status_kb(daemon.pid, "VmRSS") / 1024
        started = time.monotonic()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} SELECT g, repeat('x', %s) FROM generate_series(1, %s) g"
                ).format(sql.Identifier(TABLE)),
                (row_bytes, rows),
            )
            committed = time.monotonic()
            row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
            assert row is not None
            target = str(row[0])
            deadline = started + timeout
            while True:
                daemon.check_alive()
                done = conn.execute(
                    "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots"
                    " WHERE slot_name = %s",
                    (target, slot),
                ).fetchone()
                if done == (True,):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"syncd did not confirm {target} within {timeout}s")
                time.sleep(0.1)
        durable = time.monotonic()
        peak = _status_kb(daemon.pid, "VmHWM") / 1024
        sampler.stop()
    finally:
        daemon.stop()
    log_mb = _check_log(storage_dir / "shapes" / handle, rows)
    return LargeTxnResult(
        rows=rows,
        row_bytes=row_bytes,
        insert_seconds=committed - started,
        durable_seconds=durable - committed,
        peak_rss_mb=peak,
        sampled_peak_mb=sampler.peak_kb / 1024,
        idle_rss_mb=idle,
        log_mb=log_mb,
    )


def run_large_txn(rows: int, row_bytes: int, keep: bool = False) -> str:
    """The ``make bench`` entry point: own Postgres and database; prints and returns the line."""
    with bench_database("large", keep=keep) as db:
        size_mb = rows * row_bytes / 1e6
        print(f"large-txn: one transaction of {rows:,} rows x {row_bytes:,} B ({size_mb:,.0f} MB)")
        result = measure_large_txn(
            db.dsn, db.base / "work", rows=rows, row_bytes=row_bytes, timeout=3600
        )
    print(
        f"  insert {result.insert_seconds:.1f}s, durable in syncd {result.durable_seconds:.1f}s "
        f"after the commit; shape log {result.log_mb:,.0f} MB"
    )
    print(
        f"  syncd RSS: idle {result.idle_rss_mb:.1f} MB, peak sampled "
        f"{result.sampled_peak_mb:.1f} MB, VmHWM {result.peak_rss_mb:.1f} MB"
    )
    line = result.summary()
    print(line, flush=True)
    return line


def _check_log(directory: Path, rows: int) -> float:
    """The shape log holds one transaction of ``rows`` inserts, whole; returns its size in MB."""
    shape_log = ShapeLog.open(directory, 10 * 1024 * 1024)
    latest = shape_log.latest_offset
    if latest.op != 2 * (rows - 1):
        raise AssertionError(f"shape log ends at {latest}, expected op {2 * (rows - 1)}")
    tail, end = shape_log.read(LogOffset(latest.tx, max(latest.op - 3, 0)))
    if end != latest or b'"last":true' not in tail[-1] or any(b'"last"' in t for t in tail[:-1]):
        raise AssertionError(f"bad end of transaction: {tail!r}")
    count = 0
    expected_op = 0
    with open(directory / LOG_FILE, "rb") as f:
        buffer = b""
        while chunk := f.read(16 << 20):
            buffer += chunk
            at = 0
            while at + _RECORD.size <= len(buffer):
                tx, op, _flags, size = _RECORD.unpack_from(buffer, at)
                if at + _RECORD.size + size > len(buffer):
                    break
                if tx != latest.tx or op != expected_op:
                    raise AssertionError(f"record {count}: offset {tx}_{op}")
                expected_op += 2
                count += 1
                at += _RECORD.size + size
            buffer = buffer[at:]
    if count != rows or buffer:
        raise AssertionError(f"{count} records for {rows} rows")
    return (directory / LOG_FILE).stat().st_size / 1e6


class _Daemon:
    """``python -m syncd`` as a child process on a free loopback port."""

    def __init__(
        self, dsn: str, storage_dir: Path, slot: str, options: str | None, log_path: Path
    ) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
        env.update(
            SYNCD_DATABASE_URL=dsn,
            SYNCD_STORAGE_DIR=str(storage_dir),
            SYNCD_PORT=str(self.port),
            SYNCD_SLOT=slot,
            SYNCD_LOG_LEVEL=os.environ.get("BENCH_SYNCD_LOG_LEVEL", "INFO"),
        )
        if options:
            env["SYNCD_REPLICATION_OPTIONS"] = options
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "syncd"],
                cwd=ROOT,
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                answer = httpx.get(self.url + "/v1/health", timeout=1.0)
                if answer.status_code == 200 and answer.json() == {"status": "active"}:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"syncd did not become healthy:\n{self.log_tail()}")

    def create_shape(self) -> str:
        """Create the shape (its snapshot of the empty table) and return its handle."""
        params = {"table": TABLE, "offset": "-1"}
        answer = httpx.get(self.url + "/v1/shape", params=params, timeout=30)
        answer.raise_for_status()
        handle = answer.headers["electric-handle"]
        offset = answer.headers["electric-offset"]
        while True:  # follow the snapshot to its end, so the shape is ready
            answer = httpx.get(
                self.url + "/v1/shape",
                params={"table": TABLE, "offset": offset, "handle": handle},
                timeout=30,
            )
            answer.raise_for_status()
            offset = answer.headers["electric-offset"]
            if "electric-up-to-date" in answer.headers:
                return str(handle)

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"syncd exited with {self.process.returncode}:\n{self.log_tail()}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def running_syncd(db: BenchDatabase, name: str, **env: str) -> Iterator[_Daemon]:
    """syncd as a child on ``db`` (slot ``syncd_<name>_<random>``; storage and log in the run's
    directory) with ``env`` added to its settings; started, checked alive when the block ends
    normally, and stopped."""
    slot = f"syncd_{name}_{secrets.token_hex(4)}"
    daemon = _Daemon(db.dsn, db.base / "storage", slot, None, db.base / "syncd.log")
    daemon.env.update(env)
    daemon.start(timeout=60)
    try:
        yield daemon
        daemon.check_alive()
    finally:
        daemon.stop()


def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


class _RssSampler(threading.Thread):
    """Samples a process's VmRSS every 50 ms and keeps the highest."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kb = 0
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(0.05):
            try:
                self.peak_kb = max(self.peak_kb, _status_kb(self.pid, "VmRSS"))
            except (OSError, RuntimeError):
                return

    def stop(self) -> None:
        self._stopped.set()
        self.join()
