"""No row can stop replication: a where clause that fails on a row retires only its own shape.

Each case is a where clause and a row value on which evaluating it fails, in the live stream,
as Postgres itself would (division by zero, overflow, NaN cast to integer, incompatible arrays),
or as Postgres 16 would (an infinite timestamp difference). The rule (``shapes.convert``): the
shape is retired (its clients get a 409), and the shape asked for again is decided by its
snapshot query, as Postgres decides: the rows of the ``SELECT``, or a 400 when Postgres rejects
the row too. The daemon keeps running, other shapes of the same and of another
table keep receiving changes, and so they do after a restart, graceful or ``kill -9``, that
replays the failing transactions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from tests.shape_reader import ShapeCursor, catch_up
from tests.syncd_process import SyncdProcess

pytestmark = pytest.mark.pg


@dataclass(frozen=True)
class Case:
    """A table with one column ``v`` of ``column_type``, a where clause and a poison value."""

    name: str
    column_type: str
    where: str
    healthy: str
    poison: str


CASES = [
    # (rows the evaluator once failed on while Postgres decides them, such as '{{1}}' < '{7}',
    # are now decided as Postgres does: tests/where_fuzz pins them.) syncd raises as Postgres 16
    # does, while 17 and later give an infinite interval:
    Case(
        "infinite_timestamp_difference",
        "timestamp",
        "v - '2000-01-01'::timestamp > '1 day'",
        "2024-01-01",
        "infinity",
    ),
    # Postgres fails on these rows as well
    Case("nested_array_concatenation", "int4[]", "v || ARRAY[1, 2] = v", "{1}", "{{1}}"),
    Case("integer_minimum_negated", "int4", "-v > 0", "2", "-2147483648"),
    Case("float_overflow", "float8", "v * 10 > 0", "2", "1e308"),
    # Postgres fails too
    Case("integer_division_by_zero", "int4", "10 / v > 0", "2", "0"),
    Case("numeric_division_by_zero", "numeric", "1 / v > 0", "2", "0"),
    Case("numeric_nan_to_integer", "numeric", "v::int4 > 0", "2", "NaN"),
]


def table(case: Case) -> str:
    return f"poison_{case.name}"


@pytest.fixture
def syncd(pg_dsn: str, tmp_path: Path) -> Iterator[SyncdProcess]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE other (id int PRIMARY KEY, v text)")
        for case in CASES:
            conn.execute(
                sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v {})").format(
                    sql.Identifier(table(case)), sql.SQL(case.column_type)
                )
            )
            conn.execute(
                sql.SQL("INSERT INTO {} VALUES (1, %s)").format(sql.Identifier(table(case))),
                (case.healthy,),
            )
    daemon = SyncdProcess(pg_dsn, tmp_path / "storage")
    daemon.start()
    yield daemon
    daemon.stop()


def wal_position(dsn: str) -> int:
    """The WAL insert position: past every commit so far. (The write position may lag behind a
    commit when ``synchronous_commit`` is off, as on the test cluster.)"""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint"
        ).fetchone()
    assert row is not None
    return int(row[0])


def postgres_decides(dsn: str, case: Case) -> set[str] | str:
    """The ids ``SELECT ... WHERE`` returns, or the SQLSTATE of Postgres's error."""
    query = sql.SQL("SELECT id::text FROM {} WHERE {}").format(
        sql.Identifier(table(case)),
        sql.SQL(case.where),
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            return {row[0] for row in conn.execute(query).fetchall()}
        except (psycopg.DataError, psycopg.errors.FeatureNotSupported) as exc:
            assert exc.sqlstate is not None
            return exc.sqlstate


def write(dsn: str, case: Case, statement: str, other_id: int) -> None:
    """One transaction: ``statement`` on the case's table, and an insert into ``other``."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            sql.SQL(statement).format(sql.Identifier(table(case))),
            {"poison": case.poison, "healthy": case.healthy},
        )
        conn.execute("INSERT INTO other VALUES (%s, 'x')", (other_id,))


class Follower:
    """The shapes of the test: per case a poisoned one and a healthy one, and one of ``other``."""

    def __init__(self, daemon: SyncdProcess) -> None:
        self.daemon = daemon
        self.client = httpx.Client(timeout=30)
        self.poisoned = {c.name: ShapeCursor({"table": table(c), "where": c.where}) for c in CASES}
        self.healthy = {c.name: ShapeCursor({"table": table(c), "where": "id > 0"}) for c in CASES}
        self.other = ShapeCursor({"table": "other"})

    def catch_up_healthy(self, min_lsn: int = 0) -> None:
        for cursor in [*self.healthy.values(), self.other]:
            catch_up(self.client, self.daemon.shape_url, cursor, min_lsn=min_lsn)

    def answer(self, case: Case) -> httpx.Response:
        """The poisoned shape's answer to its reader's next (non-live) request."""
        cursor = self.poisoned[case.name]
        query = dict(cursor.params, offset=cursor.offset)
        if cursor.handle is not None:
            query["handle"] = cursor.handle
        return self.client.get(self.daemon.shape_url, params=query)

    def expect_as_postgres_decides(self, dsn: str, case: Case) -> bool:
        """Asked again from scratch, the shape is what Postgres's ``SELECT`` says, or a 400.

        Returns whether the shape exists (the snapshot query succeeded).
        """
        cursor = self.poisoned[case.name] = ShapeCursor(self.poisoned[case.name].params)
        decided = postgres_decides(dsn, case)
        if isinstance(decided, str):
            answer = self.answer(case)
            assert answer.status_code == 400, (case, answer.status_code, answer.text)
            body = answer.json()
            assert body["message"] == "Invalid request", body
            [reason] = body["errors"]["where"]
            assert reason.endswith(f"(SQLSTATE {decided})"), (reason, decided)
            return False
        catch_up(self.client, self.daemon.shape_url, cursor)
        assert {row["id"] for row in cursor.rows.values()} == decided, case
        return True

    def expect_retired(self, case: Case) -> None:
        answer = self.answer(case)
        assert answer.status_code == 409, (case, answer.status_code, answer.text)
        assert json.loads(answer.content)[0]["headers"]["control"] == "must-refetch"

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def follower(syncd: SyncdProcess) -> Iterator[Follower]:
    reader = Follower(syncd)
    yield reader
    reader.close()


def assert_running(daemon: SyncdProcess) -> None:
    assert daemon.process is not None and daemon.process.poll() is None, daemon.log_tail()
    assert httpx.get(daemon.url + "/v1/health", timeout=10).json() == {"status": "active"}


def test_a_poison_row_retires_only_its_shape(
    syncd: SyncdProcess, follower: Follower, pg_dsn: str
) -> None:
    for case in CASES:
        follower.expect_as_postgres_decides(pg_dsn, case)  # the healthy row only
    follower.catch_up_healthy()

    # inserts: each poison row in one transaction with a change of another table
    for number, case in enumerate(CASES):
        write(pg_dsn, case, "INSERT INTO {} VALUES (2, %(poison)s)", 100 + number)
    follower.catch_up_healthy(min_lsn=wal_position(pg_dsn))
    assert_running(syncd)
    for case in CASES:
        assert set(follower.healthy[case.name].rows) == {
            f'"public"."{table(case)}"/"{i}"' for i in (1, 2)
        }
        follower.expect_retired(case)
        follower.expect_as_postgres_decides(pg_dsn, case)
    assert len(follower.other.rows) == len(CASES)
    retired = syncd.log_path.read_text().count("its where clause failed on a row (")
    assert retired == len(CASES), syncd.log_tail()

    # restarts replay those transactions, and the daemon keeps running
    syncd.restart()
    assert_running(syncd)
    syncd.kill()
    syncd.start()
    assert_running(syncd)
    follower.catch_up_healthy()
    assert len(follower.other.rows) == len(CASES)


def test_poison_by_update_and_delete_and_a_crash_right_after(
    syncd: SyncdProcess, follower: Follower, pg_dsn: str
) -> None:
    for case in CASES:
        follower.expect_as_postgres_decides(pg_dsn, case)
    follower.catch_up_healthy()

    # an update to a poison value, then a crash before the daemon may have seen it
    for number, case in enumerate(CASES):
        write(pg_dsn, case, "UPDATE {} SET v = %(poison)s WHERE id = 1", 100 + number)
    syncd.kill()
    syncd.start()
    follower.catch_up_healthy(min_lsn=wal_position(pg_dsn))
    assert_running(syncd)
    held = set()
    for case in CASES:
        follower.expect_retired(case)
        if follower.expect_as_postgres_decides(pg_dsn, case):
            held.add(case.name)
    assert held, "no shape holds a poison row: the delete below would test nothing"

    # the poison row deleted (the old row is evaluated): a shape that holds it is retired too
    for number, case in enumerate(CASES):
        write(pg_dsn, case, "DELETE FROM {} WHERE id = 1", 200 + number)
    follower.catch_up_healthy(min_lsn=wal_position(pg_dsn))
    assert_running(syncd)
    for case in CASES:
        assert follower.healthy[case.name].rows == {}
        if case.name in held:
            follower.expect_retired(case)
        follower.expect_as_postgres_decides(pg_dsn, case)
    assert len(follower.other.rows) == 2 * len(CASES)
