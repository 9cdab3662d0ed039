"""syncd behind nginx, configured with the operator's ``deploy/nginx/syncd.conf``: ten thousand
clients on one shape cost syncd about one request per change, every client still converges to
``SELECT``, and per-user route answers are never served from the cache to another user.

nginx is Debian's package (``make nginx`` installs it; ``make test`` does so first).
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from bench.cache_fanout import (
    CacheFollower,
    all_at,
    start_followers,
    syncd_shape_requests,
    wait_for,
)
from bench.children import cancel_tasks
from bench.nginx import NginxProcess
from shapes.messages import relation_key_prefix, row_key
from syncd.daemon import raise_open_file_limit
from syncd.routes import ShapeRoutes, ShapeScope
from tests.syncd_process import SyncdProcess, free_port

pytestmark = pytest.mark.timeout(600)

CLIENTS = int(os.environ.get("NGINX_CACHE_CLIENTS", "10000"))
CHANGES = 5
LONG_POLL = 20.0


def table_rows(dsn: str) -> dict[str, dict[str, Any]]:
    """The rows of ``items`` as a client holds them: by key, every value as text."""
    prefix = relation_key_prefix("public", "items")
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id::text, title FROM items").fetchall()
    return {row_key(prefix, {"id": i}, ["id"]): {"id": i, "title": title} for i, title in rows}


@pytest.fixture
def syncd(pg_dsn: str, tmp_path: Path) -> Iterator[SyncdProcess]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, title text)")
        conn.execute("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 50) g")
    daemon = SyncdProcess(pg_dsn, tmp_path / "storage", long_poll_timeout=LONG_POLL)
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture
def nginx_for_syncd(syncd: SyncdProcess, tmp_path: Path) -> Iterator[NginxProcess]:
    nginx = NginxProcess(tmp_path / "nginx", f"127.0.0.1:{syncd.port}")
    nginx.start()
    yield nginx
    nginx.stop()


def change(dsn: str, k: int) -> None:
    """One transaction: an insert (row ``1000 + k``), an update and a delete."""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute("INSERT INTO items VALUES (%s, %s)", (1000 + k, f"new {k}"))
        conn.execute("UPDATE items SET title = %s WHERE id = %s", (f"changed {k}", k + 1))
        conn.execute("DELETE FROM items WHERE id = %s", (40 + k,))


def test_ten_thousand_clients_cost_syncd_about_one_request_per_change(
    syncd: SyncdProcess, nginx_for_syncd: NginxProcess, pg_dsn: str
) -> None:
    raise_open_file_limit()
    shape_url = nginx_for_syncd.url + "/v1/shape"
    followers = [CacheFollower(shape_url, {"table": "items"}) for _ in range(CLIENTS)]

    async def scenario() -> tuple[float, float, float]:
        tasks = await start_followers(followers)
        try:
            await wait_for(lambda: all(f.live for f in followers), tasks, 240, "every catch-up")
            before = syncd_shape_requests(syncd.url)
            started = time.monotonic()
            for k in range(CHANGES):
                await asyncio.to_thread(change, pg_dsn, k)
                await wait_for(all_at(followers, 1000 + k), tasks, 120, f"change {k}")
            elapsed = time.monotonic() - started
            return before, syncd_shape_requests(syncd.url), elapsed
        finally:
            await cancel_tasks(tasks)

    before, after, elapsed = asyncio.run(scenario())
    expected = table_rows(pg_dsn)
    assert len(expected) == 50
    diverged = [i for i, f in enumerate(followers) if f.rows != expected]
    assert not diverged, f"{len(diverged)} clients differ from SELECT, e.g. #{diverged[0]}"
    # Each change answers the held live request; the clients then ask for the next position
    # together, which is one upstream request again (and one per long-poll cycle). nginx lets
    # one request in 1,024 for a key being filled through to syncd (its use counter has ten
    # bits), so ten thousand clients cost about ten requests per change, not ten thousand.
    cycles = CHANGES + math.ceil(elapsed / LONG_POLL)
    per_cycle = 2 + CLIENTS / 1024
    requests = after - before
    assert requests <= cycles * per_cycle, (requests, cycles, elapsed)
    hits = sum(f.cache_status.get("HIT", 0) for f in followers)
    misses = sum(f.cache_status.get("MISS", 0) for f in followers)
    assert hits >= CLIENTS * CHANGES
    assert misses <= (cycles + 3) * per_cycle, misses
    assert sum(f.refetches for f in followers) == 0


# -- per-user routes: private answers ------------------------------------------------------------

USERS_ROWS = [(1, "alice", "a1"), (2, "alice", "a2"), (3, "bob", "b1")]


async def authorize(request: Request) -> ShapeScope | Response:
    scheme, _, user = request.headers.get("authorization", "").partition(" ")
    if scheme != "Bearer" or not user:
        return Response('{"message":"Unauthorized"}', status_code=401)
    return ShapeScope(where="owner = $1", params=[user], key=user)


@pytest.fixture
def owned_syncd(pg_dsn: str, tmp_path: Path) -> Iterator[SyncdProcess]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, owner text, title text)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO items VALUES (%s, %s, %s)", USERS_ROWS)
    daemon = SyncdProcess(pg_dsn, tmp_path / "storage", long_poll_timeout=2)
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture
async def routes_app(owned_syncd: SyncdProcess) -> AsyncIterator[str]:
    """An application whose ``/v1/shape`` is a per-user shape route (``syncd.routes``)."""
    routes = ShapeRoutes(owned_syncd.url)
    app = Starlette(routes=[routes.route("/v1/shape", table="items", authorize=authorize)])
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        assert not serving.done(), "uvicorn did not start"
        await asyncio.sleep(0.02)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving
        await routes.aclose()


async def test_per_user_route_answers_are_never_served_to_another_user(
    routes_app: str, tmp_path: Path
) -> None:
    nginx = NginxProcess(tmp_path / "nginx", routes_app)
    nginx.start()
    try:
        async with httpx.AsyncClient(base_url=nginx.url, timeout=30) as client:
            keys: dict[str, set[str]] = {}
            handles: dict[str, str] = {}
            for _ in range(2):  # the second round would be a hit if anything were cached
                for user in ("alice", "bob"):
                    answer = await client.get(
                        "/v1/shape",
                        params={"table": "items", "offset": "-1"},
                        headers={"authorization": f"Bearer {user}"},
                    )
                    assert answer.status_code == 200
                    assert answer.headers["cache-control"].startswith("private")
                    assert answer.headers["x-cache-status"] != "HIT"
                    seen = {m["value"]["owner"] for m in answer.json() if "value" in m}
                    assert seen == {user}
                    keys.setdefault(user, set()).update(
                        m["key"] for m in answer.json() if "key" in m
                    )
                    handles[user] = answer.headers["electric-handle"]
            # bob asking with alice's handle and offset gets nothing of alice's
            answer = await client.get(
                "/v1/shape",
                params={"table": "items", "offset": "-1", "handle": handles["alice"]},
                headers={"authorization": "Bearer bob"},
            )
            assert answer.headers.get("x-cache-status") != "HIT"
            assert not keys["alice"] & {m.get("key") for m in answer.json() if isinstance(m, dict)}
        assert len(keys["alice"]) == 2 and len(keys["bob"]) == 1
    finally:
        nginx.stop()


def test_sse_passes_through_nginx_uncached(
    syncd: SyncdProcess, nginx_for_syncd: NginxProcess, pg_dsn: str
) -> None:
    """Two live SSE streams on the same URL through the cache both deliver a change at once:
    were the streams cached, the second would wait behind the first's cache lock until that
    stream ended, a minute later."""
    shape_url = nginx_for_syncd.url + "/v1/shape"
    with httpx.Client(timeout=30) as client:
        first = client.get(shape_url, params={"table": "items", "offset": "-1"})
        handle, offset = first.headers["electric-handle"], first.headers["electric-offset"]
        caught_up = client.get(
            shape_url, params={"table": "items", "offset": offset, "handle": handle}
        )
    live = {
        "table": "items",
        "handle": handle,
        "offset": caught_up.headers["electric-offset"],
        "live": "true",
        "live_sse": "true",
        "cursor": "1",
    }
    arrived: dict[int, float] = {}
    opened = threading.Barrier(3)

    def follow(n: int) -> None:
        with (
            httpx.Client(timeout=90) as own,
            own.stream("GET", shape_url, params=live) as stream,
        ):
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            opened.wait(30)
            for line in stream.iter_lines():
                if line.startswith("data:") and '"1000"' in line:
                    arrived[n] = time.monotonic()
                    return

    streams = [threading.Thread(target=follow, args=(n,)) for n in range(2)]
    for thread in streams:
        thread.start()
    opened.wait(30)
    changed = time.monotonic()
    change(pg_dsn, 0)
    for thread in streams:
        thread.join(90)
    assert sorted(arrived) == [0, 1]
    assert max(arrived.values()) - changed < 5
