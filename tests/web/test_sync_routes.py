"""The per-user sync routes with the Python client, long-poll and SSE, through real syncd and
web app processes: each user receives exactly the rows Postgres says their scope holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from shapes.client import Shape, ShapeDefinition, ShapeStream
from shapes.client.stream import ShapeRequestError
from syncd.pgprovider import PostgresServer
from web.sync import LISTENER_NAME

from .sync_stack import (
    TABLES,
    Person,
    Stack,
    agent_status_table_exists,
    burn_database,
    row_id,
    start_stack,
    visible_ids,
)

LiveMode = str
MODES = ["long-poll", "sse"]
WAIT = 60.0
SSE_TIMEOUT = 60
"""How long syncd holds an SSE stream (its default) when nothing ends it."""


@pytest.fixture(scope="module")
def stack(pg_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One database, syncd and two web processes for the module: every test signs up its own
    users and makes its own threads, and each user's oracle is their own scope."""
    with burn_database(pg_server) as dsn:
        yield from start_stack(dsn, tmp_path_factory.mktemp("sync"), webs=2, long_poll_timeout=40)


def sync_tables(dsn: str) -> list[str]:
    return [t for t in TABLES if t != "agent_status" or agent_status_table_exists(dsn)]


@contextlib.asynccontextmanager
async def following(
    stack: Stack, person: Person, table: str, mode: LiveMode, **shape: Any
) -> AsyncIterator[Shape]:
    stream = ShapeStream(
        stack.url(table),
        ShapeDefinition.of(table, **shape),
        headers=person.headers,
        live_mode="sse" if mode == "sse" else "long-poll",
    )
    async with Shape(stream) as followed:
        await followed.wait_until_up_to_date(WAIT)
        yield followed


def ids(table: str, shape: Shape) -> set[str]:
    return {row_id(table, row) for row in shape.rows.values()}


async def wait_ids(shape: Shape, table: str, expected: set[str]) -> None:
    """Wait until ``shape`` holds exactly the rows ``expected``."""
    done = asyncio.Event()

    def check(_batch: object = None) -> None:
        if ids(table, shape) == expected:
            done.set()

    unsubscribe = shape.subscribe(check)
    try:
        check()
        try:
            await asyncio.wait_for(done.wait(), WAIT)
        except TimeoutError:
            raise AssertionError(f"{table}: {ids(table, shape)} != {expected}") from None
    finally:
        unsubscribe()


@pytest.mark.parametrize("mode", MODES)
async def test_two_users_each_receive_exactly_their_rows_on_every_route(
    stack: Stack, mode: LiveMode
) -> None:
    alice, bob = stack.sign_up(), stack.sign_up()
    threads = {alice.id: stack.create_thread(alice), bob.id: stack.create_thread(bob)}
    tables = sync_tables(stack.dsn)
    if "agent_status" in tables:
        stack.set_agent_status(threads[alice.id])
    async with contextlib.AsyncExitStack() as stack_of_shapes:
        shapes = {
            (person.id, table): await stack_of_shapes.enter_async_context(
                following(stack, person, table, mode)
            )
            for person in (alice, bob)
            for table in tables
        }
        for (user, table), shape in shapes.items():
            assert ids(table, shape) == visible_ids(stack.dsn, TABLES[table], user)
        # live changes: each reaches its thread's members only
        stack.post(alice, threads[alice.id], "only for alice's thread")
        stack.post(bob, threads[bob.id], "only for bob's thread")
        if "agent_status" in tables:
            stack.set_agent_status(threads[bob.id], "backing_off")
        for (user, table), shape in shapes.items():
            await wait_ids(shape, table, visible_ids(stack.dsn, TABLES[table], user))
        for (user, _table), shape in shapes.items():
            for row in shape.rows.values():
                thread = row.get("thread_id", row.get("id"))
                if _table in ("threads", "memberships", "events", "facts", "agent_status"):
                    assert thread == threads[user] or str(thread) == str(threads[user])


