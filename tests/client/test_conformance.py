"""The async shape client against a live endpoint (``docs/protocol.md``).

Every test takes ``endpoint``, parametrised three ways: ``http`` (a ``syncd`` child process over
loopback HTTP, through httpx), ``aiohttp`` (the same, the streams sending through
:class:`~shapes.client.AiohttpTransport`) and ``inprocess`` (:class:`syncd.embed.EmbeddedSyncd`
in the test's event loop, reached through :class:`syncd.asgi_transport.StreamingASGITransport`).
In-process, a daemon crash becomes a restart of the embedded engine on the same storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from shapes.client import (
    AiohttpTransport,
    Batch,
    HttpxTransport,
    LiveMode,
    Shape,
    ShapeDefinition,
    ShapeRegistry,
    ShapeRequestError,
    ShapeStream,
    Transport,
)
from shapes.client.transport import Answer
from shapes.materialise import MaterialisedShape
from syncd.embed import EmbeddedSyncd
from tests.syncd_process import SyncdProcess

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]

ITEMS = ShapeDefinition.of("items")
COLUMNS = "id, title, n, ok, meta, price, tags"


class Endpoint:
    """What every conformance test needs from a shape endpoint."""

    dsn: str
    kind: str

    @property
    def shape_url(self) -> str:
        """URL of the shape endpoint."""
        raise NotImplementedError

    async def write(self, statement: str) -> int:
        """Run ``statement`` in its own transaction; return that transaction's txid."""
        async with await psycopg.AsyncConnection.connect(self.dsn) as conn:
            await conn.execute(statement)
            cursor = await conn.execute("SELECT pg_current_xact_id()::xid::text")
            row = await cursor.fetchone()
            assert row is not None
            await conn.commit()
        return int(row[0])

    async def expected_rows(self) -> dict[str, dict[str, Any]]:
        """The table as ``SELECT`` sees it, keyed like the protocol, with Python values."""
        async with await psycopg.AsyncConnection.connect(self.dsn) as conn:
            cursor = await conn.execute(f"SELECT {COLUMNS} FROM items")
            names = [column.name for column in cursor.description or ()]
            rows = await cursor.fetchall()
        return {f'"public"."items"/"{row[0]}"': dict(zip(names, row, strict=True)) for row in rows}

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """A new client that reaches the endpoint; the caller closes it."""
        raise NotImplementedError

    @property
    def default_client(self) -> httpx.AsyncClient | None:
        """The client streams use when given none (``None``: each stream makes its own)."""
        return None

    def stream(self, definition: ShapeDefinition, **kwargs: Any) -> ShapeStream:
        kwargs.setdefault("client", self.default_client)
        return ShapeStream(self.shape_url, definition, **kwargs)

    async def crash_and_restart(self) -> None:
        raise NotImplementedError

    async def delete_shape(self, handle: str) -> None:
        async with self.client() as client:
            answer = await client.delete(self.shape_url, params={"handle": handle})
        assert answer.status_code == 202, answer.text


@dataclass
class HttpEndpoint(Endpoint):
    """A syncd daemon serving ``/v1/shape`` over HTTP on loopback."""

    daemon: SyncdProcess
    dsn: str
    kind: str = "http"

    @property
    def shape_url(self) -> str:
        return self.daemon.shape_url

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(**kwargs)

    async def crash_and_restart(self) -> None:
        """SIGKILL the daemon and start it again on the same port and storage."""
        await asyncio.to_thread(self.daemon.kill)
        await asyncio.to_thread(self.daemon.start)


@dataclass
class AiohttpEndpoint(HttpEndpoint):
    """The daemon over HTTP, its streams sending through aiohttp unless given a client."""

    kind: str = "aiohttp"
    transports: list[AiohttpTransport] = field(default_factory=list)

    def stream(self, definition: ShapeDefinition, **kwargs: Any) -> ShapeStream:
        if "client" not in kwargs and "transport" not in kwargs:
            self.transports.append(AiohttpTransport())
            kwargs["transport"] = self.transports[-1]
        return ShapeStream(self.shape_url, definition, **kwargs)

    async def aclose(self) -> None:
        for transport in self.transports:
            await transport.aclose()


