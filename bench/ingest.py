"""Ingest benchmarks: pgoutput stream → syncd engine → durable shape logs.

``ingest-1-shape``
    1,000,000 narrow rows (1,000 transactions of 1,000 rows) into ONE shape without a ``where``
    clause, against ``pg_recvlogical`` reading the same stream into ``/dev/null``.
``ingest-10k-shapes``
    The same stream into 10,000 shapes ``id = <k>`` (one row each), against the 1-shape rate.
``ingest-10k-shapes-small-txns``
    200,000 rows in transactions of 10 rows into the 10,000 shapes ``id = <k>``, against
    ``pg_recvlogical`` (each transaction touches ten logs: per-transaction costs dominate).

Method. Every reader gets its own replication slot, and every slot is created before the data
is generated, so every round of every reader decodes exactly the same WAL. syncd cannot
re-read a stream into the same shapes (a shape skips transactions at or below its latest
offset), so each syncd round has its own engine, storage directory and shapes, created (and
their snapshots finished) on the empty table before the data. A round times:

* ``pg_recvlogical --start -o proto_version=1 -o publication_names=... -E <end> -f /dev/null``
  from process start to exit;
* a fresh :class:`~syncd.replication.ReplicationStream` feeding that round's engine, from its
  creation until the engine's durable LSN reaches the end LSN (the end of the last commit):
  by then every transaction was decoded, routed, appended to the shape logs and fsynced (the
  LSN the engine reports as flushed to Postgres).

The order of the readers alternates between rounds, the page cache is written back
(``sync``) before each timed run, and values are medians over the rounds. After each syncd
round the shape logs are read back and must hold every row.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import resource
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import psycopg
from psycopg import sql

from bench.cluster import bench_database, remove_at_exit
from bench.stats import median, summary
from shapes.offset import SNAPSHOT_END
from shapes.shape import CanonicalShape
from syncd.daemon import event_loop_factory
from syncd.engine import Engine, EngineSettings
from syncd.pgoutput import format_lsn
from syncd.pgprovider import PostgresServer
from syncd.replication import ReplicationSettings, ReplicationStream, drop_slot
from syncd.shape_state import ShapeState

TABLE = "bench_rows"
PUBLICATION = "bench_pub"
RECV = "pg_recvlogical"
ONE = "syncd-1-shape"
MANY = "syncd-many-shapes"


@dataclass(frozen=True)
class IngestOptions:
    """What to run; the defaults are the published benchmark."""

    rows: int = 1_000_000
    txn_rows: int = 1_000
    rounds: int = 3
    shapes: int = 10_000
    create_batch: int = 250
    readers: tuple[str, ...] = (RECV, ONE, MANY)
    """Which readers run (a summary line needs both of its readers)."""
    keep: bool = False
    many_name: str = "ingest-10k-shapes"
    """The name of the many-shapes summary line."""
    many_baseline: str = ONE
    """The reader the many-shapes rate is compared with."""

    def __post_init__(self) -> None:
        if self.rows < 1 or self.txn_rows < 1 or self.rounds < 1 or self.shapes < 1:
            raise ValueError("rows, txn-rows, rounds and shapes must be positive")
        if not self.readers or set(self.readers) - {RECV, ONE, MANY}:
            raise ValueError(f"readers must be among {RECV}, {ONE}, {MANY}")
        if self.shapes > self.rows:
            raise ValueError("--shapes must not exceed --rows (each shape gets one row)")


@dataclass(frozen=True)
class Measurement:
    """One timed run of one reader."""

    reader: str
    round: int
    seconds: float
    cpu_seconds: float
    rows: int

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


@dataclass
class _SyncdRound:
    """One prepared syncd round: its engine (with its own slot) and its shapes."""

    engine: Engine
    shapes: list[ShapeState]
    ids: list[int | None]
    """Per shape: the one id it must hold, or None for a shape that takes every row."""
    used: bool = False


@dataclass
class _Bench:
    options: IngestOptions
    server: PostgresServer
    dsn: str
    work: Path
    recv_slots: list[str] = field(default_factory=list)
    one: list[_SyncdRound] = field(default_factory=list)
    many: list[_SyncdRound] = field(default_factory=list)
    end_lsn: int = 0


def log(text: str) -> None:
    print(text, flush=True)


def run_ingest(options: IngestOptions) -> list[str]:
    """Run the ingest benchmarks; return their summary lines (also printed as they finish)."""
    started = time.monotonic()
    try:
        with bench_database("ingest", keep=options.keep) as db:
            bench = _Bench(options, db.server, db.dsn, db.base / "syncd")
            # The engine runs on the event loop the daemon would pick (uvloop when installed).
            with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
                return runner.run(_main(bench))
    finally:
        log(f"total bench time {time.monotonic() - started:.1f}s")


async def _main(bench: _Bench) -> list[str]:
    try:
        return await _run(bench)
    finally:
        await _close_rounds(bench)


async def _run(bench: _Bench) -> list[str]:
    options = bench.options
    bindir = bench.server.bindir
    if bindir is None or not (bindir / "pg_recvlogical").is_file():
        raise RuntimeError("no pg_recvlogical matching the server (PostgresServer.bindir)")
    recvlogical = bindir / "pg_recvlogical"
    log(
        f"ingest: {options.rows:,} rows as {_txn_count(options):,} transactions of up to "
        f"{options.txn_rows:,} rows, {options.rounds} rounds, server {bench.server.provider} "
        f"({bindir})"
    )
    await _create_table(bench.dsn)
    await _prepare_readers(bench)
    await _generate(bench)
    results: dict[str, list[Measurement]] = {RECV: [], ONE: [], MANY: []}
    for r in range(options.rounds):
        runs: dict[str, Callable[[], Awaitable[Measurement]]] = {
            RECV: functools.partial(_run_recvlogical, bench, recvlogical, r),
            ONE: functools.partial(_run_syncd, bench, bench.one, ONE, r),
            MANY: functools.partial(_run_syncd, bench, bench.many, MANY, r),
        }
        order = [name for name in (RECV, ONE, MANY) if name in options.readers]
        if r % 2 == 1:
            order.reverse()
        for name in order:
            os.sync()  # every reader starts with a written-back page cache
            m = await runs[name]()
            results[name].append(m)
            log(
                f"  round {r + 1} {name:<18} {m.seconds:7.2f}s {m.rate:>10,.0f} rows/s "
                f"client cpu {m.cpu_seconds:6.2f}s"
            )
    return _report(bench, results)


def _report(bench: _Bench, results: dict[str, list[Measurement]]) -> list[str]:
    lines: list[str] = []
    rates = {name: median([m.rate for m in ms]) for name, ms in results.items() if ms}
    if results[ONE]:
        log("")
        log("ingest-1-shape: syncd rows/s (decode, route, append, fsync) vs pg_recvlogical")
    log("")
    for name in (RECV, ONE):
        if results[name]:
            _describe(results[name])
    if RECV in rates and ONE in rates:
        _paired(results[ONE], results[RECV])
        lines.append(
            summary("ingest-1-shape", rates[ONE], "rows/s", rates[RECV], rates[ONE] / rates[RECV])
        )
        log(lines[-1])
    if results[MANY]:
        name, against = bench.options.many_name, bench.options.many_baseline
        log("")
        log(f"{name}: {bench.options.shapes:,} shapes id = k, vs {against}")
        _describe(results[MANY])
        if against in rates:
            _paired(results[MANY], results[against])
            ratio = rates[MANY] / rates[against]
            lines.append(summary(name, rates[MANY], "rows/s", rates[against], ratio))
            log(lines[-1])
    return lines


def _paired(value: Sequence[Measurement], baseline: Sequence[Measurement]) -> None:
    """Per-round ratios (both readers ran close together, so less exposed to machine noise)."""
    ratios = [v.rate / b.rate for v, b in zip(value, baseline, strict=True)]
    shown = ", ".join(f"{r:.3f}" for r in ratios)
    log(f"  per-round ratios: {shown}; their median {median(ratios):.3f}")


def _describe(measurements: Sequence[Measurement]) -> None:
    name = measurements[0].reader
    rates = ", ".join(f"{m.rate:,.0f}" for m in measurements)
    secs = median([m.seconds for m in measurements])
    cpu = median([m.cpu_seconds for m in measurements])
    log(
        f"  {name}: median {median([m.rate for m in measurements]):,.0f} rows/s "
        f"({secs:.2f}s wall, {cpu:.2f}s client cpu); rounds: {rates}"
    )


# -- set-up ------------------------------------------------------------------------------------


def _txn_count(options: IngestOptions) -> int:
    return -(-options.rows // options.txn_rows)


async def _create_table(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v int NOT NULL, t text)").format(
                sql.Identifier(TABLE)
            )
        )
        # What the engine would set on the first shape; done here so that the table
        # description it caches already says FULL (else every shape re-runs the ALTER).
        await conn.execute(
            sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(sql.Identifier(TABLE))
        )


async def _prepare_readers(bench: _Bench) -> None:
    """Every slot and every shape, before any data exists."""
    options = bench.options
    for r in range(options.rounds):
        started = time.monotonic()
        if ONE in options.readers:
            one = await _new_round(bench, f"one_{r}", [CanonicalShape("public", TABLE)], [None])
            bench.one.append(one)
        if MANY in options.readers:
            ks = list(range(1, options.shapes + 1))
            definitions = [CanonicalShape("public", TABLE, where=f"id = {k}") for k in ks]
            many = await _new_round(bench, f"many_{r}", definitions, list(ks))
            bench.many.append(many)
        log(f"  round {r + 1}: engines and shapes ready in {time.monotonic() - started:.1f}s")
    async with await psycopg.AsyncConnection.connect(bench.dsn, autocommit=True) as conn:
        for r in range(options.rounds if RECV in options.readers else 0):
            slot = f"bench_recv_{r}"
            await conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
            bench.recv_slots.append(slot)


async def _new_round(
    bench: _Bench, name: str, definitions: list[CanonicalShape], ids: list[int | None]
) -> _SyncdRound:
    settings = EngineSettings(
        conninfo=bench.dsn,
        storage_dir=bench.work / name,
        slot=f"bench_{name}",
        publication=PUBLICATION,
    )
    engine = Engine(settings)
    await engine.open()
    prepared = _SyncdRound(engine, [], ids)
    batch = bench.options.create_batch
    for start in range(0, len(definitions), batch):
        chunk = definitions[start : start + batch]
        shapes = await asyncio.gather(*(engine.get_or_create(d) for d in chunk))
        await asyncio.gather(*(s.ready.wait() for s in shapes))
        for shape in shapes:
            if shape.status != "ready":
                raise RuntimeError(f"shape {shape.handle} did not become ready: {shape.failure}")
        prepared.shapes.extend(shapes)
    return prepared


async def _generate(bench: _Bench) -> None:
    options = bench.options
    started = time.monotonic()
    insert = sql.SQL(
        "INSERT INTO {} (id, v, t) SELECT g, g %% 1000, 'row ' || g"
        " FROM generate_series(%s::int, %s::int) g"
    ).format(sql.Identifier(TABLE))
    async with await psycopg.AsyncConnection.connect(bench.dsn, autocommit=True) as conn:
        for first in range(1, options.rows + 1, options.txn_rows):
            last = min(first + options.txn_rows - 1, options.rows)
            await conn.execute(insert, (first, last))
        cur = await conn.execute("SELECT pg_current_wal_insert_lsn()::text")
        row = await cur.fetchone()
        assert row is not None
        bench.end_lsn = _parse_lsn(row[0])
        # Let the WAL writer catch up, so that no reader waits for the last flush.
        await conn.execute("CHECKPOINT")
    log(
        f"  generated {options.rows:,} rows in {time.monotonic() - started:.1f}s, "
        f"end LSN {format_lsn(bench.end_lsn)}"
    )


def _parse_lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


# -- readers ---------------------------------------------------------------------------------


async def _run_recvlogical(bench: _Bench, program: Path, r: int) -> Measurement:
    slot = bench.recv_slots[r]
    cmd = [
        str(program),
        "--dbname",
        bench.dsn,
        "--slot",
        slot,
        "--start",
        "--no-loop",
        "-o",
        "proto_version=1",
        "-o",
        f"publication_names={PUBLICATION}",
        "-E",
        format_lsn(bench.end_lsn),
        "-f",
        "/dev/null",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await proc.communicate()
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"pg_recvlogical failed ({proc.returncode}): {stderr.decode()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    await drop_slot(bench.dsn, slot, wait=30.0)
    return Measurement(RECV, r, elapsed, cpu, bench.options.rows)


async def _run_syncd(bench: _Bench, rounds: list[_SyncdRound], name: str, r: int) -> Measurement:
    prepared = rounds[r]
    engine = prepared.engine
    settings = ReplicationSettings(bench.dsn, slot=engine.settings.slot, publication=PUBLICATION)
    stream = ReplicationStream(settings, engine)
    end = bench.end_lsn
    cpu_before = time.process_time()
    started = time.perf_counter()
    task = asyncio.create_task(stream.run(), name=f"bench-{name}-{r}")
    try:
        while engine.durable_lsn < end:
            if task.done():
                task.result()
                raise RuntimeError("the replication stream stopped before the end LSN")
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_before
    finally:
        await stream.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    _verify(prepared, bench.options)
    prepared.used = True
    await engine.close()
    await drop_slot(bench.dsn, engine.settings.slot, wait=30.0)
    remove_at_exit(engine.settings.storage_dir)  # not before the next round (see there)
    return Measurement(name, r, elapsed, cpu, bench.options.rows)


def _verify(prepared: _SyncdRound, options: IngestOptions) -> int:
    """Read every shape log back: every row must be there, as an insert; return the count."""
    decode = msgspec.json.decode
    total = 0
    for shape, k in zip(prepared.shapes, prepared.ids, strict=True):
        count = 0
        first: bytes | None = None
        last = b""
        offset = SNAPSHOT_END
        while True:
            got, offset = shape.log.read(offset)
            if not got:
                break
            count += len(got)
            first = got[0] if first is None else first
            last = got[-1]
        expected = options.rows if k is None else 1
        if count != expected or first is None:
            raise AssertionError(f"shape {shape.handle} holds {count} entries, not {expected}")
        for line in (first, last):
            message = decode(line)
            if message["headers"]["operation"] != "insert":
                raise AssertionError(f"shape {shape.handle}: not an insert: {line!r}")
            if k is not None and message["value"]["id"] != str(k):
                raise AssertionError(f"shape id = {k} holds {line!r}")
        total += count
    return total


# -- clean-up --------------------------------------------------------------------------------


async def _close_rounds(bench: _Bench) -> None:
    for prepared in bench.one + bench.many:
        if not prepared.used:
            with contextlib.suppress(Exception):
                await prepared.engine.close()