@pytest.mark.parametrize("mode", MODES)
async def test_a_join_moves_a_thread_in_and_a_leave_moves_it_out(
    stack: Stack, mode: LiveMode
) -> None:
    alice, bob = stack.sign_up(), stack.sign_up()
    alices, bobs = stack.create_thread(alice), stack.create_thread(bob)
    tables = ["threads", "memberships", "events", "users"]
    async with contextlib.AsyncExitStack() as exits:
        shapes = {
            t: await exits.enter_async_context(following(stack, bob, t, mode)) for t in tables
        }
        flowed: list[dict[str, Any]] = []
        stack.post(alice, alices, "before bob joins")
        stack.write(bob, f"/api/threads/{alices}/join")
        for table, shape in shapes.items():
            await wait_ids(shape, table, visible_ids(stack.dsn, TABLES[table], bob.id))
        assert str(alices) in ids("threads", shapes["threads"])
        assert str(alice.id) in {row["id"] for row in shapes["users"].rows.values()}
        texts = {row["data"].get("text") for row in shapes["events"].rows.values()}
        assert "before bob joins" in texts

        stack.write(bob, f"/api/threads/{alices}/leave")
        for table, shape in shapes.items():
            await wait_ids(shape, table, visible_ids(stack.dsn, TABLES[table], bob.id))
        unsubscribe = [
            shape.subscribe(lambda batch: flowed.extend(batch)) for shape in shapes.values()
        ]
        stack.post(alice, alices, "after bob left")
        stack.write(alice, f"/api/threads/{alices}/rename", name="renamed after bob left")
        # a later change of bob's own thread: once it arrived, anything before it had too
        stack.post(bob, bobs, "marker")
        await wait_ids(shapes["events"], "events", visible_ids(stack.dsn, TABLES["events"], bob.id))
        for stop in unsubscribe:
            stop()
        leaked = [m for m in flowed if str(alices) in str(m.get("value", ""))]
        assert leaked == []
        assert all(str(alices) not in str(row) for s in shapes.values() for row in s.rows.values())
        assert str(alice.id) not in {row["id"] for row in shapes["users"].rows.values()}


