"""``initial-sync-1m``: how fast a client receives a new shape of a large table.

Method. A table of ``--initial-rows`` (1,000,000) rows of five columns (integer key, text,
numeric, timestamptz, boolean). The baseline is psycopg reading ``COPY (SELECT ...) TO STDOUT``
of the same columns, every byte, as fast as Postgres sends it. Each round then asks syncd for a
new shape of the whole table (a ``where`` that holds for every row and differs per round, so
that its snapshot is taken anew) with three clients in turn:

* the *first* client, a raw HTTP client (httpx) that follows the offsets from ``-1`` to
  ``up-to-date`` and counts the rows in every body (without decoding it: the baseline does not
  decode the ``COPY`` either), while syncd takes the snapshot;
* a *second* raw client of the same shape, once the log exists;
* the Python :class:`~shapes.client.ShapeStream` of the same shape (values parsed into Python
  types, as an application gets them), in a process of its own, timed inside it (what earlier
  benchmarks left in this process's heap would slow its collector's passes).

Each client must receive exactly the table's rows. The figures are the medians over the rounds.

Summary lines (targets: the first client within 3× the ``COPY``, the second within 1.5×, the
Python client within 2× the raw client)::

    BENCH initial-sync-1m value=<s> unit=s baseline=<COPY s> ratio=<COPY/value>
    BENCH initial-sync-1m-second-client value=<s> unit=s baseline=<COPY s> ratio=<COPY/value>
    BENCH initial-sync-1m-python-client value=<s> unit=s baseline=<first raw client s>
        ratio=<raw/value>
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
from psycopg import sql

from bench.cluster import bench_database
from bench.large_txn import running_syncd
from bench.stats import median, summary
from shapes.client import ShapeDefinition, ShapeStream
from syncd.daemon import event_loop_factory

ROOT = Path(__file__).resolve().parent.parent
TABLE = "initial_items"
COLUMNS = ("id", "title", "amount", "created", "done")
REQUEST_TIMEOUT = 300.0

ROW_MARK = b'"operation":"insert"'
"""Once in each row message of a snapshot (values are quoted strings: they cannot hold it)."""


def log(text: str) -> None:
    print(text, flush=True)


def _fill(dsn: str, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id int PRIMARY KEY, title text NOT NULL, amount numeric,"
                " created timestamptz NOT NULL, done boolean NOT NULL)"
            ).format(sql.Identifier(TABLE))
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO {} SELECT g, 'title of item ' || g, (g %% 10000) / 100.0,"
                " timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second', g %% 3 = 0"
                " FROM generate_series(1, %s) g"
            ).format(sql.Identifier(TABLE)),
            (rows,),
        )
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(TABLE)))


def copy_seconds(dsn: str) -> tuple[float, int]:
    """(seconds, bytes) for psycopg to read the table's ``COPY ... TO STDOUT``."""
    query = sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS), sql.Identifier(TABLE)
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        size = 0
        with conn.cursor().copy(query) as copy:
            for block in copy:
                size += len(block)
        return time.perf_counter() - started, size


def raw_client(url: str, where: str) -> tuple[float, int, int]:
    """(seconds, rows, body bytes) for one raw client to follow the shape to ``up-to-date``."""
    params = {"table": TABLE, "where": where, "offset": "-1"}
    rows = size = 0
    started = time.perf_counter()
    with httpx.Client(timeout=REQUEST_TIMEOUT) as client:
        while True:
            answer = client.get(url, params=params)
            answer.raise_for_status()
            body = answer.content
            size += len(body)
            rows += body.count(ROW_MARK)
            if "electric-up-to-date" in answer.headers:
                return time.perf_counter() - started, rows, size
            params["handle"] = answer.headers["electric-handle"]
            params["offset"] = answer.headers["electric-offset"]


async def _python_client(url: str, where: str) -> tuple[float, int]:
    started = time.perf_counter()
    rows = 0
    definition = ShapeDefinition.of(TABLE, where=where)
    async with ShapeStream(url, definition, live=False) as stream:
        async for batch in stream:
            for message in batch:
                if "key" in message:
                    rows += 1
            if stream.is_up_to_date:
                break
    return time.perf_counter() - started, rows


def python_client(url: str, where: str) -> tuple[float, int]:
    """(seconds, rows) for :class:`~shapes.client.ShapeStream` to reach ``up-to-date``, in this
    process."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(_python_client(url, where))


def python_client_alone(url: str, where: str) -> tuple[float, int]:
    """:func:`python_client` in a process of its own, as an application runs it: what the
    benchmarks before it left in this process's heap and collector does not count."""
    child = subprocess.run(
        [sys.executable, "-m", "bench.initial_sync", url, where],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=REQUEST_TIMEOUT,
        check=True,
    )
    seconds, rows = child.stdout.split()
    return float(seconds), int(rows)


def _check(name: str, got: int, rows: int) -> None:
    if got != rows:
        raise RuntimeError(f"initial-sync: the {name} received {got:,} rows, not {rows:,}")


def run_initial_sync(rows: int = 1_000_000, rounds: int = 3, *, keep: bool = False) -> list[str]:
    """Run ``initial-sync-1m``; return (and print) its summary lines."""
    log(f"initial-sync: {rows:,} rows, {rounds} rounds")
    copies: list[float] = []
    firsts: list[float] = []
    seconds: list[float] = []
    pythons: list[float] = []
    with bench_database("initial_sync", keep=keep) as db:
        _fill(db.dsn, rows)
        with running_syncd(db, "initial") as daemon:
            url = daemon.url + "/v1/shape"
            for round_no in range(1, rounds + 1):
                copy_s, copy_bytes = copy_seconds(db.dsn)
                where = f"id > -{round_no}"
                first_s, got, body_bytes = raw_client(url, where)
                _check("first client", got, rows)
                second_s, got, _ = raw_client(url, where)
                _check("second client", got, rows)
                python_s, got = python_client_alone(url, where)
                _check("Python client", got, rows)
                log(
                    f"  round {round_no}: COPY {copy_s:.2f}s ({copy_bytes / 1e6:.0f} MB);"
                    f" first client {first_s:.2f}s ({body_bytes / 1e6:.0f} MB of JSON),"
                    f" second {second_s:.2f}s, Python client {python_s:.2f}s"
                )
                copies.append(copy_s)
                firsts.append(first_s)
                seconds.append(second_s)
                pythons.append(python_s)
    copy, first, second, python = (median(v) for v in (copies, firsts, seconds, pythons))
    lines = [
        summary("initial-sync-1m", first, "s", copy, copy / first),
        summary("initial-sync-1m-second-client", second, "s", copy, copy / second),
        summary("initial-sync-1m-python-client", python, "s", first, first / python),
    ]
    for line in lines:
        log(line)
    return lines


if __name__ == "__main__":  # python -m bench.initial_sync URL WHERE: one Python client's run
    elapsed, received = python_client(sys.argv[1], sys.argv[2])
    print(elapsed, received)
