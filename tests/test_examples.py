"""The README's examples run as documented."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.syncd_process import ROOT, SyncdProcess

sys.path.insert(0, str(ROOT / "examples"))

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
