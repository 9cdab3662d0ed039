"""Oracle tests: every shape's materialised log equals ``SELECT ... WHERE ...``.

Random transactions run concurrently with shape creation (and, in the second test, with a
``kill -9`` and restart of syncd); afterwards each shape, read over HTTP, must hold exactly the
rows the same query returns from Postgres, with no change delivered twice.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from shapes.messages import relation_key_prefix, row_key
from tests.shape_reader import ShapeCursor, catch_up
from tests.syncd_process import SyncdProcess

pytestmark = pytest.mark.slow

WHERES = [
    None,
    "grp = 1",
    "grp IN (2, 3)",
    "n > 50",
    "title LIKE 'a%'",
    "grp = 1 AND n < 30",
    "n BETWEEN 10 AND 20 OR grp = 4",
    "title IS NULL",
    "NOT (grp = 2) AND n >= 90",
]
_tables = itertools.count()

Op = tuple[str, int, int, int, str | None]
titles = st.one_of(st.none(), st.text(alphabet="abc'\"/ ", max_size=6))
ops = st.tuples(
    st.sampled_from(["insert", "update", "delete", "move"]),
    st.integers(1, 120),
    st.integers(0, 5),
    st.integers(0, 100),
    titles,
)
transactions = st.lists(st.lists(ops, min_size=1, max_size=6), min_size=20, max_size=60)


@pytest.fixture
def syncd(pg_dsn: str, tmp_path: Path) -> Iterator[SyncdProcess]:
    daemon = SyncdProcess(pg_dsn, tmp_path / "storage", chunk_bytes=4096)
    daemon.start()
    yield daemon
    daemon.stop()


def create_table(dsn: str, name: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, grp int, n int, title text)").format(
                sql.Identifier(name)
            )
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO {} SELECT g, g % 6, g % 101, chr(97 + g % 3) || g"
                " FROM generate_series(1, 80) g"
            ).format(sql.Identifier(name))
        )


def apply_transactions(dsn: str, table: str, txns: list[list[Op]], pause: float) -> None:
    ident = sql.Identifier(table)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for txn in txns:
            with conn.transaction():
                for kind, id_, grp, n, title in txn:
                    if kind == "insert":
                        conn.execute(
                            sql.SQL(
                                "INSERT INTO {} VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO UPDATE"
                                " SET grp = excluded.grp, n = excluded.n, title = excluded.title"
                            ).format(ident),
                            (id_, grp, n, title),
                        )
                    elif kind == "update":
                        conn.execute(
                            sql.SQL("UPDATE {} SET n = %s, title = %s WHERE id = %s").format(ident),
                            (n, title, id_),
                        )
                    elif kind == "move":
                        conn.execute(
                            sql.SQL(
                                "UPDATE {0} SET id = id + 1000, grp = %s WHERE id = %s"
                                " AND NOT EXISTS (SELECT FROM {0} WHERE id = %s + 1000)"
                            ).format(ident),
                            (grp, id_, id_),
                        )
                    else:
                        conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(ident), (id_,))
            time.sleep(pause)


def select_rows(dsn: str, table: str, where: str | None) -> dict[str, dict[str, str | None]]:
    query = sql.SQL("SELECT id::text, grp::text, n::text, title FROM {}").format(
        sql.Identifier(table)
    )
    if where is not None:
        query = sql.Composed([query, sql.SQL(" WHERE " + where)])
    prefix = relation_key_prefix("public", table)
    rows = {}
    with psycopg.connect(dsn) as conn:
        for id_, grp, n, title in conn.execute(query):
            rows[row_key(prefix, {"id": id_}, ("id",))] = {
                "id": id_,
                "grp": grp,
                "n": n,
                "title": title,
            }
    return rows


def current_wal_lsn(dsn: str) -> int:
    """The WAL position after every transaction committed so far."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT (pg_current_wal_insert_lsn() - '0/0')::int8").fetchone()
    assert row is not None
    return int(row[0])


def shape_params(table: str, where: str | None) -> dict[str, str]:
    params = {"table": table}
    if where is not None:
        params["where"] = where
    return params


def run_scenario(
    syncd: SyncdProcess, dsn: str, txns: list[list[Op]], wheres: list[str | None], crash: bool
) -> None:
    table = f"items_{next(_tables)}"
    create_table(dsn, table)
    failures: list[BaseException] = []

    def write() -> None:
        try:
            apply_transactions(dsn, table, txns, 0.005)
        except BaseException as exc:
            failures.append(exc)

    writer = threading.Thread(target=write)
    cursors = [ShapeCursor(shape_params(table, where)) for where in wheres]
    rng = random.Random(len(txns))
    with httpx.Client(timeout=30) as client:
        writer.start()
        try:
            for cursor in cursors:
                time.sleep(rng.random() * 0.05)
                catch_up(client, syncd.shape_url, cursor)
            if crash:
                syncd.kill()
                syncd.start()
                for cursor in cursors:
                    catch_up(client, syncd.shape_url, cursor)
        finally:
            writer.join()
        assert not failures, failures
        written = current_wal_lsn(dsn)
        for cursor, where in zip(cursors, wheres, strict=True):
            catch_up(client, syncd.shape_url, cursor, min_lsn=written)
            assert cursor.rows == select_rows(dsn, table, where), where
            assert cursor.refetches == 0
            fresh = ShapeCursor(shape_params(table, where))
            catch_up(client, syncd.shape_url, fresh)
            assert fresh.rows == cursor.rows
            assert fresh.handle == cursor.handle


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(txns=transactions, wheres=st.lists(st.sampled_from(WHERES), min_size=2, max_size=5))
def test_shapes_equal_select_under_concurrent_writes(
    syncd: SyncdProcess, pg_dsn: str, txns: list[list[Op]], wheres: list[str | None]
) -> None:
    run_scenario(syncd, pg_dsn, txns, wheres, crash=False)


@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(txns=transactions, wheres=st.lists(st.sampled_from(WHERES), min_size=2, max_size=4))
def test_shapes_survive_kill_9(
    syncd: SyncdProcess, pg_dsn: str, txns: list[list[Op]], wheres: list[str | None]
) -> None:
    run_scenario(syncd, pg_dsn, txns, wheres, crash=True)