async def live_request(
    stack: Stack, person: Person, web: int, sse: bool, going_live: asyncio.Event
) -> httpx.Response:
    """Catch up on ``events`` through web process ``web``, then make a live request and read
    its answer (for SSE: until the stream ends); ``going_live`` is set as it is sent."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=120.0)) as client:
        url = stack.url("events", web)
        query: dict[str, str] = {"offset": "-1"}
        while True:
            answer = await client.get(url, params=query, headers=person.headers)
            assert answer.status_code == 200, answer.text
            query = {
                "offset": answer.headers["electric-offset"],
                "handle": answer.headers["electric-handle"],
            }
            if "electric-up-to-date" in answer.headers:
                break
        query.update(live="true", cursor=answer.headers.get("electric-cursor", ""))
        if sse:
            query["live_sse"] = "true"
        request = client.build_request("GET", url, params=query, headers=person.headers)
        going_live.set()
        response = await client.send(request, stream=True)
        await response.aread()
        return response


@pytest.mark.parametrize("sse", [False, True], ids=["long-poll", "sse"])
@pytest.mark.parametrize("where", [0, 1], ids=["same-process", "other-process"])
async def test_sign_out_ends_the_sessions_live_requests(
    stack: Stack, sse: bool, where: int
) -> None:
    alice = stack.sign_up()
    stack.create_thread(alice)
    started = time.monotonic()
    going_live = asyncio.Event()
    request = asyncio.create_task(live_request(stack, alice, 0, sse, going_live))
    await asyncio.wait_for(going_live.wait(), WAIT)
    await asyncio.sleep(0.2)  # most likely in flight by now; one that is not is cut off later
    await asyncio.to_thread(stack.sign_out, alice, where)
    answer = await asyncio.wait_for(request, 2 * WAIT)
    # a long-poll that ran out would be a 200 up-to-date or 204; a cut one is a 409 (or, if it
    # arrived after the sign-out, a 401); an SSE stream simply ends
    if not sse:
        assert answer.status_code in (401, 409), answer.text
    else:  # syncd would have held the stream for SSE_TIMEOUT seconds
        assert time.monotonic() - started < SSE_TIMEOUT - 5
    async with httpx.AsyncClient() as client:
        again = await client.get(
            stack.url("events"), params={"offset": "-1"}, headers=alice.headers
        )
    assert again.status_code == 401


async def test_the_python_clients_shape_stops_with_a_401_after_sign_out(stack: Stack) -> None:
    alice = stack.sign_up()
    stack.create_thread(alice)
    async with following(stack, alice, "events", "sse") as shape:
        stopped = asyncio.Event()
        shape.subscribe(lambda _b: None)
        await asyncio.to_thread(stack.sign_out, alice, 1)
        for _ in range(int(WAIT * 10)):
            if not shape.is_running:
                stopped.set()
                break
            await asyncio.sleep(0.1)
        assert stopped.is_set()
        assert isinstance(shape.error, ShapeRequestError)
        assert shape.error.status == 401


def test_requests_without_a_valid_session_are_401(stack: Stack) -> None:
    alice = stack.sign_up()
    for table in TABLES:
        for headers in ({}, {"authorization": "Bearer forged"}, {"cookie": "burn_session=x"}):
            answer = httpx.get(stack.url(table), params={"offset": "-1"}, headers=headers)
            assert answer.status_code == 401, (table, headers)
            assert answer.json()["message"]
    cookie = httpx.get(
        stack.url("threads"), params={"offset": "-1"}, cookies={"burn_session": alice.token}
    )
    assert cookie.status_code == 200
    assert "private" in cookie.headers["cache-control"]


def test_the_sync_token_reads_the_sync_routes_only_and_ends_with_the_session(
    stack: Stack,
) -> None:
    answer = stack.http.post(
        stack.web.url + "/api/auth/sign-up",
        json={"name": "s" + uuid.uuid4().hex[:8], "password": "correct horse"},
    )
    stack.http.cookies.clear()
    session = answer.json()
    sync = {"authorization": f"Bearer {session['sync_token']}"}
    me = stack.http.get(
        stack.web.url + "/api/auth/me", headers={"authorization": f"Bearer {session['token']}"}
    )
    assert me.json()["sync_token"] == session["sync_token"]
    for table in TABLES:
        read = httpx.get(stack.url(table), params={"offset": "-1"}, headers=sync)
        assert read.status_code == 200, (table, read.text)
    # not a session token: no writes, no account
    write = httpx.post(
        stack.web.url + "/api/threads", json={"id": str(uuid.uuid4()), "name": "x"}, headers=sync
    )
    assert write.status_code == 401
    assert httpx.get(stack.web.url + "/api/auth/me", headers=sync).status_code == 401
    stack.http.post(
        stack.web.url + "/api/auth/sign-out",
        headers={"authorization": f"Bearer {session['token']}"},
    )
    after = httpx.get(stack.url("threads"), params={"offset": "-1"}, headers=sync)
    assert after.status_code == 401


HOSTILE_WHERES = [
    "true) OR (true",
    "id IS NOT NULL OR true",
    "true OR $1 = $1",
    "thread_id IN (SELECT thread_id FROM memberships)",
    "1 = 1 --",
    "user_id = $1",
]


@pytest.mark.parametrize("where", HOSTILE_WHERES)
async def test_a_hostile_where_widens_nothing(stack: Stack, where: str) -> None:
    alice, bob = stack.sign_up(), stack.sign_up()
    stack.create_thread(alice)
    stack.create_thread(bob)
    async with httpx.AsyncClient(timeout=30.0) as client:
        for table in ("memberships", "events", "users"):
            params = {"offset": "-1", "where": where, "params[1]": str(alice.id)}
            params |= {"table": "memberships", "columns": "id"} if table == "users" else {}
            answer = await client.get(stack.url(table), params=params, headers=bob.headers)
            assert answer.status_code in (200, 400), answer.text
            if answer.status_code == 400:
                assert "message" in answer.json() or "errors" in answer.json()
                continue
            rows = [m["value"] for m in answer.json() if "value" in m]
            allowed = visible_ids(stack.dsn, TABLES[table], bob.id)
            assert {row_id(table, r) for r in rows} <= allowed
            assert str(alice.id) not in {r.get("id") for r in rows} or table != "users"


async def test_users_show_only_public_columns(stack: Stack) -> None:
    alice = stack.sign_up()
    stack.create_thread(alice)
    async with httpx.AsyncClient(timeout=30.0) as client:
        answer = await client.get(
            stack.url("users"), params={"offset": "-1"}, headers=alice.headers
        )
        assert answer.status_code == 200
        columns = {c for m in answer.json() if "value" in m for c in m["value"]}
        assert columns == set(TABLES["users"].columns or ())
        for hidden in ("password_hash", "hash", "token"):
            answer = await client.get(
                stack.url("users"),
                params={"offset": "-1", "columns": f"id,{hidden}"},
                headers=alice.headers,
            )
            assert answer.status_code == 400


def test_session_keys_are_per_session(stack: Stack) -> None:
    """Two sessions of one user: signing one out leaves the other's requests working."""
    alice = stack.sign_up()
    answer = stack.http.post(
        stack.web.url + "/api/auth/sign-in", json={"name": alice.name, "password": "correct horse"}
    )
    assert answer.status_code == 200
    second = Person(alice.id, alice.name, answer.json()["token"])
    stack.http.cookies.clear()
    stack.sign_out(alice)
    ok = httpx.get(stack.url("threads"), params={"offset": "-1"}, headers=second.headers)
    assert ok.status_code == 200
    assert uuid.UUID(str(second.id)) == alice.id


async def test_sign_out_cuts_off_after_the_listen_connection_was_dropped(stack: Stack) -> None:
    """A sign-out announced while a process's LISTEN connection is down is not lost: after
    reconnecting, the process checks its live sessions and cuts the revoked ones off."""
    alice = stack.sign_up()
    stack.create_thread(alice)
    going_live = asyncio.Event()
    request = asyncio.create_task(live_request(stack, alice, 0, False, going_live))
    await asyncio.wait_for(going_live.wait(), WAIT)
    await asyncio.sleep(0.2)
    stack.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = %s AND datname = current_database()",
        LISTENER_NAME,
    )
    await asyncio.to_thread(stack.sign_out, alice, 1)
    answer = await asyncio.wait_for(request, 2 * WAIT)
    assert answer.status_code in (401, 409), answer.text
    # the session was remembered as valid in process 0; it is not trusted after the reconnect
    async with httpx.AsyncClient() as client:
        again = await client.get(
            stack.url("events"), params={"offset": "-1"}, headers=alice.headers
        )
    assert again.status_code == 401
