"""What the e2e test modules share: a syncd fixture, the ``items`` table and its expected rows.

``items`` is ``(id bigint PRIMARY KEY, title text, n int4 NOT NULL, flag bool)``; the
expected rows hold the values as the JS client parses them (``int8`` ids as strings).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from shapes.messages import relation_key_prefix, row_key
from tests.e2e.jsclient import node_modules_ready
from tests.e2e.node_process import Rows
from tests.syncd_process import SyncdProcess

needs_js_client = pytest.mark.skipif(not node_modules_ready(), reason="run `make js` first")
"""Skips tests when ``make js`` has not installed the pinned ``@electric-sql/client``."""

ITEM_COLUMNS = ("id", "title", "n", "flag")


def syncd_fixture(
    prepare: Callable[[str], None] | None = None, **settings: Any
) -> Callable[..., Any]:
    """A ``syncd`` fixture: a daemon with ``settings`` on the test's database, stopped after.

    ``prepare(dsn)`` runs before the daemon starts (to create tables it should see at once).
    """

    @pytest.fixture(name="syncd")
    def syncd(pg_dsn: str, tmp_path: Path) -> Iterator[SyncdProcess]:
        if prepare is not None:
            prepare(pg_dsn)
        daemon = SyncdProcess(pg_dsn, tmp_path / "storage", **settings)
        daemon.start()
        yield daemon
        daemon.stop()

    return syncd


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


def _items(dsn: str, schema: str, table: str, where: str) -> Iterator[dict[str, Any]]:
    """The rows of an items table matching ``where`` (test-controlled text), id as a string."""
    query = sql.SQL("SELECT id, title, n, flag FROM {} WHERE " + where).format(
        sql.Identifier(schema, table)
    )
    with psycopg.connect(dsn) as conn:
        for id_, title, n, flag in conn.execute(query):
            yield {"id": str(id_), "title": title, "n": n, "flag": flag}


def expected_rows(
    dsn: str,
    schema: str,
    table: str,
    where: str = "true",
    columns: tuple[str, ...] = ITEM_COLUMNS,
) -> Rows:
    """What the client should hold: values as the JS client parses them (int8 as a string)."""
    prefix = relation_key_prefix(schema, table)
    return {
        row_key(prefix, {"id": row["id"]}, ("id",)): {c: row[c] for c in columns}
        for row in _items(dsn, schema, table, where)
    }


def expected_collection_rows(dsn: str, where: str = "true") -> Rows:
    """A live query's rows over ``public.items``: keyed by ``String(row.id)``."""
    return {row["id"]: row for row in _items(dsn, "public", "items", where)}


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
