"""A large snapshot reaches its first client chunk by chunk while it is still being taken.

The snapshot is held after its first batch of rows (the engine's row source is wrapped so that
it waits on a gate: the rows themselves come from Postgres). Chunks closed by then are served at
once; the request for the next chunk waits for it, not for the whole snapshot; a snapshot that
fails half-way answers the client that already holds some chunks with a retryable ``503``, then
a ``409`` with a new handle, and following that handle gives exactly the table's rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

import syncd.snapshot_runner
from syncd.embed import EmbeddedSyncd
from syncd.shape_state import ShapeState
from syncd.snapshot import stream_rows

ROWS = 6_000
CHUNK_BYTES = 16 * 1024


class HeldSnapshot:
    """Wraps ``stream_rows``: the first batch passes, the next waits for :meth:`release`
    (or raises what :meth:`fail` gave); :attr:`holding` is set while it waits."""

    def __init__(self) -> None:
        self.holding = asyncio.Event()
        self._gate = asyncio.Event()
        self._error: BaseException | None = None
        self._real = stream_rows

    def release(self) -> None:
        self._gate.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._gate.set()

    def __call__(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        return self._rows(*args, **kwargs)

    async def _rows(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        batches = 0
        async for batch in self._real(*args, **kwargs):
            if batches == 1:
                self.holding.set()
                await self._gate.wait()
                if self._error is not None:
                    raise self._error
            batches += 1
            yield batch


@pytest.fixture
def items(pg_dsn: str) -> str:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, title text)")
        conn.execute(
            "INSERT INTO items SELECT g, 'title of ' || g FROM generate_series(1, %s) g", (ROWS,)
        )
    return pg_dsn


def _embedded(dsn: str, storage: Path) -> EmbeddedSyncd:
    slot = f"streaming_{conninfo_to_dict(dsn)['dbname']}"
    return EmbeddedSyncd(dsn, storage, slot=slot, chunk_bytes=CHUNK_BYTES)


def _ids(answer: httpx.Response) -> list[int]:
    return [int(m["value"]["id"]) for m in answer.json() if "key" in m]


async def _first_chunk(embedded: EmbeddedSyncd) -> tuple[httpx.Response, ShapeState]:
    """The first request of a new shape, answered while its snapshot is still being taken."""
    first = await embedded.default_client.get(
        "/v1/shape", params={"table": "items", "offset": "-1"}
    )
    assert first.status_code == 200, first.text
    assert "electric-up-to-date" not in first.headers
    shape = embedded.engine.get(first.headers["electric-handle"])
    assert shape is not None and shape.status == "snapshotting"
    return first, shape


async def _follow(client: httpx.AsyncClient, params: dict[str, str]) -> list[int]:
    """Follow the shape from ``params`` to up-to-date; the ids of every row received."""
    ids: list[int] = []
    while True:
        answer = await client.get("/v1/shape", params=params)
        assert answer.status_code == 200, answer.text
        ids += _ids(answer)
        if "electric-up-to-date" in answer.headers:
            return ids
        params = {
            **params,
            "handle": answer.headers["electric-handle"],
            "offset": answer.headers["electric-offset"],
        }


async def test_chunks_are_served_while_the_snapshot_runs(
    items: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldSnapshot()
    monkeypatch.setattr(syncd.snapshot_runner, "stream_rows", held)
    async with _embedded(items, tmp_path / "storage") as embedded:
        client = embedded.default_client
        first, shape = await _first_chunk(embedded)
        handle = shape.handle
        await asyncio.wait_for(held.holding.wait(), 30)
        ids = _ids(first)
        assert ids and first.headers["electric-offset"] == "0_0"

        params = {"table": "items", "handle": handle, "offset": "0_0"}
        closed = shape.log.snapshot_chunks_closed
        for k in range(1, closed):  # the other chunks closed before the hold
            answer = await client.get("/v1/shape", params=params)
            assert answer.status_code == 200 and answer.headers["electric-offset"] == f"0_{k}"
            ids += _ids(answer)
            params["offset"] = answer.headers["electric-offset"]
        assert shape.status == "snapshotting"

        waiting = asyncio.create_task(client.get("/v1/shape", params=params))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # the next chunk is not written yet
        held.release()
        answer = await waiting
        assert answer.status_code == 200
        ids += _ids(answer)
        if "electric-up-to-date" not in answer.headers:
            params["offset"] = answer.headers["electric-offset"]
            ids += await _follow(client, params)
        assert sorted(ids) == list(range(1, ROWS + 1))
        # a second client reads the finished log
        assert sorted(await _follow(client, {"table": "items", "offset": "-1"})) == sorted(ids)


async def test_a_snapshot_failing_after_its_first_chunks_sends_503_then_409(
    items: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldSnapshot()
    monkeypatch.setattr(syncd.snapshot_runner, "stream_rows", held)
    async with _embedded(items, tmp_path / "storage") as embedded:
        client = embedded.default_client
        _, shape = await _first_chunk(embedded)
        handle = shape.handle
        params = {"table": "items", "handle": handle, "offset": "0_0"}
        for _ in range(1, shape.log.snapshot_chunks_closed):
            answer = await client.get("/v1/shape", params=params)
            params["offset"] = answer.headers["electric-offset"]
        waiting = asyncio.create_task(client.get("/v1/shape", params=params))
        await asyncio.sleep(0.1)
        monkeypatch.setattr(syncd.snapshot_runner, "stream_rows", held._real)  # the retry succeeds
        held.fail(psycopg.OperationalError("connection lost during the snapshot"))
        failed = await waiting
        assert failed.status_code == 503, failed.text
        assert "retry-after" in failed.headers
        refused = await client.get("/v1/shape", params=params)
        assert refused.status_code == 409, refused.text
        new_handle = refused.headers["electric-handle"]
        assert new_handle != handle
        again = {"table": "items", "handle": new_handle, "offset": "-1"}
        assert sorted(await _follow(client, again)) == list(range(1, ROWS + 1))
