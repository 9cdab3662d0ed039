"""Shape routes backed by a syncd embedded in the same process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import psycopg
from psycopg.conninfo import conninfo_to_dict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from syncd.embed import EmbeddedSyncd
from syncd.routes import ShapeRoutes, ShapeScope


async def authorize(request: Request) -> ShapeScope | Response:
    scheme, _, user = request.headers.get("authorization", "").partition(" ")
    if scheme != "Bearer" or not user:
        return Response('{"message":"Unauthorized"}', status_code=401)
    return ShapeScope(where="owner = $1", params=[user], key=user)


async def test_routes_served_by_the_embedded_engine(pg_dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, owner text, title text)")
        conn.execute("INSERT INTO items VALUES (1, 'alice', 'a'), (2, 'bob', 'b')")
    slot = f"embedded_{conninfo_to_dict(pg_dsn)['dbname']}"
    async with EmbeddedSyncd(
        pg_dsn, tmp_path / "storage", slot=slot, long_poll_timeout=5
    ) as embedded:
        routes = ShapeRoutes.in_process(embedded)
        app = Starlette(routes=[routes.route("/items", table="items", authorize=authorize)])
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            assert (await client.get("/items", params={"offset": "-1"})).status_code == 401
            alice = {"authorization": "Bearer alice"}
            first = await client.get(
                "/items", params={"offset": "-1", "where": "true"}, headers=alice
            )
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
        await routes.aclose()
