"""The Burn app's sync routes with the official JS client and TanStack DB, long-poll and SSE.

Each user follows the routes of the web app (a bearer session token) with the official
``ShapeStream`` (a tag-aware row store, since the client's ``Shape`` ignores move events) and
receives exactly the rows Postgres says their scope holds; a join moves a thread's rows in, a
leave moves them out and nothing of that thread flows afterwards; a sign-out ends the live
request (the next one is a 401); and a write's ``txid`` resolves ``awaitTxId`` in TanStack DB's
electric collection pointed at ``/api/sync/events``.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from syncd.pgprovider import PostgresServer
from tests.e2e.jsclient import ShapeFollower
from tests.e2e.subquery_stream import SubqueryStreamFollower
from tests.e2e.tanstack import CollectionFollower, tanstack_modules_ready
from tests.web.sync_stack import (
    TABLES,
    Person,
    Stack,
    agent_status_table_exists,
    burn_database,
    row_id,
    start_stack,
    visible_ids,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not tanstack_modules_ready(), reason="run `make js` first"),
]

WAIT = 60.0
LONG_POLL_TIMEOUT = 40
SSE_TIMEOUT = 60
"""How long syncd holds a live long-poll and an SSE stream (its default) when nothing ends it."""
Rows = dict[str, dict[str, object]]


@pytest.fixture(scope="module")
def stack(pg_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with burn_database(pg_server) as dsn:
        yield from start_stack(
            dsn, tmp_path_factory.mktemp("sync-js"), webs=1, long_poll_timeout=LONG_POLL_TIMEOUT
        )


def follower(stack: Stack, person: Person, table: str, sse: bool) -> SubqueryStreamFollower:
    return SubqueryStreamFollower(
        stack.url(table), table, where=None, live_sse=sse, headers=person.headers
    )


def ids_of(table: str, rows: Rows) -> set[str]:
    return {row_id(table, row) for row in rows.values()}


async def wait_visible(
    stack: Stack, shape: SubqueryStreamFollower, table: str, user: uuid.UUID
) -> None:
    expected = visible_ids(stack.dsn, TABLES[table], user)
    await shape.wait_for(lambda rows: ids_of(table, rows) == expected, WAIT)


@pytest.mark.parametrize("sse", [False, True], ids=["long-poll", "sse"])
async def test_two_users_each_receive_exactly_their_rows(stack: Stack, sse: bool) -> None:
    alice, bob = stack.sign_up(), stack.sign_up()
    threads = {alice.id: stack.create_thread(alice), bob.id: stack.create_thread(bob)}
    tables = [t for t in TABLES if t != "agent_status" or agent_status_table_exists(stack.dsn)]
    if "agent_status" in tables:
        stack.set_agent_status(threads[bob.id])
    async with contextlib.AsyncExitStack() as exits:
        shapes = {
            (person.id, table): await exits.enter_async_context(follower(stack, person, table, sse))
            for person in (alice, bob)
            for table in tables
        }
        for (user, table), shape in shapes.items():
            await wait_visible(stack, shape, table, user)
        stack.post(alice, threads[alice.id], "alice's")
        stack.post(bob, threads[bob.id], "bob's")
        if "agent_status" in tables:
            stack.set_agent_status(threads[alice.id], "backing_off")
        for (user, table), shape in shapes.items():
            await wait_visible(stack, shape, table, user)
            assert shape.refetches == 0


def thread_row_ids(dsn: str, thread: uuid.UUID) -> set[str]:
    """Ids of everything that belongs to ``thread`` (the thread, its memberships, its events)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id::text FROM events WHERE thread_id = %(t)s"
            " UNION ALL SELECT id::text FROM memberships WHERE thread_id = %(t)s"
            " UNION ALL SELECT %(t)s::text",
            {"t": thread},
        ).fetchall()
    return {row[0] for row in rows}


