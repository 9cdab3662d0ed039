"""Shape routes backed by a syncd embedded in the same process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psycopg
from psycopg.conninfo import conninfo_to_dict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from shapes.client import ShapeDefinition, ShapeStream
from syncd.asgi_transport import StreamingASGITransport
from syncd.embed import EmbeddedSyncd
from syncd.routes import ShapeRoutes, ShapeScope


async def authorize(request: Request) -> ShapeScope | Response:
    scheme, _, user = request.headers.get("authorization", "").partition(" ")
    if scheme != "Bearer" or not user:
        return Response('{"message":"Unauthorized"}', status_code=401)
    return ShapeScope(where="owner = $1", params=[user], key=user)


@contextlib.asynccontextmanager
async def app_client(pg_dsn: str, storage: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app serving ``/items`` (alice and bob's rows) from an embedded syncd."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, owner text, title text)")
        conn.execute("INSERT INTO items VALUES (1, 'alice', 'a'), (2, 'bob', 'b')")
    slot = f"embedded_{conninfo_to_dict(pg_dsn)['dbname']}"
    async with EmbeddedSyncd(pg_dsn, storage, slot=slot, long_poll_timeout=5) as embedded:
        routes = ShapeRoutes.in_process(embedded)
        app = Starlette(routes=[routes.route("/items", table="items", authorize=authorize)])
        transport = StreamingASGITransport(app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                yield client
        finally:
            await routes.aclose()


async def test_routes_served_by_the_embedded_engine(pg_dsn: str, tmp_path: Path) -> None:
    async with app_client(pg_dsn, tmp_path / "storage") as client:
        assert (await client.get("/items", params={"offset": "-1"})).status_code == 401
        alice = {"authorization": "Bearer alice"}
        first = await client.get("/items", params={"offset": "-1", "where": "true"}, headers=alice)
        assert first.status_code == 200, first.text
        assert [m["value"]["id"] for m in first.json() if "key" in m] == ["1"]
        handle = first.headers["electric-handle"]
        caught_up = await client.get(
            "/items", params={"offset": "0_0", "handle": handle, "where": "true"}, headers=alice
        )
        assert caught_up.status_code == 200, (caught_up.status_code, caught_up.text)
        live = asyncio.create_task(
            client.get(
                "/items",
                params={
                    "offset": caught_up.headers["electric-offset"],
                    "handle": handle,
                    "where": "true",
                    "live": "true",
                    "cursor": "",
                },
                headers=alice,
            )
        )
        await asyncio.sleep(0.3)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO items VALUES (3, 'alice', 'c'), (4, 'bob', 'd')")
        answer = await asyncio.wait_for(live, 15)
        assert [m["value"]["id"] for m in answer.json() if "key" in m] == ["3"]


async def test_sse_through_a_route_of_the_embedded_engine(pg_dsn: str, tmp_path: Path) -> None:
    async with app_client(pg_dsn, tmp_path / "storage") as client:
        urls: list[str] = []

        async def record(request: httpx.Request) -> None:
            urls.append(str(request.url))

        client.event_hooks = {"request": [record], "response": []}
        stream = ShapeStream(
            "http://app/items",
            ShapeDefinition.of("items", where="id > 0"),
            live_mode="sse",
            headers={"authorization": "Bearer alice"},
            client=client,
        )
        batches = aiter(stream)
        first = await asyncio.wait_for(anext(batches), 15)
        assert [m["value"]["id"] for m in first if "key" in m] == [1]
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO items VALUES (5, 'bob', 'e')")
            conn.execute("INSERT INTO items VALUES (6, 'alice', 'f')")
        seen: list[int] = []
        while 6 not in seen:
            batch = await asyncio.wait_for(anext(batches), 15)
            seen += [m["value"]["id"] for m in batch if "key" in m]
        assert seen == [6]
        assert "live_sse=true" in urls[-1]
