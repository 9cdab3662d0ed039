"""Subquery shapes end to end: the official client and TanStack DB, long-poll and SSE.

A user's events are ``thread_id IN (SELECT thread_id FROM memberships WHERE user_id = $1)``.
The user joins a thread: its events appear (a move-in). The user leaves a thread: its events
disappear, from a move-out event alone: the official ``ShapeStream`` passes the event through
(and no delete), TanStack DB's electric collection drops the rows itself. Neither client
refetches: one snapshot request, no 409, no must-refetch.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlparse

import psycopg
import pytest

from shapes.messages import relation_key_prefix, row_key
from tests.e2e.subquery_stream import SubqueryStreamFollower
from tests.e2e.support import syncd_fixture
from tests.e2e.tanstack import CollectionFollower, tanstack_modules_ready
from tests.syncd_process import SyncdProcess

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not tanstack_modules_ready(), reason="run `make js` first"),
]

EVENTS_PER_THREAD = 20
WHERE = "thread_id IN (SELECT thread_id FROM memberships WHERE user_id = $1)"


def prepare(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE memberships (user_id int, thread_id int,"
            " PRIMARY KEY (user_id, thread_id))"
        )
        conn.execute("CREATE TABLE events (id int PRIMARY KEY, thread_id int, body text)")
        conn.execute(
            "INSERT INTO events SELECT 100 * t + i, t, 'event ' || t || '.' || i"
            f" FROM generate_series(1, 3) t, generate_series(1, {EVENTS_PER_THREAD}) i"
        )
        conn.execute("INSERT INTO memberships VALUES (1, 1), (2, 3)")


syncd = syncd_fixture(prepare, long_poll_timeout=2.0)


def execute(dsn: str, statement: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement.encode())


def events_of(dsn: str, user: int) -> list[dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id, thread_id, body FROM events WHERE " + WHERE.replace("$1", str(user))
        ).fetchall()
    return [{"id": id_, "thread_id": thread, "body": body} for id_, thread, body in rows]


def stream_rows(dsn: str, user: int) -> dict[str, dict[str, Any]]:
    prefix = relation_key_prefix("public", "events")
    return {row_key(prefix, {"id": str(row["id"])}, ("id",)): row for row in events_of(dsn, user)}


def collection_rows(dsn: str, user: int) -> dict[str, dict[str, Any]]:
    return {str(row["id"]): row for row in events_of(dsn, user)}


@pytest.mark.parametrize("live_sse", [False, True], ids=["long-poll", "sse"])
async def test_official_client_sees_move_in_and_move_out(
    syncd: SyncdProcess, live_sse: bool
) -> None:
    dsn = syncd.dsn
    async with SubqueryStreamFollower(
        syncd.shape_url, "events", where=WHERE, params={"1": "1"}, live_sse=live_sse
    ) as follower:
        await follower.wait_for_rows(stream_rows(dsn, 1), timeout=60)
        execute(dsn, "INSERT INTO memberships VALUES (1, 2)")
        await follower.wait_for_rows(stream_rows(dsn, 1), timeout=60)
        assert len(follower.rows) == 2 * EVENTS_PER_THREAD
        assert follower.events_of("move-in"), follower.move_events
        moved_in = [c for c in follower.changes if c["isMoveIn"]]
        assert len(moved_in) == EVENTS_PER_THREAD

        execute(dsn, "DELETE FROM memberships WHERE user_id = 1 AND thread_id = 1")
        await follower.wait_for_rows(stream_rows(dsn, 1), timeout=60)
        (move_out,) = follower.events_of("move-out")
        assert len(move_out["patterns"]) == 1 and move_out["txids"], move_out
        assert not [c for c in follower.changes if c["operation"] == "delete"]
        assert follower.refetches == 0
        assert follower.snapshot_requests == 1, follower.responses
        assert not follower.fatal_errors, follower.errors


def snapshot_requests(follower: CollectionFollower) -> list[dict[str, Any]]:
    return [
        r
        for r in follower.requests
        if r["type"] == "request" and parse_qs(urlparse(r["url"]).query).get("offset") == ["-1"]
    ]


@pytest.mark.parametrize("live_sse", [False, True], ids=["long-poll", "sse"])
async def test_tanstack_collection_drops_rows_on_move_out_without_refetch(
    syncd: SyncdProcess, live_sse: bool
) -> None:
    dsn = syncd.dsn
    async with CollectionFollower(
        syncd.shape_url,
        "events",
        where=WHERE,
        params={"1": "1"},
        log_requests=True,
        live_sse=live_sse,
    ) as follower:
        await follower.wait_for_rows(collection_rows(dsn, 1), timeout=60)
        execute(dsn, "INSERT INTO memberships VALUES (1, 2)")
        await follower.wait_for_rows(collection_rows(dsn, 1), timeout=60)
        assert len(follower.rows) == 2 * EVENTS_PER_THREAD
        execute(dsn, "DELETE FROM memberships WHERE user_id = 1 AND thread_id = 1")
        await follower.wait_for_rows(collection_rows(dsn, 1), timeout=60)
        assert {row["thread_id"] for row in follower.rows.values()} == {2}
        # A write to a thread the user left does not come back.
        execute(dsn, "UPDATE events SET body = 'after leaving' WHERE thread_id = 1")
        execute(dsn, "INSERT INTO events VALUES (999, 2, 'last')")
        await follower.wait_for_rows(collection_rows(dsn, 1), timeout=60)
        assert len(snapshot_requests(follower)) == 1, follower.requests
        statuses = [r["status"] for r in follower.requests if r["type"] == "response"]
        assert 409 not in statuses, statuses
        assert not follower.fatal_errors, follower.errors
