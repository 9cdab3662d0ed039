"""Subquery shapes in the engine: rows move in and out as the subquery's result changes, and the
shape's log, views and handle survive restarts.

Each test follows one shape over HTTP with the Python materialiser (which applies move-in and
move-out events as clients do) and compares it with the same ``SELECT`` run by Postgres.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.shape_reader import ShapeCursor, catch_up
from tests.syncd_process import SyncdProcess

MINE = "thread_id IN (SELECT thread_id FROM memberships WHERE user_id = $1)"


@pytest.fixture
def syncd(pg_dsn: str, tmp_path: Path) -> Iterator[SyncdProcess]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE memberships"
            " (user_id int, thread_id int, PRIMARY KEY (user_id, thread_id))"
        )
        conn.execute("CREATE TABLE events (id int PRIMARY KEY, thread_id int, body text)")
        conn.execute("INSERT INTO memberships VALUES (1, 10), (2, 20)")
        conn.execute(
            "INSERT INTO events SELECT g, 10 * (1 + g % 3), 'e' || g FROM generate_series(1, 30) g"
        )
    daemon = SyncdProcess(pg_dsn, tmp_path / "storage")
    daemon.start()
    yield daemon
    daemon.stop()


def run(dsn: str, *statements: str) -> int:
    """Run statements in one transaction; the WAL position after it."""
    with psycopg.connect(dsn) as conn:
        for statement in statements:
            conn.execute(statement)
        conn.commit()
        row = conn.execute("SELECT (pg_current_wal_insert_lsn() - '0/0')::int8").fetchone()
        assert row is not None
        return int(row[0])


def expected(dsn: str, where: str, params: tuple[Any, ...]) -> set[str]:
    for number, value in enumerate(params, 1):
        where = where.replace(f"${number}", str(int(value)))
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(f"SELECT id FROM events WHERE {where}").fetchall()
    return {f'"public"."events"/"{r[0]}"' for r in rows}


def follow(
    client: httpx.Client, syncd: SyncdProcess, cursor: ShapeCursor, lsn: int = 0
) -> list[dict[str, Any]]:
    """Catch up and return every message seen on the way."""
    seen: list[dict[str, Any]] = []
    original = cursor.shape.apply_all

    def record(messages: Any) -> None:
        seen.extend(messages)
        original(messages)

    cursor.shape.apply_all = record  # type: ignore[method-assign]
    try:
        catch_up(client, syncd.shape_url, cursor, min_lsn=lsn)
    finally:
        cursor.shape.apply_all = original  # type: ignore[method-assign]
    return seen


def cursor_for(where: str, *params: str) -> ShapeCursor:
    query = {"table": "events", "where": where}
    query.update({f"params[{i}]": value for i, value in enumerate(params, 1)})
    return ShapeCursor(query)


def test_rows_move_in_and_out_with_the_membership(syncd: SyncdProcess, pg_dsn: str) -> None:
    with httpx.Client(timeout=30) as client:
        cursor = cursor_for(MINE, "1")
        snapshot = follow(client, syncd, cursor)
        rows = [m for m in snapshot if "key" in m]
        assert rows and all(
            m["headers"]["tags"] and m["headers"]["active_conditions"] == [True] for m in rows
        )
        assert set(cursor.rows) == expected(pg_dsn, MINE, (1,))

        lsn = run(pg_dsn, "INSERT INTO memberships VALUES (1, 20)")
        moved = follow(client, syncd, cursor, lsn)
        events = [m["headers"]["event"] for m in moved if "event" in m["headers"]]
        assert events == ["move-in"]
        assert any(m["headers"].get("is_move_in") for m in moved if "key" in m)
        assert set(cursor.rows) == expected(pg_dsn, MINE, (1,))
        handle = cursor.handle

        lsn = run(pg_dsn, "DELETE FROM memberships WHERE user_id = 1 AND thread_id = 10")
        moved = follow(client, syncd, cursor, lsn)
        assert [m["headers"]["event"] for m in moved if "event" in m["headers"]] == ["move-out"]
        assert not [m for m in moved if m.get("headers", {}).get("operation") == "delete"]
        assert set(cursor.rows) == expected(pg_dsn, MINE, (1,))
        assert cursor.handle == handle and cursor.refetches == 0


def test_a_change_in_the_move_in_transaction_is_not_lost(syncd: SyncdProcess, pg_dsn: str) -> None:
    with httpx.Client(timeout=30) as client:
        cursor = cursor_for(MINE, "1")
        follow(client, syncd, cursor)
        lsn = run(
            pg_dsn,
            "INSERT INTO memberships VALUES (1, 30)",
            "INSERT INTO events VALUES (100, 30, 'new')",
            "UPDATE events SET body = 'changed' WHERE id = 2",
            "DELETE FROM events WHERE id = 5",
        )
        follow(client, syncd, cursor, lsn)
        assert set(cursor.rows) == expected(pg_dsn, MINE, (1,))
        assert cursor.rows['"public"."events"/"100"']["body"] == "new"
        lsn = run(pg_dsn, "UPDATE events SET thread_id = 10 WHERE id = 100")
        follow(client, syncd, cursor, lsn)
        assert set(cursor.rows) == expected(pg_dsn, MINE, (1,))


@pytest.mark.parametrize(
    "where",
    [
        "thread_id NOT IN (SELECT thread_id FROM memberships WHERE user_id = $1)",
        "thread_id IN (SELECT thread_id FROM memberships WHERE user_id = $1) OR body = 'e3'",
        "thread_id IN (SELECT thread_id FROM memberships WHERE user_id IN "
        "(SELECT user_id FROM memberships WHERE thread_id IN "
        "(SELECT thread_id FROM memberships WHERE user_id = $1)))",
    ],
)
def test_other_forms_follow_their_select(syncd: SyncdProcess, pg_dsn: str, where: str) -> None:
    with httpx.Client(timeout=30) as client:
        cursor = cursor_for(where, "1")
        follow(client, syncd, cursor)
        assert set(cursor.rows) == expected(pg_dsn, where, (1,))
        for statements in (
            ["INSERT INTO memberships VALUES (1, 20)"],
            ["INSERT INTO memberships VALUES (3, 30)", "INSERT INTO memberships VALUES (3, 20)"],
            ["DELETE FROM memberships WHERE user_id = 1 AND thread_id = 10"],
            ["UPDATE events SET thread_id = 30 WHERE id < 10"],
            ["DELETE FROM memberships WHERE user_id = 2"],
        ):
            lsn = run(pg_dsn, *statements)
            follow(client, syncd, cursor, lsn)
            # nested subqueries follow with a reload: wait until the rows agree
            for _ in range(100):
                if set(cursor.rows) == expected(pg_dsn, where, (1,)):
                    break
                follow(client, syncd, cursor, lsn)
            assert set(cursor.rows) == expected(pg_dsn, where, (1,)), statements
        assert cursor.refetches == 0


@pytest.mark.parametrize("crash", [False, True])
def test_a_restart_keeps_the_shape_and_moves_what_changed_meanwhile(
    syncd: SyncdProcess, pg_dsn: str, crash: bool
) -> None:
    with httpx.Client(timeout=30) as client:
        cursor = cursor_for(MINE, "1")
        follow(client, syncd, cursor)
        handle = cursor.handle
        if crash:
            syncd.kill()
        else:
            syncd.stop()
        run(
            pg_dsn,
            "INSERT INTO memberships VALUES (1, 20)",
            "DELETE FROM memberships WHERE thread_id = 10",
        )
        lsn = run(pg_dsn, "INSERT INTO events VALUES (200, 20, 'while down')")
        syncd.start()
        follow(client, syncd, cursor, lsn)
        assert cursor.handle == handle and cursor.refetches == 0
        assert set(cursor.rows) == expected(pg_dsn, MINE, (1,))


def test_a_truncated_inner_table_resets_the_shape(syncd: SyncdProcess, pg_dsn: str) -> None:
    with httpx.Client(timeout=30) as client:
        cursor = cursor_for(MINE, "1")
        follow(client, syncd, cursor)
        lsn = run(pg_dsn, "TRUNCATE memberships")
        follow(client, syncd, cursor, lsn)
        assert cursor.refetches == 1
        assert set(cursor.rows) == set()


def test_limits_are_answered_with_a_400(syncd: SyncdProcess) -> None:
    inner = "user_id = 1"
    for _ in range(5):
        inner = f"user_id IN (SELECT user_id FROM memberships WHERE {inner})"
    deep = f"thread_id IN (SELECT thread_id FROM memberships WHERE {inner})"
    answer = httpx.get(syncd.shape_url, params={"table": "events", "offset": "-1", "where": deep})
    assert answer.status_code == 400
    assert "max_subquery_depth" in json.dumps(answer.json())


def test_a_value_set_past_its_limit_is_refused(pg_dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE memberships"
            " (user_id int, thread_id int, PRIMARY KEY (user_id, thread_id))"
        )
        conn.execute("CREATE TABLE events (id int PRIMARY KEY, thread_id int, body text)")
        conn.execute("INSERT INTO memberships VALUES (1, 10), (1, 20)")
    daemon = SyncdProcess(pg_dsn, tmp_path / "storage", max_subquery_values=2)
    daemon.start()
    try:
        with httpx.Client(timeout=30) as client:
            cursor = cursor_for(MINE, "1")
            follow(client, daemon, cursor)
            run(pg_dsn, "INSERT INTO memberships VALUES (1, 30)")
            answer = None
            for _ in range(200):
                query = dict(cursor.params, offset="-1")
                answer = client.get(daemon.shape_url, params=query)
                if answer.status_code == 400:
                    break
                time.sleep(0.05)
            assert answer is not None and answer.status_code == 400, answer
            assert "max_subquery_values=2" in answer.text
    finally:
        daemon.stop()


def test_a_schema_change_of_an_inner_table_resets_only_what_it_touches(
    syncd: SyncdProcess, pg_dsn: str
) -> None:
    with httpx.Client(timeout=30) as client:
        cursor = cursor_for(MINE, "1")
        follow(client, syncd, cursor)
        run(pg_dsn, "ALTER TABLE memberships ADD COLUMN note text")
        lsn = run(pg_dsn, "INSERT INTO memberships VALUES (1, 20, 'hi')")
        follow(client, syncd, cursor, lsn)
        assert cursor.refetches == 0  # a column the subquery does not read
        assert set(cursor.rows) == expected(pg_dsn, MINE, (1,))
        run(pg_dsn, "ALTER TABLE memberships ALTER COLUMN thread_id TYPE bigint")
        lsn = run(pg_dsn, "INSERT INTO memberships VALUES (1, 30, 'x')")
        follow(client, syncd, cursor, lsn)
        assert cursor.refetches == 1
        assert set(cursor.rows) == expected(pg_dsn, MINE, (1,))
