"""``where-non-indexed``: the cost of a where clause that no index can route, per shape per change.

Method. A table of 1,000 rows (text, integer, numeric and timestamp columns) and 1,000 clauses
that the router cannot file under a value (``ILIKE``/``LIKE`` patterns, ranges, arithmetic,
``lower()``, conjunctions and disjunctions of those), each with its own constants. Each clause
is compiled as syncd compiles a shape's ``where`` (:func:`shapes.where.parse_where`, with the
table's columns read from the catalog) and tested on every row in the text form pgoutput sends
(the rows are read with syncd's display settings), as the engine tests a change against every
shape the router could not exclude: each row a fresh :class:`~shapes.where_eval.ParsedRow`, so
that its values are parsed once for all the shapes. The figure is the median over ``rounds``
of the time per (shape, row) pair.

Baseline: Postgres evaluating the same 1,000 clauses on the same rows, in C, as one query
``SELECT count(*) FILTER (WHERE c1), ... FROM t`` (its execution time from ``EXPLAIN
ANALYZE``, less that of the same scan without filters), per (clause, row) pair. The counts of
both must agree: each clause's matches in syncd equal Postgres's ``FILTER`` count.

Summary line::

    BENCH where-non-indexed value=<us per shape per change> unit=us
        baseline=<Postgres us per clause per row> ratio=<baseline/value>
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from typing import Any, cast

import psycopg
from psycopg import sql

from bench.cluster import bench_database
from bench.stats import median, summary
from shapes.where import Where, parse_where
from shapes.where_eval import ParsedRow
from syncd.catalog import load_table
from syncd.snapshot import DISPLAY_SETTINGS

TABLE = "where_items"
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india")
Row = Mapping[str, str | None]


def log(text: str) -> None:
    print(text, flush=True)


def _clauses(count: int, rng: random.Random) -> list[str]:
    """``count`` clauses none of which the router can file under one value."""
    templates = (
        lambda: f"title ILIKE '%{rng.choice(WORDS)}%'",
        lambda: f"title LIKE '{rng.choice(WORDS)}%' AND n > {rng.randrange(1000)}",
        lambda: f"n BETWEEN {(a := rng.randrange(1000))} AND {a + rng.randrange(1, 200)}",
        lambda: f"price > {rng.randrange(100)}.{rng.randrange(100):02d} AND n % 7 <> 3",
        lambda: (
            f"ts >= '2026-01-{rng.randrange(1, 29):02d} 00:00:00+00' AND n < {rng.randrange(1000)}"
        ),
        lambda: f"lower(title) <> '{rng.choice(WORDS)} 1' OR price < {rng.randrange(50)}",
        lambda: f"n * 3 + 1 > {rng.randrange(3000)} AND title NOT ILIKE '%{rng.choice(WORDS)}%'",
        lambda: (
            f"(n < {rng.randrange(500)} OR n > {rng.randrange(500, 1000)}) AND price IS NOT NULL"
        ),
    )
    return [templates[i % len(templates)]() for i in range(count)]


def _setup(dsn: str, rows: int, rng: random.Random) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id int PRIMARY KEY, title text, n int4, price numeric,"
                " ts timestamptz)"
            ).format(sql.Identifier(TABLE))
        )
        with conn.cursor() as cur:
            cur.executemany(
                sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, %s, %s)").format(sql.Identifier(TABLE)),
                [
                    (
                        i,
                        f"{rng.choice(WORDS)} {rng.choice(WORDS).upper()} {i}",
                        rng.randrange(1000),
                        None if i % 50 == 0 else f"{rng.randrange(10_000) / 100:.2f}",
                        f"2026-01-{rng.randrange(1, 29):02d} {rng.randrange(24):02d}:00:00+00",
                    )
                    for i in range(1, rows + 1)
                ],
            )


def _text_rows(dsn: str) -> list[Row]:
    """The rows as pgoutput would send them (text, with syncd's display settings)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name, value in DISPLAY_SETTINGS.items():
            conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        cur = conn.execute(
            sql.SQL(
                "SELECT id::text, title, n::text, price::text, ts::text FROM {} ORDER BY id"
            ).format(sql.Identifier(TABLE))
        )
        return [
            {"id": r[0], "title": r[1], "n": r[2], "price": r[3], "ts": r[4]}
            for r in cur.fetchall()
        ]


async def _compile(dsn: str, clauses: list[str]) -> list[Where]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        table = await load_table(conn, "public", TABLE)
    columns = {column.name: column for column in table.columns}
    wheres = [parse_where(clause, columns) for clause in clauses]
    for where in wheres:
        if where.index_conditions():
            raise AssertionError(f"{where.sql} can be routed by value: not a non-indexed clause")
    return wheres


def _postgres_seconds(conn: psycopg.Connection[tuple[object, ...]], query: str) -> float:
    row = conn.execute(f"EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) {query}").fetchone()
    assert row is not None
    plan = cast(list[dict[str, Any]], row[0])
    return float(plan[0]["Execution Time"]) / 1000


def run_where_non_indexed(shapes: int = 1_000, rows: int = 1_000, rounds: int = 3) -> str:
    """Run ``where-non-indexed``; return (and print) its summary line."""
    rng = random.Random(20261205)
    log(f"where-non-indexed: {shapes:,} non-indexable clauses, {rows:,} rows, {rounds} rounds")
    with bench_database("where") as db:
        _setup(db.dsn, rows, rng)
        clauses = _clauses(shapes, rng)
        wheres = asyncio.run(_compile(db.dsn, clauses))
        text_rows = _text_rows(db.dsn)

        ours: list[float] = []
        counts = [0] * len(wheres)
        for _ in range(rounds):
            counts = [0] * len(wheres)
            started = time.perf_counter()
            for text_row in text_rows:
                row = ParsedRow(text_row)  # as the engine holds a change's row
                for i, where in enumerate(wheres):
                    if where.matches(row):
                        counts[i] += 1
            ours.append((time.perf_counter() - started) / (len(text_rows) * len(wheres)))

        filters = ", ".join(f"count(*) FILTER (WHERE {clause})" for clause in clauses)
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            expected = conn.execute(f"SELECT {filters} FROM {TABLE}").fetchone()
            assert expected is not None
            theirs: list[float] = []
            for _ in range(rounds):
                all_filters = _postgres_seconds(conn, f"SELECT {filters} FROM {TABLE}")
                scan_only = _postgres_seconds(conn, f"SELECT count(*) FROM {TABLE}")
                theirs.append(max(all_filters - scan_only, 1e-9) / (len(text_rows) * len(wheres)))
    wrong = [clauses[i] for i, n in enumerate(counts) if n != expected[i]]
    if wrong:
        raise AssertionError(f"{len(wrong)} clauses disagree with Postgres, e.g. {wrong[0]}")
    value, baseline = median(ours) * 1e6, median(theirs) * 1e6
    log(f"  syncd: {', '.join(f'{v * 1e6:.2f}' for v in ours)} us per shape per change")
    log(f"  Postgres: {', '.join(f'{v * 1e6:.3f}' for v in theirs)} us per clause per row")
    log(f"  matching pairs: {sum(counts):,} of {len(text_rows) * len(wheres):,}")
    line = summary("where-non-indexed", value, "us", baseline, baseline / value)
    log(line)
    return line
