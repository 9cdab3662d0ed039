"""Shape routes in an application's own Starlette app (``syncd.routes``), proxied to a syncd.

The app authenticates with ``Authorization: Bearer <user>`` and lets each user see the rows of
``items`` they own; the upstream is a real syncd daemon on the test's database.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from shapes.messages import relation_key_prefix, row_key
from syncd.routes import (
    Mutation,
    ShapeRoutes,
    ShapeScope,
    apply_mutations,
    renumber_where,
    upstream_query,
)
from tests.e2e.jsclient import ShapeFollower
from tests.e2e.node_process import Rows
from tests.e2e.support import needs_js_client, syncd_fixture
from tests.syncd_process import SyncdProcess, free_port

ROWS = [(1, "alice", "a1"), (2, "alice", "a2"), (3, "bob", "b1"), (4, "carol", "c1")]


def create_items(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, owner text, title text)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO items VALUES (%s, %s, %s)", ROWS)


syncd = syncd_fixture(create_items, long_poll_timeout=5)


async def authorize(request: Request) -> ShapeScope | Response:
    scheme, _, user = request.headers.get("authorization", "").partition(" ")
    if scheme != "Bearer" or not user:
        return Response('{"message":"Unauthorized"}', status_code=401)
    return ShapeScope(where="owner = $1", params=[user], columns=["id", "owner", "title"], key=user)


@dataclass
class App:
    url: str
    routes: ShapeRoutes

    @property
    def shape_url(self) -> str:
        return self.url + "/api/items"


@pytest.fixture
async def app(syncd: SyncdProcess) -> AsyncIterator[App]:
    routes = ShapeRoutes(syncd.url)
    starlette = Starlette(routes=[routes.route("/api/items", table="items", authorize=authorize)])
    port = free_port()
    config = uvicorn.Config(
        starlette,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.02)
    yield App(f"http://127.0.0.1:{port}", routes)
    server.should_exit = True
    await task
    await routes.aclose()


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {user}"}


def changes(body: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in body if "operation" in m["headers"]]


def owned(dsn: str, owner: str, where: str = "true") -> Rows:
    prefix = relation_key_prefix("public", "items")
    query = "SELECT id, owner, title FROM items WHERE owner = %s AND " + where
    with psycopg.connect(dsn) as conn:
        return {
            row_key(prefix, {"id": str(id_)}, ("id",)): {"id": id_, "owner": o, "title": t}
            for id_, o, t in conn.execute(query, (owner,))
        }


async def snapshot(client: httpx.AsyncClient, url: str, user: str, **params: str) -> Any:
    answer = await client.get(url, params={"offset": "-1", **params}, headers=bearer(user))
    assert answer.status_code == 200, answer.text
    return answer


async def catch_up(client: httpx.AsyncClient, url: str, user: str) -> tuple[str, str]:
    """Handle and offset once up to date."""
    answer = await snapshot(client, url, user)
    while "electric-up-to-date" not in answer.headers:
        params = {"handle": answer.headers["electric-handle"]}
        params["offset"] = answer.headers["electric-offset"]
        answer = await client.get(url, params=params, headers=bearer(user))
        assert answer.status_code == 200, answer.text
    return answer.headers["electric-handle"], answer.headers["electric-offset"]


def test_client_where_is_renumbered_and_wrapped() -> None:
    scope = ShapeScope(where="owner = $1", params=["bob"])
    items = [
        ("where", "title <> '$1' OR id = $1"),
        ("params[1]", "5"),
        ("table", "other"),
        ("offset", "-1"),
    ]
    query = dict(upstream_query(items, "items", scope))
    assert query["table"] == "items"
    assert query["where"] == "(owner = $1)\nAND (title <> '$1' OR id = $2\n)"
    assert (query["params[1]"], query["params[2]"]) == ("bob", "5")


def test_renumbering_counts_characters_not_bytes() -> None:
    assert renumber_where("title = 'éé' OR id = $1 OR n = $2", 1) == (
        "title = 'éé' OR id = $2 OR n = $3"
    )
    assert renumber_where('"𝒳" = $1', 2) == '"𝒳" = $3'


async def test_anonymous_is_refused(app: App) -> None:
    async with httpx.AsyncClient() as client:
        answer = await client.get(app.shape_url, params={"offset": "-1"})
        assert answer.status_code == 401
        wrong = await client.get(app.shape_url, params={"offset": "-1"}, headers={"x": "y"})
        assert wrong.status_code == 401
        preflight = await client.options(app.shape_url)
        assert preflight.status_code == 204


@pytest.mark.parametrize(
    "where", [None, "true", "owner <> 'x'", "owner = 'bob' OR true", "1 = 1 -- comment"]
)
async def test_user_sees_only_own_rows(app: App, where: str | None) -> None:
    params = {} if where is None else {"where": where}
    async with httpx.AsyncClient() as client:
        answer = await snapshot(client, app.shape_url, "alice", table="bob_table", **params)
    for name in ("electric-handle", "electric-offset", "electric-schema", "cache-control"):
        assert name in answer.headers
    assert answer.headers["content-type"].startswith("application/json")
    rows = [m["value"] for m in changes(answer.json())]
    assert sorted(r["id"] for r in rows) == ["1", "2"]
    assert {r["owner"] for r in rows} == {"alice"}


@pytest.mark.parametrize(
    "where",
    [
        "true) OR (true",
        "owner = 'x')",
        "'unterminated",
        "1 /*",
        "id IN (SELECT id FROM items)",
        "title = 'a' OR EXISTS (VALUES (1))",
        "title = 'é' OR 1=1) OR (1=1",
    ],
)
async def test_escaping_the_and_is_rejected(app: App, where: str) -> None:
    async with httpx.AsyncClient() as client:
        answer = await client.get(
            app.shape_url, params={"offset": "-1", "where": where}, headers=bearer("alice")
        )
    assert answer.status_code == 400
    body = answer.json()
    assert body["message"] == "Invalid request" and "where" in body["errors"]


async def test_client_params_and_columns_narrow(app: App) -> None:
    async with httpx.AsyncClient() as client:
        answer = await snapshot(
            client,
            app.shape_url,
            "alice",
            where="title = $1",
            **{"params[1]": "a2", "columns": "id,title"},
        )
        assert [m["value"] for m in changes(answer.json())] == [{"id": "2", "title": "a2"}]
        refused = await client.get(
            app.shape_url,
            params={"offset": "-1", "columns": "id,secret"},
            headers=bearer("alice"),
        )
        assert refused.status_code == 400
        assert refused.json() == {
            "message": "Invalid request",
            "errors": {"columns": ["The following columns are not allowed: secret"]},
        }


async def test_upstream_errors_pass_through(app: App) -> None:
    async with httpx.AsyncClient() as client:
        answer = await client.get(
            app.shape_url,
            params={"offset": "0_inf", "handle": "nope"},
            headers=bearer("alice"),
        )
    assert answer.status_code == 409
    assert answer.json() == [{"headers": {"control": "must-refetch"}}]
    assert "electric-handle" in answer.headers


@needs_js_client
@pytest.mark.e2e
@pytest.mark.parametrize("live_sse", [False, True], ids=["long-poll", "sse"])
async def test_official_client_syncs_through_the_route(
    app: App, pg_dsn: str, live_sse: bool
) -> None:
    where = "title <> 'hidden'"
    async with ShapeFollower(
        app.shape_url,
        "items",
        where="title <> $1",
        params={"1": "hidden"},
        live_sse=live_sse,
        headers=bearer("alice"),
    ) as follower:
        await follower.wait_for_rows(owned(pg_dsn, "alice", where), timeout=60)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO items VALUES (10, 'alice', 'new'), (11, 'bob', 'x'),"
                " (12, 'alice', 'hidden')"
            )
            conn.execute("UPDATE items SET title = 'changed' WHERE id = 1")
            conn.execute("DELETE FROM items WHERE id = 2")
        expected = owned(pg_dsn, "alice", where)
        assert sorted(row["id"] for row in expected.values()) == [1, 10]
        await follower.wait_for_rows(expected, timeout=60)
        assert not follower.fatal_errors


async def test_more_live_requests_than_a_default_pool_are_all_held_at_once(app: App) -> None:
    count = 130  # httpx's default pool allows 100 connections
    limits = httpx.Limits(max_connections=None)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        handle, offset = await catch_up(client, app.shape_url, "alice")
        params = {"handle": handle, "offset": offset, "live": "true", "cursor": ""}
        started = time.monotonic()
        polls = [
            asyncio.create_task(client.get(app.shape_url, params=params, headers=bearer("alice")))
            for _ in range(count)
        ]
        answers = await asyncio.gather(*polls)
        elapsed = time.monotonic() - started
    assert [a.status_code for a in answers] == [200] * count
    assert all(a.json()[-1]["headers"]["control"] == "up-to-date" for a in answers)
    # One 5 s hold for all: requests queued behind a full pool would need a second one.
    assert elapsed < 8.5, elapsed


async def test_cut_off_ends_a_long_poll_with_409(app: App) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        handle, offset = await catch_up(client, app.shape_url, "alice")
        params = {"handle": handle, "offset": offset, "live": "true", "cursor": ""}
        poll = asyncio.create_task(
            client.get(app.shape_url, params=params, headers=bearer("alice"))
        )
        await wait_until(lambda: app.routes.live_requests("alice") == 1)
        assert app.routes.cut_off("bob") == 0
        assert app.routes.cut_off("alice") == 1
        answer = await asyncio.wait_for(poll, 2)
        assert answer.status_code == 409
        assert answer.json() == [{"headers": {"control": "must-refetch"}}]
        assert app.routes.live_requests("alice") == 0


async def test_cut_off_ends_an_sse_stream(app: App) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        handle, offset = await catch_up(client, app.shape_url, "alice")
        params = {"handle": handle, "offset": offset, "live": "true", "live_sse": "true"}
        async with client.stream(
            "GET", app.shape_url, params=params, headers=bearer("alice")
        ) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            assert app.routes.live_requests("alice") == 1
            assert app.routes.cut_off("alice") == 1
            body = await asyncio.wait_for(stream.aread(), 2)
        assert body == b""
        await wait_until(lambda: app.routes.live_requests("alice") == 0)


@pytest.mark.parametrize("live_sse", [False, True], ids=["long-poll", "sse"])
async def test_client_leaving_closes_the_upstream_request(app: App, live_sse: bool) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        handle, offset = await catch_up(client, app.shape_url, "alice")
        params = {"handle": handle, "offset": offset, "live": "true", "cursor": ""}
        if live_sse:
            params["live_sse"] = "true"
        request = client.get(app.shape_url, params=params, headers=bearer("alice"))
        poll = asyncio.create_task(request)
        await wait_until(lambda: app.routes.live_requests("alice") == 1)
        poll.cancel()
        with pytest.raises(asyncio.CancelledError):
            await poll
    await wait_until(lambda: app.routes.live_requests("alice") == 0, timeout=2)


async def test_apply_mutations_txid_is_in_the_change(app: App, pg_dsn: str) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        handle, offset = await catch_up(client, app.shape_url, "alice")
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            txid = await apply_mutations(
                conn,
                [
                    Mutation("insert", "items", {"id": 20, "owner": "alice", "title": "t"}),
                    Mutation("update", "items", {"title": "u"}, key={"id": 1}),
                    Mutation("delete", "public.items", key={"id": 2}),
                ],
            )
        assert isinstance(txid, int) and txid > 0
        seen: list[dict[str, Any]] = []
        while len(seen) < 3:
            params = {"handle": handle, "offset": offset, "live": "true", "cursor": ""}
            answer = await client.get(app.shape_url, params=params, headers=bearer("alice"))
            assert answer.status_code == 200, answer.text
            offset = answer.headers["electric-offset"]
            seen.extend(changes(answer.json()))
    assert [m["headers"]["operation"] for m in seen] == ["insert", "update", "delete"]
    assert all(m["headers"]["txids"] == [txid] for m in seen)


async def wait_until(condition: Any, timeout: float = 5.0) -> None:  # noqa: ASYNC109
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.02)
