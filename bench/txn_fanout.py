"""``txn-to-750-shapes``: one transaction that reaches many different shapes at once.

Method. A table ``txn_items (id serial, grp int, body text)`` and ``--txn-shapes`` (750) shapes,
shape ``k`` being ``grp = k / 15 AND body <> 'not k'``: an equality syncd finds by index, and
a filter it evaluates, that makes every definition distinct. Each shape is followed live by a
:class:`~bench.raw_client.RawFollower` (long-poll, a connection each, all in one asyncio
program). A round is one transaction of 50 rows, ``grp`` 0 to 49, committed synchronously: every
row belongs to 15 shapes and every shape gets exactly one row. The delay is from ``COMMIT``
returning to a follower holding its row; 10 rounds, 1 s apart. The baseline is the same with one
shape (``grp = 0``) followed.

Summary line (target: p50 within 150 ms)::

    BENCH txn-to-750-shapes value=<p50 ms> unit=ms baseline=<one shape p50 ms> ratio=<b/v>
"""

from __future__ import annotations

import asyncio
import time

import psycopg
from psycopg import sql

from bench.children import cancel_tasks
from bench.cluster import bench_database
from bench.fanout import percentile
from bench.large_txn import running_syncd
from bench.raw_client import RawFollower, catch_up_all, follow_all, id_noter
from bench.stats import summary
from syncd.daemon import event_loop_factory

TABLE = "txn_items"
ROWS_PER_TXN = 50
ROUNDS = 10
INTERVAL = 1.0
DELIVERY_TIMEOUT = 30.0


def log(text: str) -> None:
    print(text, flush=True)


def shape_params(k: int) -> dict[str, str]:
    return {"table": TABLE, "where": f"grp = {k // 15} AND body <> 'not {k}'"}


async def _round_trips(url: str, dsn: str, shapes: int) -> tuple[list[float], int]:
    """(delays in ms, deliveries missing) over the rounds, with ``shapes`` followers."""
    followers = [RawFollower(url, shape_params(k)) for k in range(shapes)]
    await catch_up_all(followers)
    arrivals: list[dict[int, float]] = [{} for _ in followers]
    tasks = await follow_all(followers, [id_noter(seen) for seen in arrivals])
    insert = sql.SQL(
        "INSERT INTO {} (grp, body) SELECT g, 'row' FROM generate_series(0, %s) g RETURNING id, grp"
    ).format(sql.Identifier(TABLE))
    expected: list[tuple[int, int, float]] = []  # (shape, row id, commit time)
    try:
        await asyncio.sleep(1.0)
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        try:
            await conn.execute("SET synchronous_commit TO on")
            for _ in range(ROUNDS):
                await asyncio.sleep(INTERVAL)
                cur = await conn.execute(insert, (ROWS_PER_TXN - 1,))
                rows = await cur.fetchall()
                at = time.time()
                by_group = {int(grp): int(row_id) for row_id, grp in rows}
                for k in range(len(followers)):
                    expected.append((k, by_group[k // 15], at))
        finally:
            await conn.close()
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while time.monotonic() < deadline:
            if all(row_id in arrivals[k] for k, row_id, _ in expected):
                break
            await asyncio.sleep(0.05)
    finally:
        await cancel_tasks(tasks)
    delays = [
        (arrivals[k][row_id] - at) * 1000 for k, row_id, at in expected if row_id in arrivals[k]
    ]
    return delays, len(expected) - len(delays)


def run_txn_fanout(shapes: int = 750, *, keep: bool = False) -> str:
    """Run ``txn-to-750-shapes``; return (and print) its summary line."""
    name = f"txn-to-{shapes}-shapes"
    log(f"{name}: {ROUNDS} transactions of {ROWS_PER_TXN} rows, each row in {15} shapes")
    results: list[float] = []
    with bench_database("txn_fanout", keep=keep) as db:
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, grp int, body text)").format(
                    sql.Identifier(TABLE)
                )
            )
        with running_syncd(
            db, "txn_fanout", SYNCD_MAX_EXISTING_REQUESTS=str(max(10_000, 4 * shapes))
        ) as daemon:
            for count in (1, shapes):
                with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
                    delays, missing = runner.run(
                        _round_trips(daemon.url + "/v1/shape", db.dsn, count)
                    )
                p50 = percentile(delays, 0.5)
                log(
                    f"  {count} shape(s): {len(delays):,} deliveries, {missing} missing;"
                    f" p50 {p50:.1f} ms, p99 {percentile(delays, 0.99):.1f} ms,"
                    f" max {max(delays, default=float('nan')):.1f} ms"
                )
                results.append(p50)
    baseline, value = results
    line = summary(name, value, "ms", baseline, baseline / value)
    log(line)
    return line