@pytest.mark.parametrize("sse", [False, True], ids=["long-poll", "sse"])
async def test_join_moves_rows_in_and_leave_moves_them_out(stack: Stack, sse: bool) -> None:
    alice, bob = stack.sign_up(), stack.sign_up()
    alices, bobs = stack.create_thread(alice), stack.create_thread(bob)
    tables = ["threads", "memberships", "events", "users"]
    async with contextlib.AsyncExitStack() as exits:
        shapes = {t: await exits.enter_async_context(follower(stack, bob, t, sse)) for t in tables}
        for table, shape in shapes.items():
            await wait_visible(stack, shape, table, bob.id)
        stack.post(alice, alices, "before bob joins")
        stack.write(bob, f"/api/threads/{alices}/join")
        for table, shape in shapes.items():
            await wait_visible(stack, shape, table, bob.id)
        assert str(alice.id) in ids_of("users", shapes["users"].rows)
        assert str(alices) in ids_of("threads", shapes["threads"].rows)

        stack.write(bob, f"/api/threads/{alices}/leave")
        for table, shape in shapes.items():
            await wait_visible(stack, shape, table, bob.id)
        seen = {table: len(shape.changes) for table, shape in shapes.items()}
        stack.post(alice, alices, "after bob left")
        stack.write(alice, f"/api/threads/{alices}/rename", name="renamed after bob left")
        stack.post(bob, bobs, "marker")  # once it arrived, anything committed before it had
        await wait_visible(stack, shapes["events"], "events", bob.id)
        stack.write(bob, f"/api/threads/{bobs}/rename", name="marker")
        await shapes["threads"].wait_for(
            lambda rows: any(r.get("name") == "marker" for r in rows.values()), WAIT
        )
        of_alices = thread_row_ids(stack.dsn, alices)
        for table, shape in shapes.items():
            later = shape.changes[seen[table] :]
            assert [c for c in later if any(i in c["key"] for i in of_alices)] == []
            assert not ids_of(table, shape.rows) & of_alices
            assert shape.refetches == 0
        assert str(alice.id) not in ids_of("users", shapes["users"].rows)


@pytest.mark.parametrize("sse", [False, True], ids=["long-poll", "sse"])
async def test_sign_out_ends_the_live_request(stack: Stack, sse: bool) -> None:
    alice = stack.sign_up()
    stack.create_thread(alice)
    shape = ShapeFollower(stack.url("events"), "events", live_sse=sse, headers=alice.headers)
    async with shape:
        expected = visible_ids(stack.dsn, TABLES["events"], alice.id)
        await shape.wait_for(lambda rows: ids_of("events", rows) == expected, WAIT)
        signed_out = time.monotonic()
        stack.sign_out(alice)
        error = await shape.wait_for_error(lambda e: e.get("status") == 401, 2 * WAIT)
        assert error["status"] == 401
        # ended by the sign-out, not by syncd ending the live request on its own
        assert time.monotonic() - signed_out < (SSE_TIMEOUT if sse else LONG_POLL_TIMEOUT) - 5


async def test_a_hostile_where_widens_nothing(stack: Stack) -> None:
    alice, bob = stack.sign_up(), stack.sign_up()
    stack.create_thread(alice)
    stack.create_thread(bob)
    shape = SubqueryStreamFollower(
        stack.url("events"),
        "events",
        where="id IS NOT NULL OR true",
        headers=bob.headers,
    )
    async with shape:
        await wait_visible(stack, shape, "events", bob.id)


@pytest.mark.parametrize("sse", [False, True], ids=["long-poll", "sse"])
async def test_a_writes_txid_resolves_await_txid_on_the_events_route(
    stack: Stack, sse: bool
) -> None:
    alice, bob = stack.sign_up(), stack.sign_up()
    thread = stack.create_thread(alice)
    collection = CollectionFollower(
        stack.url("events"), "events", live_sse=sse, headers=alice.headers
    )
    async with collection:
        expected = visible_ids(stack.dsn, TABLES["events"], alice.id)
        await collection.wait_for(lambda rows: set(rows) == expected, WAIT)
        txid = stack.post(alice, thread, "hello")
        assert await collection.await_txid(txid, WAIT)
        txid = stack.write(bob, f"/api/threads/{thread}/join")  # bob's write, alice's thread
        assert await collection.await_txid(txid, WAIT)
        expected = visible_ids(stack.dsn, TABLES["events"], alice.id)
        await collection.wait_for(lambda rows: set(rows) == expected, WAIT)
