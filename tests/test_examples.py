"""The examples (shown in the README and docs/) run as documented."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from psycopg.conninfo import conninfo_to_dict

from tests.syncd_process import ROOT, SyncdProcess, free_port

sys.path.insert(0, str(ROOT / "examples"))

import embedded_app
from authorised_routes import create_app


@pytest.fixture
def syncd(pg_dsn: str, tmp_path: Path) -> Iterator[SyncdProcess]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, title text)")
        conn.execute("INSERT INTO items SELECT g, 't' || g FROM generate_series(1, 7) g")
        conn.execute("CREATE TABLE todos (id int PRIMARY KEY, owner text, title text)")
        conn.execute(
            "INSERT INTO todos VALUES (1, 'alice', 'a'), (2, 'bob', 'b'), (3, 'alice', 'c')"
        )
    daemon = SyncdProcess(pg_dsn, tmp_path / "storage")
    daemon.start()
    yield daemon
    daemon.stop()


def test_follow_items_example(syncd: SyncdProcess) -> None:
    result = subprocess.run(
        [sys.executable, "examples/follow_items.py", syncd.url, "--once"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "7 rows"


async def test_authorised_routes_example(syncd: SyncdProcess) -> None:
    app = create_app(syncd.url)
    transport = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://app") as client,
        contextlib.aclosing(app.state.shape_routes),
    ):
        anonymous = await client.get("/todos", params={"offset": "-1"})
        assert anonymous.status_code == 401
        widened = await client.get(
            "/todos",
            params={"offset": "-1", "where": "true"},
            headers={"authorization": "Bearer alice"},
        )
        assert widened.status_code == 200, widened.text
        rows = [m["value"] for m in widened.json() if "key" in m]
        assert sorted(r["id"] for r in rows) == ["1", "3"]
        assert {r["owner"] for r in rows} == {"alice"}


async def test_embedded_app_example_shuts_down_quietly_after_an_sse_client_left(
    syncd: SyncdProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The whole app (ShapeRoutes.in_process over an embedded syncd with a slot and publication
    of its own) next to the running daemon: an SSE client follows its rows and leaves, then the
    app shuts down, and nothing is logged as an error (no unretrieved task exception)."""
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, error: errors.append(error))
    slot = f"app_{conninfo_to_dict(syncd.dsn)['dbname']}"
    app = embedded_app.create_app(syncd.dsn, tmp_path / "app", slot=slot)
    config = uvicorn.Config(app, port=free_port(), log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        assert not serving.done(), serving.exception()
        await asyncio.sleep(0.02)
    alice = {"authorization": "Bearer alice"}
    base_url = f"http://127.0.0.1:{config.port}"
    with caplog.at_level(logging.WARNING):
        async with httpx.AsyncClient(base_url=base_url, headers=alice, timeout=30) as client:
            first = await client.get("/todos", params={"offset": "-1"})
            assert first.status_code == 200, first.text
            assert sorted(m["value"]["id"] for m in first.json() if "key" in m) == ["1", "3"]
            live = {
                "offset": first.headers["electric-offset"],
                "handle": first.headers["electric-handle"],
                "live": "true",
                "live_sse": "true",
            }
            async with client.stream("GET", "/todos", params=live) as events:
                with psycopg.connect(syncd.dsn, autocommit=True) as conn:
                    conn.execute("INSERT INTO todos VALUES (4, 'alice', 'd')")
                async for line in events.aiter_lines():
                    if line.startswith("data: ") and '"key"' in line:
                        assert json.loads(line[6:])["value"]["id"] == "4"
                        break  # the client leaves
        server.should_exit = True
        await serving
        gc.collect()
        await asyncio.sleep(0.05)
    assert [e for e in errors if "never retrieved" in str(e.get("message"))] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