@dataclass
class InProcessEndpoint(Endpoint):
    """An :class:`EmbeddedSyncd` in the test's event loop, reached without a socket."""

    embedded: EmbeddedSyncd
    dsn: str
    kind: str = "inprocess"

    @property
    def shape_url(self) -> str:
        return self.embedded.shape_url

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return self.embedded.client(**kwargs)

    @property
    def default_client(self) -> httpx.AsyncClient | None:
        return self.embedded.default_client

    async def crash_and_restart(self) -> None:
        """The in-process analogue of kill -9: stop the engine, start one on the same storage."""
        await self.embedded.restart()


@pytest.fixture(params=["http", "aiohttp", "inprocess"])
async def endpoint(
    request: pytest.FixtureRequest, pg_dsn: str, tmp_path: Path
) -> AsyncIterator[Endpoint]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE items (id int PRIMARY KEY, title text, n int8, ok bool, meta jsonb,"
            " price numeric, tags text[])"
        )
        conn.execute(
            "INSERT INTO items SELECT g, 't' || g, g * 1000000000000, g % 2 = 0,"
            " jsonb_build_object('g', g), g / 4.0, ARRAY['a', NULL, 'b' || g]"
            " FROM generate_series(1, 20) g"
        )
    if request.param == "http":
        daemon = SyncdProcess(pg_dsn, tmp_path / "storage")
        await asyncio.to_thread(daemon.start)
        try:
            yield HttpEndpoint(daemon, pg_dsn)
        finally:
            await asyncio.to_thread(daemon.stop)
        return
    if request.param == "aiohttp":
        daemon = SyncdProcess(pg_dsn, tmp_path / "storage")
        await asyncio.to_thread(daemon.start)
        endpoint = AiohttpEndpoint(daemon, pg_dsn)
        try:
            yield endpoint
        finally:
            await endpoint.aclose()
            await asyncio.to_thread(daemon.stop)
        return
    slot = f"syncd_{conninfo_to_dict(pg_dsn).get('dbname', 'postgres')}"
    embedded = EmbeddedSyncd(pg_dsn, tmp_path / "storage", slot=slot, allow_shape_deletion=True)
    async with embedded:
        yield InProcessEndpoint(embedded, pg_dsn)


