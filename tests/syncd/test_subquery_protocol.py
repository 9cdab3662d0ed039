"""Subquery shapes over HTTP against a live syncd: tags, move-out and move-in, as clients see them.

Each test builds its own ``users``/``threads``/``memberships``/``events`` tables (suffixed) in
one module-wide database served by one daemon, and reads shapes such as
``thread_id IN (SELECT thread_id FROM memberships WHERE user_id = $1)`` with a
:class:`~tests.faults.checked_consumer.CheckedConsumer` that keeps every message it receives,
applies move events the way the official clients do, and refuses an update or delete of a key
it does not hold. The assertions are the wire format: ``tags`` (one per disjunct, ``/``-joined
slots) and ``active_conditions`` on rows; a ``move-out`` event (and no deletes) when a
membership goes, its pattern value equal to the tag slot of the rows that leave; a ``move-in``
event, ``is_move_in`` inserts and ``snapshot-end`` when one comes. Tags are opaque: only
their equality with the patterns and between rows is checked, never a hash scheme.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from shapes.messages import relation_key_prefix
from shapes.offset import parse_offset
from syncd.pgprovider import PostgresServer, drop_database
from tests.faults.checked_consumer import CheckedConsumer, current_wal_lsn, select_rows
from tests.syncd_process import SyncdProcess

pytestmark = pytest.mark.pg

Message = dict[str, Any]
_suffixes = itertools.count()


@pytest.fixture(scope="module")
def module_dsn(pg_server: PostgresServer) -> Iterator[str]:
    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield make_conninfo(pg_server.dsn, dbname=name)
    drop_database(pg_server.dsn, name)


@pytest.fixture(scope="module")
def syncd(module_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncdProcess]:
    base: Path = tmp_path_factory.mktemp("subquery")
    daemon = SyncdProcess(
        module_dsn, base / "storage", long_poll_timeout=2.0, slot="syncd_subquery_protocol"
    )
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture
def db(module_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        yield conn


@dataclass
class Tables:
    """One test's tables: ``users(id, org)``, ``threads(id, title)``,
    ``memberships(user_id, thread_id, role)`` and ``events(id, thread_id, author_id, body)``."""

    users: str
    threads: str
    memberships: str
    events: str

    def members_of(self, user: str = "$1") -> str:
        """The canonical subquery: the threads ``user`` is a member of."""
        return f"thread_id IN (SELECT thread_id FROM {self.memberships} WHERE user_id = {user})"


def make_tables(db: psycopg.Connection[Any], *, threads: int = 4, per_thread: int = 3) -> Tables:
    """Fresh tables: ``threads`` threads, ``per_thread`` events each (ids ``10*t + i``), users
    1-3 (org 1, 1, 2) and no memberships."""
    n = next(_suffixes)
    tables = Tables(f"users_{n}", f"threads_{n}", f"memberships_{n}", f"events_{n}")
    db.execute(f"CREATE TABLE {tables.users} (id int PRIMARY KEY, org int)".encode())
    db.execute(f"CREATE TABLE {tables.threads} (id int PRIMARY KEY, title text)".encode())
    db.execute(
        f"CREATE TABLE {tables.memberships} (user_id int, thread_id int, role text,"
        " PRIMARY KEY (user_id, thread_id))".encode()
    )
    db.execute(
        f"CREATE TABLE {tables.events} (id int PRIMARY KEY, thread_id int, author_id int,"
        " body text)".encode()
    )
    db.execute(f"INSERT INTO {tables.users} VALUES (1, 1), (2, 1), (3, 2)".encode())
    db.execute(
        f"INSERT INTO {tables.threads} SELECT g, 'thread ' || g"
        f" FROM generate_series(1, {threads}) g".encode()
    )
    db.execute(
        f"INSERT INTO {tables.events} SELECT 10 * t + i, t, 1 + i % 3, 'event ' || t || '.' || i"
        f" FROM generate_series(1, {threads}) t, generate_series(1, {per_thread}) i".encode()
    )
    return tables


def commit(db: psycopg.Connection[Any], *statements: str) -> int:
    """Run ``statements`` in one transaction; returns its 32-bit xid (as ``txids`` carry it)."""
    with db.transaction():
        for statement in statements:
            db.execute(statement.encode())
        row = db.execute("SELECT pg_current_xact_id()::text").fetchone()
    assert row is not None
    return int(row[0]) % 2**32


def event_key(tables: Tables, id_: int) -> str:
    return relation_key_prefix("public", tables.events) + f'/"{id_}"'


def consumer_for(syncd: SyncdProcess, table: str, where: str, *params: str) -> CheckedConsumer:
    query = {"table": table, "where": where}
    query |= {f"params[{i}]": p for i, p in enumerate(params, 1)}
    return CheckedConsumer(syncd.shape_url, query, keep_messages=True)


def read_new(consumer: CheckedConsumer, dsn: str) -> list[Message]:
    """Catch up with everything committed so far; returns the messages that came meanwhile."""
    start = len(consumer.received)
    consumer.catch_up(min_lsn=current_wal_lsn(dsn))
    return consumer.received[start:]


def changes(messages: list[Message]) -> list[Message]:
    return [m for m in messages if "key" in m]


def events(messages: list[Message], kind: str | None = None) -> list[Message]:
    found = [m for m in messages if "event" in m["headers"]]
    return [m for m in found if kind is None or m["headers"]["event"] == kind]


def controls(messages: list[Message], kind: str) -> list[Message]:
    return [m for m in messages if m["headers"].get("control") == kind]


def kinds(messages: list[Message]) -> list[str]:
    """Each message as one word: the event, the control, or the operation (+``*`` move-in).

    The ``up-to-date`` messages are left out except the last message's: a catch-up may get
    some before the server has reached the position it waits for."""
    out = []
    for index, message in enumerate(messages):
        headers = message["headers"]
        if "event" in headers:
            out.append(headers["event"])
        elif headers.get("control") == "up-to-date":
            if index == len(messages) - 1:
                out.append("up-to-date")
        elif "control" in headers:
            out.append(headers["control"])
        else:
            out.append(headers["operation"] + ("*" if headers.get("is_move_in") else ""))
    return out


def slot(tag: str, position: int) -> str:
    return tag.split("/")[position]


def assert_tagged(message: Message, disjuncts: int = 1, positions: int = 1) -> None:
    """A change of a subquery shape: full-length ``tags`` and ``active_conditions``."""
    headers = message["headers"]
    tags, conditions = headers["tags"], headers["active_conditions"]
    assert isinstance(tags, list) and len(tags) == disjuncts, headers
    assert all(isinstance(tag, str) and len(tag.split("/")) == positions for tag in tags), headers
    assert isinstance(conditions, list) and len(conditions) == positions, headers
    assert all(isinstance(c, bool) for c in conditions), headers


def assert_matches_select(consumer: CheckedConsumer, dsn: str, table: str, where: str) -> None:
    consumer.catch_up(min_lsn=current_wal_lsn(dsn))
    expected = select_rows(dsn, table, where)
    assert consumer.rows == expected, (sorted(consumer.rows), sorted(expected))


# -- 1. the initial snapshot, live inserts, refusals ----------------------------------------------


def test_snapshot_holds_only_member_rows_with_tags(syncd: SyncdProcess, db: Any) -> None:
    tables = make_tables(db)
    commit(db, f"INSERT INTO {tables.memberships} VALUES (1, 1, 'a'), (1, 3, 'a'), (2, 2, 'a')")
    with consumer_for(syncd, tables.events, tables.members_of(), "1") as consumer:
        first = read_new(consumer, syncd.dsn)
        rows = changes(first)
        assert sorted(int(m["value"]["id"]) for m in rows) == [11, 12, 13, 31, 32, 33]
        for message in rows:
            assert message["headers"]["operation"] == "insert"
            assert "is_move_in" not in message["headers"]
            assert_tagged(message)
            assert message["headers"]["active_conditions"] == [True]
        tag_of = {m["value"]["thread_id"]: m["headers"]["tags"][0] for m in rows}
        same_thread = {(m["value"]["thread_id"], m["headers"]["tags"][0]) for m in rows}
        assert len(same_thread) == 2, "rows of one thread share their tag"
        assert tag_of["1"] != tag_of["3"]
        assert kinds(first)[-1] == "up-to-date"

        commit(
            db,
            f"INSERT INTO {tables.events} VALUES (14, 1, 1, 'live'), (24, 2, 1, 'not mine')",
        )
        live = read_new(consumer, syncd.dsn)
        inserted = changes(live)
        assert [m["value"]["id"] for m in inserted] == ["14"], live
        assert_tagged(inserted[0])
        assert inserted[0]["headers"]["tags"] == [tag_of["1"]]
        assert_matches_select(consumer, syncd.dsn, tables.events, tables.members_of("1"))


def test_params_are_part_of_the_definition(syncd: SyncdProcess, db: Any) -> None:
    tables = make_tables(db)
    commit(db, f"INSERT INTO {tables.memberships} VALUES (1, 2, 'a'), (2, 3, 'a')")
    with (
        consumer_for(syncd, tables.events, tables.members_of(), "1") as first,
        consumer_for(syncd, tables.events, tables.members_of(), "1") as again,
        consumer_for(syncd, tables.events, tables.members_of(), "2") as other,
    ):
        for consumer in (first, again, other):
            consumer.catch_up()
        assert first.handle == again.handle and first.rows == again.rows
        assert sorted(first.rows) == sorted(event_key(tables, i) for i in (21, 22, 23))
        assert other.handle != first.handle
        assert sorted(other.rows) == sorted(event_key(tables, i) for i in (31, 32, 33))
    with httpx.Client(timeout=15) as client:
        missing = client.get(
            syncd.shape_url,
            params={"table": tables.events, "offset": "-1", "where": tables.members_of()},
        )
    assert "$1" in json.dumps(invalid(missing)["errors"])


def invalid(answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 400, (answer.status_code, answer.text[:300])
    body: dict[str, Any] = answer.json()
    assert body["message"] == "Invalid request", body
    assert isinstance(body["errors"], dict) and body["errors"], body
    return body


def test_unknown_inner_table_and_mixed_polarity_are_400(syncd: SyncdProcess, db: Any) -> None:
    tables = make_tables(db)
    sq = f"(SELECT thread_id FROM {tables.memberships} WHERE user_id = 1)"
    with httpx.Client(timeout=15) as client:
        unknown = client.get(
            syncd.shape_url,
            params={
                "table": tables.events,
                "offset": "-1",
                "where": "thread_id IN (SELECT thread_id FROM no_such_table)",
            },
        )
        invalid(unknown)
        mixed = client.get(
            syncd.shape_url,
            params={
                "table": tables.events,
                "offset": "-1",
                "where": f"thread_id IN {sq} OR NOT thread_id IN {sq}",
            },
        )
        assert "polarity" in json.dumps(invalid(mixed)["errors"])


def test_subqueries_are_refused_in_subsets(syncd: SyncdProcess, db: Any) -> None:
    tables = make_tables(db)
    commit(db, f"INSERT INTO {tables.memberships} VALUES (1, 1, 'a')")
    with consumer_for(syncd, tables.events, tables.members_of(), "1") as consumer:
        consumer.catch_up()
        with httpx.Client(timeout=15) as client:
            answer = client.get(
                syncd.shape_url,
                params={
                    **consumer.params,
                    "handle": str(consumer.handle),
                    "offset": str(consumer.offset),
                    "subset__where": tables.members_of("2"),
                },
            )
        assert answer.status_code == 400, answer.text[:300]


def test_nesting_beyond_the_depth_limit_is_400_naming_it(syncd: SyncdProcess, db: Any) -> None:
    tables = make_tables(db)
    where = f"id IN (SELECT id FROM {tables.users} WHERE org = 1)"
    for _ in range(40):
        where = f"id IN (SELECT id FROM {tables.users} WHERE {where})"
    with httpx.Client(timeout=15) as client:
        answer = client.get(
            syncd.shape_url, params={"table": tables.users, "offset": "-1", "where": where}
        )
    body = invalid(answer)
    assert any(word in json.dumps(body).lower() for word in ("depth", "nest", "limit")), body


# -- 2. move-out and move-in --------------------------------------------------------------------


def test_move_out_is_one_event_and_no_deletes(syncd: SyncdProcess, db: Any) -> None:
    tables = make_tables(db)
    commit(db, f"INSERT INTO {tables.memberships} VALUES (1, 1, 'a'), (1, 2, 'a')")
    with consumer_for(syncd, tables.events, tables.members_of(), "1") as consumer:
        snapshot = changes(read_new(consumer, syncd.dsn))
        tag_of = {m["value"]["thread_id"]: m["headers"]["tags"][0] for m in snapshot}
        xid = commit(db, f"DELETE FROM {tables.memberships} WHERE user_id = 1 AND thread_id = 1")
        after = read_new(consumer, syncd.dsn)
        assert changes(after) == [], after
        (move_out,) = events(after)
        assert move_out["headers"]["event"] == "move-out"
        assert move_out["headers"]["patterns"] == [{"pos": 0, "value": slot(tag_of["1"], 0)}]
        assert move_out["headers"]["txids"] == [xid]
        assert kinds(after)[-1] == "up-to-date"
        assert sorted(consumer.rows) == sorted(event_key(tables, i) for i in (21, 22, 23))
        assert consumer.moved_out == 3
        assert_matches_select(consumer, syncd.dsn, tables.events, tables.members_of("1"))


def test_move_in_brings_the_rows_then_snapshot_end(syncd: SyncdProcess, db: Any) -> None:
    tables = make_tables(db)
    commit(db, f"INSERT INTO {tables.memberships} VALUES (1, 1, 'a')")
    with consumer_for(syncd, tables.events, tables.members_of(), "1") as consumer:
        read_new(consumer, syncd.dsn)
        xid = commit(db, f"INSERT INTO {tables.memberships} VALUES (1, 2, 'a')")
        after = read_new(consumer, syncd.dsn)
        order = kinds(after)
        assert order[0] == "move-in", order
        assert order[1:4] == ["insert*"] * 3, order
        assert order[4] == "snapshot-end", order
        assert order[-1] == "up-to-date", order
        (move_in,) = events(after)
        assert xid in move_in["headers"]["txids"]
        (pattern,) = move_in["headers"]["patterns"]
        assert pattern["pos"] == 0
        rows = changes(after)
        assert sorted(m["value"]["id"] for m in rows) == ["21", "22", "23"]
        for message in rows:
            headers = message["headers"]
            assert headers["is_move_in"] is True
            assert_tagged(message)
            assert headers["tags"] == [pattern["value"]]
            assert headers["active_conditions"] == [True]
            assert not {"lsn", "op_position", "txids", "last"} & set(headers), headers
        end = controls(after, "snapshot-end")[0]["headers"]
        assert {"xmin", "xmax", "xip_list"} <= set(end)
        # The tag of a moved-in row is the one a later move-out names.
        xid_out = commit(
            db, f"DELETE FROM {tables.memberships} WHERE user_id = 1 AND thread_id = 2"
        )
        (move_out,) = events(read_new(consumer, syncd.dsn))
        assert move_out["headers"] == {
            "event": "move-out",
            "patterns": [pattern],
            "txids": [xid_out],
        }
        assert_matches_select(consumer, syncd.dsn, tables.events, tables.members_of("1"))
        assert consumer.refetches == 0


def test_move_in_of_a_thread_without_rows_is_just_the_event(syncd: SyncdProcess, db: Any) -> None:
    tables = make_tables(db)
    commit(db, f"INSERT INTO {tables.threads} VALUES (9, 'empty')")
    with consumer_for(syncd, tables.events, tables.members_of(), "1") as consumer:
        read_new(consumer, syncd.dsn)
        commit(db, f"INSERT INTO {tables.memberships} VALUES (1, 9, 'a')")
        after = read_new(consumer, syncd.dsn)
        assert "snapshot-end" not in kinds(after), after
        assert changes(after) == []
        commit(db, f"INSERT INTO {tables.events} VALUES (91, 9, 1, 'first')")
        live = changes(read_new(consumer, syncd.dsn))
        assert [m["value"]["id"] for m in live] == ["91"]
        assert_matches_select(consumer, syncd.dsn, tables.events, tables.members_of("1"))


# -- 3. NOT IN ------------------------------------------------------------------------------------


def test_not_in_swaps_move_in_and_move_out(syncd: SyncdProcess, db: Any) -> None:
    tables = make_tables(db)
    where = f"thread_id NOT IN (SELECT thread_id FROM {tables.memberships} WHERE user_id = $1)"
    expected_where = where.replace("$1", "1")
    commit(db, f"INSERT INTO {tables.memberships} VALUES (1, 1, 'a')")
    with consumer_for(syncd, tables.events, where, "1") as consumer:
        snapshot = changes(read_new(consumer, syncd.dsn))
        assert {m["value"]["thread_id"] for m in snapshot} == {"2", "3", "4"}
        tag_of = {m["value"]["thread_id"]: m["headers"]["tags"][0] for m in snapshot}
        commit(db, f"INSERT INTO {tables.memberships} VALUES (1, 2, 'a')")
        joined = read_new(consumer, syncd.dsn)
        assert changes(joined) == []
        (move_out,) = events(joined, "move-out")
        assert move_out["headers"]["patterns"] == [{"pos": 0, "value": slot(tag_of["2"], 0)}]
        commit(db, f"DELETE FROM {tables.memberships} WHERE thread_id = 1")
        left = read_new(consumer, syncd.dsn)
        order = kinds(left)
        assert order[:5] == ["move-in", "insert*", "insert*", "insert*", "snapshot-end"], order
        assert {m["value"]["thread_id"] for m in changes(left)} == {"1"}
        assert_matches_select(consumer, syncd.dsn, tables.events, expected_where)


# -- 4. inner updates that keep membership; three levels ----------------------------------------


def test_inner_updates_that_keep_the_value_set_send_nothing(syncd: SyncdProcess, db: Any) -> None:
    tables = make_tables(db)
    commit(db, f"INSERT INTO {tables.memberships} VALUES (1, 1, 'a'), (2, 1, 'a')")
    with consumer_for(syncd, tables.events, tables.members_of(), "1") as consumer:
        read_new(consumer, syncd.dsn)
        commit(db, f"UPDATE {tables.memberships} SET role = 'owner' WHERE thread_id = 1")
        commit(db, f"DELETE FROM {tables.memberships} WHERE user_id = 2")
        commit(db, f"INSERT INTO {tables.memberships} VALUES (2, 3, 'a')")
        after = read_new(consumer, syncd.dsn)
        assert events(after) == [] and changes(after) == [], after
        assert_matches_select(consumer, syncd.dsn, tables.events, tables.members_of("1"))


def test_three_levels_move_in_and_out_with_the_same_tag(syncd: SyncdProcess, db: Any) -> None:
    tables = make_tables(db)
    # The events of the threads of the users of org $1.
    where = (
        f"thread_id IN (SELECT thread_id FROM {tables.memberships} WHERE user_id IN"
        f" (SELECT id FROM {tables.users} WHERE org = $1))"
    )
    commit(db, f"INSERT INTO {tables.memberships} VALUES (1, 1, 'a'), (3, 2, 'a')")
    with consumer_for(syncd, tables.events, where, "1") as consumer:
        snapshot = changes(read_new(consumer, syncd.dsn))
        assert {m["value"]["thread_id"] for m in snapshot} == {"1"}
        commit(db, f"UPDATE {tables.users} SET org = 1 WHERE id = 3")
        moved_in = read_new(consumer, syncd.dsn)
        (move_in,) = events(moved_in, "move-in")
        assert {m["value"]["thread_id"] for m in changes(moved_in)} == {"2"}
        assert all(m["headers"].get("is_move_in") for m in changes(moved_in))
        commit(db, f"UPDATE {tables.users} SET org = 2 WHERE id = 3")
        moved_out = read_new(consumer, syncd.dsn)
        assert changes(moved_out) == []
        (move_out,) = events(moved_out, "move-out")
        assert move_out["headers"]["patterns"] == move_in["headers"]["patterns"]
        assert_matches_select(consumer, syncd.dsn, tables.events, where.replace("$1", "1"))


# -- 5. OR with an ordinary predicate -------------------------------------------------------------


def test_or_shape_tags_and_toggle_without_rows(syncd: SyncdProcess, db: Any) -> None:
    tables = make_tables(db)
    where = f"{tables.members_of()} OR author_id = $2"
    expected_where = where.replace("$1", "1").replace("$2", "2")
    commit(db, f"INSERT INTO {tables.memberships} VALUES (1, 1, 'a')")
    with consumer_for(syncd, tables.events, where, "1", "2") as consumer:
        snapshot = changes(read_new(consumer, syncd.dsn))
        for message in snapshot:
            assert_tagged(message, disjuncts=2, positions=2)
            first, second = message["headers"]["tags"]
            assert slot(first, 0) != "" and slot(first, 1) == "", first
            assert second == "/1", second
        by_id = {m["value"]["id"]: m["headers"] for m in snapshot}
        assert by_id["11"]["active_conditions"] == [True, True]  # thread 1, author 2
        assert by_id["12"]["active_conditions"] == [True, False]  # thread 1, author 3
        assert by_id["21"]["active_conditions"] == [False, True]  # thread 2, author 2
        assert "22" not in by_id
        # Leaving thread 1 keeps event 11 (its author is 2), drops 12 and 13.
        commit(db, f"DELETE FROM {tables.memberships} WHERE thread_id = 1")
        left = read_new(consumer, syncd.dsn)
        assert changes(left) == [] and len(events(left, "move-out")) == 1, left
        assert_matches_select(consumer, syncd.dsn, tables.events, expected_where)
        assert event_key(tables, 11) in consumer.rows
        # Joining thread 2, where only the author-2 rows are held, brings the others.
        commit(db, f"INSERT INTO {tables.memberships} VALUES (1, 2, 'a')")
        joined = read_new(consumer, syncd.dsn)
        assert {m["value"]["id"] for m in changes(joined)} == {"22", "23"}
        assert_matches_select(consumer, syncd.dsn, tables.events, expected_where)
        # Joining a thread whose rows are all held already is only the event.
        commit(db, f"UPDATE {tables.events} SET author_id = 2 WHERE thread_id = 3")
        read_new(consumer, syncd.dsn)
        commit(db, f"INSERT INTO {tables.memberships} VALUES (1, 3, 'a')")
        only_event = read_new(consumer, syncd.dsn)
        assert changes(only_event) == [] and "snapshot-end" not in kinds(only_event)
        assert len(events(only_event, "move-in")) == 1
        assert_matches_select(consumer, syncd.dsn, tables.events, expected_where)
        assert consumer.refetches == 0


# -- 6. row form, params in the outer clause, quoted identifiers ---------------------------------


def test_row_form_and_param_outside_the_subquery(syncd: SyncdProcess, db: Any) -> None:
    tables = make_tables(db)
    where = (
        f"(author_id, thread_id) IN (SELECT user_id, thread_id FROM {tables.memberships}"
        " WHERE role = $1) AND body <> $2"
    )
    expected_where = where.replace("$1", "'writer'").replace("$2", "'hidden'")
    commit(db, f"INSERT INTO {tables.memberships} VALUES (2, 1, 'writer'), (3, 2, 'reader')")
    with consumer_for(syncd, tables.events, where, "writer", "hidden") as consumer:
        snapshot = changes(read_new(consumer, syncd.dsn))
        assert [m["value"]["id"] for m in snapshot] == ["11"]
        assert_tagged(snapshot[0], disjuncts=1, positions=2)
        (tag,) = snapshot[0]["headers"]["tags"]
        assert slot(tag, 0) != "" and slot(tag, 1) == "1", tag
        commit(db, f"UPDATE {tables.memberships} SET role = 'writer' WHERE user_id = 3")
        moved = read_new(consumer, syncd.dsn)
        assert [m["value"]["id"] for m in changes(moved)] == ["22"]
        commit(db, f"UPDATE {tables.memberships} SET role = 'reader' WHERE user_id = 2")
        moved_out = read_new(consumer, syncd.dsn)
        (move_out,) = events(moved_out, "move-out")
        assert move_out["headers"]["patterns"] == [{"pos": 0, "value": slot(tag, 0)}]
        assert_matches_select(consumer, syncd.dsn, tables.events, expected_where)


def test_quoted_identifiers(syncd: SyncdProcess, db: Any) -> None:
    n = next(_suffixes)
    members, posts = f"Members_{n}", f"Posts_{n}"
    db.execute(
        f'CREATE TABLE "{members}" ("userId" int, "threadId" int,'
        ' PRIMARY KEY ("userId", "threadId"))'.encode()
    )
    db.execute(f'CREATE TABLE "{posts}" (id int PRIMARY KEY, "threadId" int)'.encode())
    db.execute(f'INSERT INTO "{posts}" SELECT g, g % 3 FROM generate_series(1, 9) g'.encode())
    commit(db, f'INSERT INTO "{members}" VALUES (1, 1)')
    where = f'"threadId" IN (SELECT "threadId" FROM "{members}" WHERE "userId" = $1)'
    with consumer_for(syncd, f'"{posts}"', where, "1") as consumer:
        snapshot = changes(read_new(consumer, syncd.dsn))
        assert sorted(int(m["value"]["id"]) for m in snapshot) == [1, 4, 7]
        commit(db, f'INSERT INTO "{members}" VALUES (1, 2)')
        read_new(consumer, syncd.dsn)
        commit(db, f'DELETE FROM "{members}" WHERE "threadId" = 1')
        read_new(consumer, syncd.dsn)
        assert_matches_select(consumer, syncd.dsn, posts, where.replace("$1", "1"))


# -- 7. bursts, bulk moves, oscillation, two subqueries -------------------------------------------


def test_burst_read_in_one_catch_up_keeps_commit_order(syncd: SyncdProcess, db: Any) -> None:
    tables = make_tables(db)
    commit(db, f"INSERT INTO {tables.memberships} VALUES (1, 1, 'a')")
    with consumer_for(syncd, tables.events, tables.members_of(), "1") as consumer:
        read_new(consumer, syncd.dsn)
        commit(db, f"DELETE FROM {tables.memberships} WHERE thread_id = 1")
        commit(db, f"INSERT INTO {tables.memberships} VALUES (1, 2, 'a')")
        commit(db, f"INSERT INTO {tables.memberships} VALUES (1, 3, 'a')")
        burst = read_new(consumer, syncd.dsn)
        # The move-out first; the two move-ins may come as one batch (one event naming both
        # values) or one after the other, each followed by its rows and a snapshot-end.
        order = kinds(burst)
        assert order[0] == "move-out" and order[-1] == "up-to-date", order
        assert "move-out" not in order[1:], order
        moved_in = order[1:-1]
        assert moved_in in (
            ["move-in", *["insert*"] * 6, "snapshot-end"],
            ["move-in", *["insert*"] * 3, "snapshot-end"] * 2,
        ), order
        patterns = [p for e in events(burst, "move-in") for p in e["headers"]["patterns"]]
        assert len({p["value"] for p in patterns}) == 2, patterns
        assert_matches_select(consumer, syncd.dsn, tables.events, tables.members_of("1"))


def test_bulk_move_out_lists_every_value_in_one_event(syncd: SyncdProcess, db: Any) -> None:
    tables = make_tables(db)
    commit(db, f"INSERT INTO {tables.memberships} VALUES (1, 1, 'a'), (1, 2, 'a'), (1, 3, 'a')")
    with consumer_for(syncd, tables.events, tables.members_of(), "1") as consumer:
        snapshot = changes(read_new(consumer, syncd.dsn))
        tag_of = {m["value"]["thread_id"]: m["headers"]["tags"][0] for m in snapshot}
        xid = commit(db, f"DELETE FROM {tables.memberships} WHERE thread_id IN (1, 2)")
        after = read_new(consumer, syncd.dsn)
        (move_out,) = events(after)
        patterns = move_out["headers"]["patterns"]
        expected = [{"pos": 0, "value": slot(tag_of[t], 0)} for t in ("1", "2")]
        assert sorted(patterns, key=json.dumps) == sorted(expected, key=json.dumps)
        assert move_out["headers"]["txids"] == [xid]
        assert changes(after) == []
        assert_matches_select(consumer, syncd.dsn, tables.events, tables.members_of("1"))


def test_oscillation_and_same_transaction_toggles(syncd: SyncdProcess, db: Any) -> None:
    tables = make_tables(db)
    member = f"INSERT INTO {tables.memberships} VALUES (1, 1, 'a')"
    leave = f"DELETE FROM {tables.memberships} WHERE user_id = 1 AND thread_id = 1"
    with consumer_for(syncd, tables.events, tables.members_of(), "1") as consumer:
        read_new(consumer, syncd.dsn)
        for statement in (member, leave, member, leave):
            commit(db, statement)
        read_new(consumer, syncd.dsn)
        assert consumer.rows == {}
        # In and out within one transaction: nothing moves.
        commit(db, member, leave)
        quiet = read_new(consumer, syncd.dsn)
        assert changes(quiet) == [] and events(quiet) == [], quiet
        # A move-out right after a move-in, read separately.
        commit(db, member)
        read_new(consumer, syncd.dsn)
        assert len(consumer.rows) == 3
        commit(db, leave)
        read_new(consumer, syncd.dsn)
        assert_matches_select(consumer, syncd.dsn, tables.events, tables.members_of("1"))
        assert consumer.refetches == 0


def test_one_transaction_moving_and_changing_outer_rows(syncd: SyncdProcess, db: Any) -> None:
    tables = make_tables(db)
    commit(db, f"INSERT INTO {tables.memberships} VALUES (1, 1, 'a')")
    with consumer_for(syncd, tables.events, tables.members_of(), "1") as consumer:
        read_new(consumer, syncd.dsn)
        commit(
            db,
            f"INSERT INTO {tables.memberships} VALUES (1, 2, 'a')",
            f"UPDATE {tables.events} SET body = 'changed' WHERE thread_id = 2",
            f"UPDATE {tables.events} SET thread_id = 2 WHERE id = 11",
        )
        read_new(consumer, syncd.dsn)
        assert_matches_select(consumer, syncd.dsn, tables.events, tables.members_of("1"))
        commit(
            db,
            f"DELETE FROM {tables.memberships} WHERE thread_id = 2",
            f"UPDATE {tables.events} SET body = 'gone' WHERE thread_id = 2",
            f"UPDATE {tables.events} SET thread_id = 1 WHERE id = 21",
        )
        read_new(consumer, syncd.dsn)
        assert_matches_select(consumer, syncd.dsn, tables.events, tables.members_of("1"))


def test_reparented_row_survives_its_old_parent_leaving(syncd: SyncdProcess, db: Any) -> None:
    tables = make_tables(db)
    commit(db, f"INSERT INTO {tables.memberships} VALUES (1, 1, 'a'), (1, 2, 'a')")
    with consumer_for(syncd, tables.events, tables.members_of(), "1") as consumer:
        read_new(consumer, syncd.dsn)
        commit(db, f"UPDATE {tables.events} SET thread_id = 2 WHERE id = 11")
        update = changes(read_new(consumer, syncd.dsn))
        assert [m["headers"]["operation"] for m in update] == ["update"]
        assert update[0]["headers"]["removed_tags"], update
        commit(db, f"DELETE FROM {tables.memberships} WHERE thread_id = 1")
        read_new(consumer, syncd.dsn)
        assert event_key(tables, 11) in consumer.rows
        assert_matches_select(consumer, syncd.dsn, tables.events, tables.members_of("1"))


def test_two_subqueries_at_the_same_level(syncd: SyncdProcess, db: Any) -> None:
    tables = make_tables(db)
    where = f"{tables.members_of()} AND author_id IN (SELECT id FROM {tables.users} WHERE org = $2)"
    expected_where = where.replace("$1", "1").replace("$2", "1")
    commit(db, f"INSERT INTO {tables.memberships} VALUES (1, 1, 'a'), (1, 2, 'a')")
    with consumer_for(syncd, tables.events, where, "1", "1") as consumer:
        snapshot = changes(read_new(consumer, syncd.dsn))
        for message in snapshot:
            assert_tagged(message, disjuncts=1, positions=2)
        assert_matches_select(consumer, syncd.dsn, tables.events, expected_where)
        commit(db, f"UPDATE {tables.users} SET org = 1 WHERE id = 3")
        read_new(consumer, syncd.dsn)
        assert_matches_select(consumer, syncd.dsn, tables.events, expected_where)
        commit(db, f"DELETE FROM {tables.memberships} WHERE thread_id = 1")
        read_new(consumer, syncd.dsn)
        assert_matches_select(consumer, syncd.dsn, tables.events, expected_where)
        commit(db, f"UPDATE {tables.users} SET org = 2 WHERE id = 1")
        read_new(consumer, syncd.dsn)
        assert_matches_select(consumer, syncd.dsn, tables.events, expected_where)
        assert consumer.refetches == 0


def test_threads_shape_and_events_shape_share_the_membership_changes(
    syncd: SyncdProcess, db: Any
) -> None:
    tables = make_tables(db)
    threads_where = f"id IN (SELECT thread_id FROM {tables.memberships} WHERE user_id = $1)"
    with (
        consumer_for(syncd, tables.threads, threads_where, "2") as threads,
        consumer_for(syncd, tables.events, tables.members_of(), "2") as events_,
    ):
        threads.catch_up()
        events_.catch_up()
        commit(db, f"INSERT INTO {tables.memberships} VALUES (2, 4, 'a'), (2, 3, 'a')")
        commit(db, f"DELETE FROM {tables.memberships} WHERE thread_id = 3")
        assert_matches_select(threads, syncd.dsn, tables.threads, threads_where.replace("$1", "2"))
        assert_matches_select(events_, syncd.dsn, tables.events, tables.members_of("2"))


# -- restarts and TRUNCATE (a daemon of their own) ------------------------------------------------


@pytest.fixture
def own_syncd(pg_dsn: str, tmp_path: Path) -> Iterator[SyncdProcess]:
    daemon = SyncdProcess(pg_dsn, tmp_path / "storage", long_poll_timeout=2.0)
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.mark.parametrize("crash", [False, True], ids=["clean", "kill-9"])
def test_restart_keeps_the_handle_and_the_tags(own_syncd: SyncdProcess, crash: bool) -> None:
    with psycopg.connect(own_syncd.dsn, autocommit=True) as db:
        tables = make_tables(db)
        commit(db, f"INSERT INTO {tables.memberships} VALUES (1, 1, 'a'), (1, 2, 'a')")
        with consumer_for(own_syncd, tables.events, tables.members_of(), "1") as consumer:
            snapshot = changes(read_new(consumer, own_syncd.dsn))
            tag_of = {m["value"]["thread_id"]: m["headers"]["tags"][0] for m in snapshot}
            handle, offset = consumer.handle, consumer.offset
            if crash:
                own_syncd.kill()
                own_syncd.start()
            else:
                own_syncd.restart()
            xid = commit(db, f"DELETE FROM {tables.memberships} WHERE thread_id = 1")
            after = read_new(consumer, own_syncd.dsn)
            assert consumer.refetches == 0
            assert consumer.handle == handle and consumer.offset >= offset
            (move_out,) = events(after, "move-out")
            assert move_out["headers"]["patterns"] == [{"pos": 0, "value": slot(tag_of["1"], 0)}]
            assert move_out["headers"]["txids"] == [xid]
            commit(db, f"INSERT INTO {tables.memberships} VALUES (1, 3, 'a')")
            moved_in = read_new(consumer, own_syncd.dsn)
            assert {m["value"]["thread_id"] for m in changes(moved_in)} == {"3"}
            assert_matches_select(consumer, own_syncd.dsn, tables.events, tables.members_of("1"))
            assert consumer.refetches == 0


def test_truncate_of_the_inner_table_restarts_the_shape(own_syncd: SyncdProcess) -> None:
    with psycopg.connect(own_syncd.dsn, autocommit=True) as db:
        tables = make_tables(db)
        commit(db, f"INSERT INTO {tables.memberships} VALUES (1, 1, 'a')")
        with consumer_for(own_syncd, tables.events, tables.members_of(), "1") as consumer:
            consumer.catch_up()
            first_handle = consumer.handle
            commit(db, f"TRUNCATE {tables.memberships}")
            commit(db, f"INSERT INTO {tables.memberships} VALUES (1, 2, 'a')")
            assert_matches_select(consumer, own_syncd.dsn, tables.events, tables.members_of("1"))
            assert consumer.refetches >= 1
            assert consumer.handle != first_handle


# -- limits (a daemon with small caps) ------------------------------------------------------------


@pytest.fixture
def capped_syncd(pg_dsn: str, tmp_path: Path) -> Iterator[SyncdProcess]:
    daemon = SyncdProcess(
        pg_dsn,
        tmp_path / "storage",
        long_poll_timeout=1.0,
        max_subquery_depth=2,
        max_subquery_values=5,
    )
    daemon.start()
    yield daemon
    daemon.stop()


def first_answer(syncd: SyncdProcess, table: str, where: str) -> httpx.Response:
    with httpx.Client(timeout=30) as client:
        return client.get(syncd.shape_url, params={"table": table, "where": where, "offset": "-1"})


def test_depth_cap_is_a_400_naming_it(capped_syncd: SyncdProcess) -> None:
    with psycopg.connect(capped_syncd.dsn, autocommit=True) as db:
        tables = make_tables(db)
    two = (
        f"thread_id IN (SELECT thread_id FROM {tables.memberships} WHERE user_id IN"
        f" (SELECT id FROM {tables.users} WHERE org = 1))"
    )
    assert first_answer(capped_syncd, tables.events, two).status_code == 200
    three = (
        f"thread_id IN (SELECT thread_id FROM {tables.memberships} WHERE user_id IN"
        f" (SELECT id FROM {tables.users} WHERE org IN (SELECT org FROM {tables.users}"
        " WHERE id = 1)))"
    )
    body = invalid(first_answer(capped_syncd, tables.events, three))
    assert "max_subquery_depth" in json.dumps(body), body


def test_value_set_cap_is_a_400_naming_it_and_nothing_stalls(
    capped_syncd: SyncdProcess,
) -> None:
    with psycopg.connect(capped_syncd.dsn, autocommit=True) as db:
        tables = make_tables(db, threads=8)
        everyone = f"thread_id IN (SELECT thread_id FROM {tables.memberships})"
        commit(db, f"INSERT INTO {tables.memberships} SELECT 1, g FROM generate_series(1, 6) g")
        body = invalid(first_answer(capped_syncd, tables.events, everyone))
        assert "max_subquery_values" in json.dumps(body), body
        # A shape within the cap, whose value set then grows past it.
        commit(db, f"DELETE FROM {tables.memberships} WHERE thread_id > 3")
        with (
            consumer_for(capped_syncd, tables.events, everyone) as growing,
            CheckedConsumer(capped_syncd.shape_url, {"table": tables.threads}) as plain,
        ):
            growing.catch_up()
            plain.catch_up()
            assert len(growing.rows) == 9
            commit(db, f"INSERT INTO {tables.memberships} SELECT 2, g FROM generate_series(1, 8) g")
            commit(db, f"UPDATE {tables.threads} SET title = 'after' WHERE id = 1")
            # The daemon goes on: other shapes follow; the grown shape's clients are sent
            # back to a snapshot (409), which is then refused with the 400.
            assert_matches_select(plain, capped_syncd.dsn, tables.threads, "true")
            assert reset_seen(growing), "the grown shape was never reset"
            body = invalid(first_answer(capped_syncd, tables.events, everyone))
            assert "max_subquery_values" in json.dumps(body), body


def reset_seen(consumer: CheckedConsumer, attempts: int = 600) -> bool:
    """Follow ``consumer``'s shape (non-live) until a request is answered 409."""
    with httpx.Client(timeout=30) as client:
        for _ in range(attempts):
            query = {**consumer.params, "offset": str(consumer.offset)}
            query["handle"] = str(consumer.handle)
            answer = client.get(consumer.url, params=query)
            if answer.status_code == 409:
                return True
            assert answer.status_code == 200, (answer.status_code, answer.text[:300])
            consumer.offset = parse_offset(answer.headers["electric-offset"])
            time.sleep(0.05)
    return False
