"""Oracle for subquery shapes: every shape's rows equal ``SELECT … WHERE … IN (SELECT …)``.

Hypothesis draws a workload over ``users(id, name)``, ``threads(id, title)``,
``memberships(user_id, thread_id)`` and ``events(id, thread_id, n, body)``: joins and leaves,
updates that change ``thread_id`` or ``user_id`` (so rows move between threads and members
between users), outer inserts, updates and deletes, and (in this file) the odd TRUNCATE. Two
writer threads commit it from their own connections while the shapes are created at random
moments and followed live by :class:`~tests.faults.checked_consumer.CheckedConsumer`, which
applies move-in/move-out events like the official clients and fails on an update or delete of
a key it does not hold (or an insert of one it holds, unless it is a move-in row). Once the
writers are done, each consumer catches up with the WAL position of the last commit and must
hold exactly what Postgres returns for the same where clause.

The shapes: events and threads of the threads a user is a member of; events of the threads a
user is *not* a member of (``NOT IN``); events of a user's threads ``OR`` with a small ``n``;
and the users who share a thread with a user (two nested subqueries over three tables).
``tests/faults/test_subquery_restart.py`` runs the same scenario with a ``kill -9`` of syncd
in the middle.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import errors

from tests.faults.checked_consumer import CheckedConsumer, current_wal_lsn, select_rows
from tests.syncd_process import SyncdProcess

pytestmark = [pytest.mark.pg, pytest.mark.slow]

USERS = 4
THREADS = 5
EVENTS = 40

_suffixes = itertools.count()


@dataclass(frozen=True)
class Schema:
    """The four tables of one example (names suffixed so that examples do not meet)."""

    suffix: int

    @property
    def users(self) -> str:
        return f"sq_users_{self.suffix}"

    @property
    def threads(self) -> str:
        return f"sq_threads_{self.suffix}"

    @property
    def memberships(self) -> str:
        return f"sq_memberships_{self.suffix}"

    @property
    def events(self) -> str:
        return f"sq_events_{self.suffix}"


SHAPE_KINDS = ("events", "threads", "not-in", "or", "co-members")


def shape_of(schema: Schema, kind: str) -> tuple[str, str]:
    """``(table, where)`` of a shape kind, the user as ``$1``."""
    mine = f"SELECT thread_id FROM {schema.memberships} WHERE user_id = $1"
    if kind == "events":
        return schema.events, f"thread_id IN ({mine})"
    if kind == "threads":
        return schema.threads, f"id IN ({mine})"
    if kind == "not-in":
        return schema.events, f"thread_id NOT IN ({mine})"
    if kind == "or":
        return schema.events, f"thread_id IN ({mine}) OR n < 3"
    assert kind == "co-members"
    return (
        schema.users,
        f"id IN (SELECT user_id FROM {schema.memberships} WHERE thread_id IN ({mine}))",
    )


def create_schema(dsn: str, schema: Schema, seed: int) -> None:
    rng = random.Random(seed)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {schema.users} (id int PRIMARY KEY, name text)".encode())
        conn.execute(f"CREATE TABLE {schema.threads} (id int PRIMARY KEY, title text)".encode())
        conn.execute(
            f"CREATE TABLE {schema.memberships} (user_id int, thread_id int,"
            " PRIMARY KEY (user_id, thread_id))".encode()
        )
        conn.execute(
            f"CREATE TABLE {schema.events} (id int PRIMARY KEY, thread_id int NOT NULL, n int,"
            " body text)".encode()
        )
        conn.execute(
            f"INSERT INTO {schema.users} SELECT g, 'user ' || g"
            f" FROM generate_series(1, {USERS}) g".encode()
        )
        conn.execute(
            f"INSERT INTO {schema.threads} SELECT g, 'thread ' || g"
            f" FROM generate_series(1, {THREADS}) g".encode()
        )
        for user in range(1, USERS + 1):
            for thread in rng.sample(range(1, THREADS + 1), 2):
                conn.execute(
                    f"INSERT INTO {schema.memberships} VALUES (%s, %s)".encode(), (user, thread)
                )
        for id_ in range(1, EVENTS // 2 + 1):
            conn.execute(
                f"INSERT INTO {schema.events} VALUES (%s, %s, %s, %s)".encode(),
                (id_, rng.randint(1, THREADS), rng.randint(0, 9), f"e{id_}"),
            )


# -- the workload ---------------------------------------------------------------------------------

Op = tuple[str, int, int, int]
"""``(kind, a, b, c)``; what a, b and c mean depends on the kind (see :func:`apply_op`)."""

users = st.integers(1, USERS)
threads = st.integers(1, THREADS)
event_ids = st.integers(1, EVENTS)
small = st.integers(0, 9)

MEMBERSHIP_OPS = st.one_of(
    st.tuples(st.just("join"), users, threads, small),
    st.tuples(st.just("leave"), users, threads, small),
    st.tuples(st.just("member-thread"), users, threads, threads),
    st.tuples(st.just("member-user"), users, threads, users),
)
OUTER_OPS = st.one_of(
    st.tuples(st.just("event-upsert"), event_ids, threads, small),
    st.tuples(st.just("event-thread"), event_ids, threads, small),
    st.tuples(st.just("event-n"), event_ids, small, small),
    st.tuples(st.just("event-delete"), event_ids, small, small),
    st.tuples(st.just("thread-title"), threads, small, small),
)
OPS = st.one_of(MEMBERSHIP_OPS, OUTER_OPS)
TRUNCATE = st.tuples(
    st.sampled_from(["truncate-memberships", "truncate-events"]), small, small, small
)


@st.composite
def transactions(draw: st.DrawFn, *, truncates: bool) -> list[list[Op]]:
    """20-40 transactions of 1-4 operations; with ``truncates``, maybe one TRUNCATE among them
    (more would leave little for the moves to work on)."""
    txns = draw(st.lists(st.lists(OPS, min_size=1, max_size=4), min_size=20, max_size=40))
    if truncates and draw(st.booleans()):
        txns.insert(draw(st.integers(0, len(txns))), [draw(TRUNCATE)])
    return txns


def apply_op(conn: psycopg.Connection[tuple[object, ...]], schema: Schema, op: Op) -> None:
    kind, a, b, c = op
    m, e = schema.memberships, schema.events
    statements: dict[str, tuple[str, tuple[object, ...]]] = {
        "join": (f"INSERT INTO {m} VALUES (%s, %s) ON CONFLICT DO NOTHING", (a, b)),
        "leave": (f"DELETE FROM {m} WHERE user_id = %s AND thread_id = %s", (a, b)),
        "member-thread": (
            f"UPDATE {m} SET thread_id = %s WHERE user_id = %s AND thread_id = %s",
            (c, a, b),
        ),
        "member-user": (
            f"UPDATE {m} SET user_id = %s WHERE user_id = %s AND thread_id = %s",
            (c, a, b),
        ),
        "event-upsert": (
            f"INSERT INTO {e} VALUES (%s, %s, %s, 'new') ON CONFLICT (id) DO UPDATE"
            " SET thread_id = excluded.thread_id, n = excluded.n, body = 'upserted'",
            (a, b, c),
        ),
        "event-thread": (f"UPDATE {e} SET thread_id = %s WHERE id = %s", (b, a)),
        "event-n": (f"UPDATE {e} SET n = %s, body = 'n' || %s WHERE id = %s", (b, c, a)),
        "event-delete": (f"DELETE FROM {e} WHERE id = %s", (a,)),
        "thread-title": (
            f"UPDATE {schema.threads} SET title = 'title ' || %s WHERE id = %s",
            (b, a),
        ),
        "truncate-memberships": (f"TRUNCATE {m}", ()),
        "truncate-events": (f"TRUNCATE {e}", ()),
    }
    statement, args = statements[kind]
    conn.execute(statement.encode(), args)


_SKIPPED = (errors.UniqueViolation, errors.DeadlockDetected, errors.LockNotAvailable)


def write(dsn: str, schema: Schema, txns: Sequence[list[Op]], pause: float) -> int:
    """Commit ``txns`` one by one (a conflicting one is rolled back and skipped); returns how
    many committed."""
    committed = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '5s'")
        for txn in txns:
            try:
                with conn.transaction():
                    for op in txn:
                        apply_op(conn, schema, op)
                committed += 1
            except _SKIPPED:
                pass
            time.sleep(pause)
    return committed


class Writers:
    """The transactions split between two connections, committed concurrently in threads."""

    def __init__(self, dsn: str, schema: Schema, txns: Sequence[list[Op]]) -> None:
        self.failures: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._run, args=(dsn, schema, txns[i::2]), name=f"writer {i}")
            for i in range(2)
        ]

    def _run(self, dsn: str, schema: Schema, txns: Sequence[list[Op]]) -> None:
        try:
            write(dsn, schema, txns, 0.05)
        except BaseException as exc:
            self.failures.append(exc)

    def __enter__(self) -> Writers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.join()

    def join(self) -> None:
        for thread in self._threads:
            thread.join()
        assert not self.failures, self.failures


# -- the scenario ---------------------------------------------------------------------------------

Shape = tuple[str, int]
"""``(kind, user)``."""

shapes = st.lists(st.tuples(st.sampled_from(SHAPE_KINDS), users), min_size=2, max_size=5)


def consumer_of(syncd: SyncdProcess, schema: Schema, shape: Shape) -> CheckedConsumer:
    kind, user = shape
    table, where = shape_of(schema, kind)
    params = {"table": table, "where": where, "params[1]": str(user)}
    return CheckedConsumer(syncd.shape_url, params, name=f"{kind}({user})", timeout=30)


def assert_consumers_equal_select(
    consumers: Sequence[CheckedConsumer], dsn: str, schema: Schema, wanted: Sequence[Shape]
) -> None:
    """Each consumer, caught up with every commit so far, holds exactly its SELECT."""
    written = current_wal_lsn(dsn)
    for consumer, (kind, user) in zip(consumers, wanted, strict=True):
        consumer.catch_up(min_lsn=written)
        table, where = shape_of(schema, kind)
        expected = select_rows(dsn, table, where.replace("$1", str(user)))
        if consumer.rows != expected:
            differ = [
                k for k in expected.keys() & consumer.rows.keys() if expected[k] != consumer.rows[k]
            ]
            raise AssertionError(
                f"{consumer.name}: missing {sorted(expected.keys() - consumer.rows.keys())},"
                f" extra {sorted(consumer.rows.keys() - expected.keys())}, different {differ}"
            )


def run_scenario(
    syncd: SyncdProcess,
    dsn: str,
    txns: list[list[Op]],
    wanted: list[Shape],
    *,
    crash: bool = False,
) -> list[CheckedConsumer]:
    """Write ``txns`` concurrently while the shapes are created and followed live (with a
    ``kill -9`` and restart of syncd halfway when ``crash``); then check every shape against
    Postgres. Returns the (closed) consumers for further checks."""
    schema = Schema(next(_suffixes))
    create_schema(dsn, schema, seed=len(txns))
    rng = random.Random(len(txns) * 31 + len(wanted))
    consumers = [consumer_of(syncd, schema, shape) for shape in wanted]
    try:
        with Writers(dsn, schema, txns):
            for index, consumer in enumerate(consumers):
                consumer.start()
                time.sleep(rng.random() * 0.15)
                if crash and index == len(consumers) // 2:
                    time.sleep(rng.random() * 0.2)
                    syncd.kill()
                    syncd.start()
        for consumer in consumers:
            consumer.stop()
        assert_consumers_equal_select(consumers, dsn, schema, wanted)
    finally:
        for consumer in consumers:
            consumer.close()
    return consumers


@pytest.fixture
def syncd(pg_dsn: str, tmp_path: Path) -> Iterator[SyncdProcess]:
    daemon = SyncdProcess(pg_dsn, tmp_path / "storage", long_poll_timeout=1.0)
    daemon.start()
    yield daemon
    daemon.stop()


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(txns=transactions(truncates=True), wanted=shapes)
def test_subquery_shapes_equal_select_under_concurrent_writes(
    syncd: SyncdProcess, pg_dsn: str, txns: list[list[Op]], wanted: list[Shape]
) -> None:
    run_scenario(syncd, pg_dsn, txns, wanted)