class Recorder:
    """A subscriber that checks no change arrives twice and counts must-refetches."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.seen: set[tuple[str, int]] = set()
        self.refetches = 0

    def __call__(self, batch: Batch) -> None:
        self.batches.append(batch)
        for message in batch:
            headers = message["headers"]
            if headers.get("control") == "must-refetch":
                self.refetches += 1
                self.seen.clear()
            elif "lsn" in headers:
                position = (headers["lsn"], headers["op_position"])
                assert position not in self.seen, f"change {position} delivered twice"
                self.seen.add(position)


@pytest.fixture
async def shape(endpoint: Endpoint) -> AsyncIterator[Shape]:
    async with Shape(endpoint.stream(ITEMS)) as started:
        await started.wait_until_up_to_date(30)
        yield started


async def test_initial_sync_equals_select(endpoint: Endpoint) -> None:
    txid = await endpoint.write("UPDATE items SET title = 'before' WHERE id = 1")
    async with Shape(endpoint.stream(ITEMS)) as shape:
        await shape.wait_until_up_to_date(30)
        assert shape.rows == await endpoint.expected_rows()
        assert shape.rows['"public"."items"/"2"']["tags"] == ["a", None, "b2"]
        await shape.wait_for_txid(txid, 1)  # visible in the snapshot
        assert shape.stream.schema["id"]["type"] == "int4"


async def test_non_live_stream_ends_up_to_date(endpoint: Endpoint) -> None:
    definition = ShapeDefinition.of("items", where="id <= $1", params=["3"], columns=["id", "ok"])
    async with endpoint.stream(definition, live=False) as stream:
        batches = [batch async for batch in stream]
    assert len(batches) == 1
    assert batches[0][-1]["headers"]["control"] == "up-to-date"
    values = sorted((m["value"]["id"], m["value"]["ok"]) for m in batches[0] if "key" in m)
    assert values == [(1, False), (2, True), (3, False)]


class RecordingTransport:
    """A transport that notes the URL of every request it sends."""

    def __init__(self, inner: Transport, urls: list[str]) -> None:
        self.inner = inner
        self.urls = urls

    def get(
        self, url: str, params: Mapping[str, str], headers: Mapping[str, str]
    ) -> contextlib.AbstractAsyncContextManager[Answer]:
        self.urls.append(f"{url}?{urllib.parse.urlencode(params)}")
        return self.inner.get(url, params, headers)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("live_mode", ["long-poll", "sse"])
async def test_live_changes(endpoint: Endpoint, live_mode: LiveMode) -> None:
    urls: list[str] = []

    async def record(request: httpx.Request) -> None:
        urls.append(str(request.url))

    transport: Transport
    if endpoint.kind == "aiohttp":
        transport = RecordingTransport(AiohttpTransport(), urls)
    else:
        client = endpoint.client(
            timeout=httpx.Timeout(10, read=65), event_hooks={"request": [record]}
        )
        transport = HttpxTransport(client, owned=True)
    stream = endpoint.stream(ITEMS, live_mode=live_mode, transport=transport)
    async with contextlib.aclosing(transport), Shape(stream) as shape:
        recorder = Recorder()
        shape.subscribe(recorder)
        await shape.wait_until_up_to_date(30)
        statements = [
            "INSERT INTO items VALUES (100, 'new', 5, true, '{\"x\": [1]}', 1.25, '{q}')",
            "UPDATE items SET title = 'changed', ok = NOT ok WHERE id IN (1, 2)",
            "DELETE FROM items WHERE id = 3",
            "UPDATE items SET n = NULL, tags = '{}' WHERE id = 100",
        ]
        for statement in statements:
            txid = await endpoint.write(statement)
            await shape.wait_for_txid(txid, 30)
            assert shape.rows == await endpoint.expected_rows()
        assert recorder.refetches == 0
        assert shape.rows['"public"."items"/"100"']["meta"] == {"x": [1]}
    live_urls = [url for url in urls if "live=true" in url]
    assert live_urls
    assert all(("live_sse=true" in url) == (live_mode == "sse") for url in live_urls)


async def test_changes_iterator_and_offset(endpoint: Endpoint, shape: Shape) -> None:
    changes = shape.changes()
    next_batch = asyncio.ensure_future(anext(changes))
    await asyncio.sleep(0)
    await endpoint.write("INSERT INTO items (id, title) VALUES (200, 'x')")
    batch = await asyncio.wait_for(next_batch, 30)
    inserted = [m for m in batch if m["headers"].get("operation") == "insert"]
    assert inserted and inserted[0]["value"]["id"] == 200
    change_offset = f"{inserted[0]['headers']['lsn']}_{inserted[0]['headers']['op_position']}"
    await shape.wait_for_offset(change_offset, 1)
    await changes.aclose()


async def test_resume_after_client_restart(endpoint: Endpoint) -> None:
    materialised = MaterialisedShape()
    async with endpoint.stream(ITEMS, live=False) as first:
        async for batch in first:
            materialised.apply_all(batch)
        stored = (first.handle, first.offset)
    await endpoint.write("INSERT INTO items (id, title) VALUES (300, 'while away')")
    await endpoint.write("DELETE FROM items WHERE id = 4")
    handle, offset = stored
    async with endpoint.stream(ITEMS, handle=handle, offset=offset) as second:
        async with Shape(second) as shape:
            shape._materialised = materialised  # continue from the stored rows
            recorder = Recorder()
            shape.subscribe(recorder)
            expected = await endpoint.expected_rows()
            txid = await endpoint.write("UPDATE items SET title = 'live' WHERE id = 300")
            await shape.wait_for_txid(txid, 30)
            expected['"public"."items"/"300"']["title"] = "live"
            assert shape.rows == expected
            assert recorder.refetches == 0
            assert second.handle == handle
            snapshot_rows = [m for b in recorder.batches for m in b if "lsn" not in m["headers"]]
            assert all("control" in m["headers"] for m in snapshot_rows), "snapshot re-sent"


async def test_resume_after_syncd_restart(endpoint: Endpoint, shape: Shape) -> None:
    recorder = Recorder()
    shape.subscribe(recorder)
    handle = shape.stream.handle
    await shape.wait_for_txid(await endpoint.write("UPDATE items SET n = 1 WHERE id = 5"), 30)
    await endpoint.crash_and_restart()
    await shape.wait_for_txid(await endpoint.write("UPDATE items SET n = 2 WHERE id = 6"), 60)
    assert shape.rows == await endpoint.expected_rows()
    assert recorder.refetches == 0
    assert shape.stream.handle == handle


async def test_deleted_shape_refetches(endpoint: Endpoint, shape: Shape) -> None:
    recorder = Recorder()
    shape.subscribe(recorder)
    changes = shape.changes()
    old_handle = shape.stream.handle
    assert old_handle is not None
    await endpoint.delete_shape(old_handle)
    async with asyncio.timeout(30):
        async for batch in changes:
            if recorder.refetches and batch[-1]["headers"].get("control") == "up-to-date":
                break
    await changes.aclose()
    assert recorder.batches[0] == [{"headers": {"control": "must-refetch"}}]
    assert shape.stream.handle != old_handle
    assert shape.rows == await endpoint.expected_rows()
    txid = await endpoint.write("INSERT INTO items (id) VALUES (400)")
    await shape.wait_for_txid(txid, 30)
    assert shape.rows == await endpoint.expected_rows()


async def test_bad_request_raises_typed_error(endpoint: Endpoint) -> None:
    definition = ShapeDefinition.of("items", where="no_such_column = 1")
    async with endpoint.stream(definition) as stream:
        with pytest.raises(ShapeRequestError) as raised:
            await anext(aiter(stream))
    assert raised.value.status == 400
    assert isinstance(raised.value.body, dict) and "message" in raised.value.body


async def test_registry_shares_one_stream(endpoint: Endpoint) -> None:
    registry = ShapeRegistry()
    first = registry.get(endpoint.shape_url, ITEMS, client=endpoint.default_client)
    second = registry.get(
        endpoint.shape_url, ShapeDefinition.of("items"), client=endpoint.default_client
    )
    assert first is second and len(registry) == 1
    await first.wait_until_up_to_date(30)
    await first.close()
    assert len(registry) == 1 and first.error is None
    txid = await endpoint.write("INSERT INTO items (id) VALUES (500)")
    await second.wait_for_txid(txid, 30)
    await second.close()
    assert len(registry) == 0


async def test_registry_never_shares_between_different_credentials(endpoint: Endpoint) -> None:
    registry = ShapeRegistry()
    client = endpoint.default_client
    alice = registry.get(endpoint.shape_url, ITEMS, headers={"Authorization": "a"}, client=client)
    again = registry.get(endpoint.shape_url, ITEMS, headers={"authorization": "a"}, client=client)
    bob = registry.get(endpoint.shape_url, ITEMS, headers={"authorization": "b"}, client=client)
    anonymous = registry.get(endpoint.shape_url, ITEMS, client=client)
    assert alice is again
    assert len({id(alice), id(bob), id(anonymous)}) == 3 and len(registry) == 3
    for shape in (alice, again, bob, anonymous):
        await shape.close()
    assert len(registry) == 0
