"""The official ``@electric-sql/client`` syncs shapes from syncd: snapshot, then live changes."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from shapes.messages import relation_key_prefix, row_key
from tests.e2e.jsclient import ShapeFollower, node_modules_ready
from tests.syncd_process import SyncdProcess

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not node_modules_ready(), reason="run `make js` first"),
]

Rows = dict[str, dict[str, Any]]


@pytest.fixture
def syncd(pg_dsn: str, tmp_path: Path) -> Iterator[SyncdProcess]:
    daemon = SyncdProcess(pg_dsn, tmp_path / "storage", chunk_bytes=65536)
    daemon.start()
    yield daemon
    daemon.stop()


def create_items(dsn: str, schema: str, table: str, rows: int) -> None:
    ident = sql.Identifier(schema, table)
    with psycopg.connect(dsn, autocommit=True) as conn:
        if schema != "public":
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id bigint PRIMARY KEY, title text, n int4 NOT NULL, flag bool)"
            ).format(ident)
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO {} SELECT g, 'title ' || g, g %% 100, g %% 3 = 0"
                " FROM generate_series(1, %s) g"
            ).format(ident),
            (rows,),
        )


def expected_rows(
    dsn: str,
    schema: str,
    table: str,
    where: str = "true",
    columns: tuple[str, ...] = ("id", "title", "n", "flag"),
) -> Rows:
    """What the client should hold: values as the JS client parses them (int8 as a string)."""
    prefix = relation_key_prefix(schema, table)
    query = sql.SQL("SELECT id, title, n, flag FROM {} WHERE " + where).format(
        sql.Identifier(schema, table)
    )
    rows: Rows = {}
    with psycopg.connect(dsn) as conn:
        for id_, title, n, flag in conn.execute(query):
            full = {"id": str(id_), "title": title, "n": n, "flag": flag}
            rows[row_key(prefix, {"id": str(id_)}, ("id",))] = {c: full[c] for c in columns}
    return rows


def random_transactions(dsn: str, schema: str, table: str, count: int, seed: int) -> None:
    """``count`` transactions of 1-5 random inserts, updates and deletes."""
    rng = random.Random(seed)
    ident = sql.Identifier(schema, table)
    next_id = 1_000_000
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(count):
            with conn.transaction():
                for _ in range(rng.randint(1, 5)):
                    action = rng.random()
                    target = rng.randint(1, 10_000)
                    if action < 0.4:
                        next_id += 1
                        conn.execute(
                            sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, %s)").format(ident),
                            (next_id, f"new {next_id}", rng.randint(0, 99), rng.random() < 0.5),
                        )
                    elif action < 0.8:
                        conn.execute(
                            sql.SQL("UPDATE {} SET title = %s, n = %s WHERE id = %s").format(ident),
                            (f"changed {rng.random()}", rng.randint(0, 99), target),
                        )
                    else:
                        conn.execute(
                            sql.SQL("DELETE FROM {} WHERE id = %s").format(ident), (target,)
                        )


@pytest.mark.parametrize("live_sse", [False, True], ids=["long-poll", "sse"])
async def test_ten_thousand_rows_then_live_changes(
    syncd: SyncdProcess, pg_dsn: str, live_sse: bool
) -> None:
    create_items(pg_dsn, "public", "items", 10_000)
    async with ShapeFollower(syncd.shape_url, "items", live_sse=live_sse) as follower:
        await follower.wait_for_rows(expected_rows(pg_dsn, "public", "items"), timeout=120)
        random_transactions(pg_dsn, "public", "items", 200, seed=7 + live_sse)
        await follower.wait_for_rows(expected_rows(pg_dsn, "public", "items"), timeout=120)
        assert not follower.fatal_errors


async def test_where_params_and_columns(syncd: SyncdProcess, pg_dsn: str) -> None:
    create_items(pg_dsn, "public", "items", 10_000)
    async with ShapeFollower(
        syncd.shape_url,
        "items",
        where="n < $1 AND flag = $2",
        params={"1": "30", "2": "true"},
        columns=["id", "n"],
    ) as follower:
        where = "n < 30 AND flag"
        await follower.wait_for_rows(
            expected_rows(pg_dsn, "public", "items", where, ("id", "n")), timeout=120
        )
        random_transactions(pg_dsn, "public", "items", 200, seed=11)
        await follower.wait_for_rows(
            expected_rows(pg_dsn, "public", "items", where, ("id", "n")), timeout=120
        )


@pytest.mark.parametrize(
    ("schema", "table"),
    [("public", "CapitalItems"), ("My Schema", 'odd "quoted" name')],
)
async def test_awkward_table_names(
    syncd: SyncdProcess, pg_dsn: str, schema: str, table: str
) -> None:
    create_items(pg_dsn, schema, table, 100)
    quoted = sql.Identifier(schema, table).as_string(None)
    async with ShapeFollower(syncd.shape_url, quoted) as follower:
        await follower.wait_for_rows(expected_rows(pg_dsn, schema, table))
        random_transactions(pg_dsn, schema, table, 20, seed=3)
        await follower.wait_for_rows(expected_rows(pg_dsn, schema, table))
