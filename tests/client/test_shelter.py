"""A long catch-up keeps the messages it holds out of the collector's passes, and gives them
back: when its batch is handed over, when it is abandoned, and never at all when the
application uses the collector's permanent generation itself.

The daemon serves the shape in many small chunks, so the catch-up takes many responses; a
transport that notes ``gc.get_freeze_count()`` as each request goes out shows what the stream
did between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import httpx
import psycopg
import pytest

from shapes.client import ShapeDefinition, ShapeStream
from shapes.client.stream import SHELTER_MESSAGES
from shapes.client.transport import Answer, HttpxTransport
from tests.syncd_process import SyncdProcess

ROWS = 3 * SHELTER_MESSAGES


class NotingTransport(HttpxTransport):
    """An httpx transport that notes the collector's frozen count at each request."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        super().__init__(client)
        self.frozen_at_requests: list[int] = []
        self.sheltering = asyncio.Event()

    @contextlib.asynccontextmanager
    async def get(
        self, url: str, params: Mapping[str, str], headers: Mapping[str, str]
    ) -> AsyncIterator[Answer]:
        count = gc.get_freeze_count()
        self.frozen_at_requests.append(count)
        if count:
            self.sheltering.set()
        async with super().get(url, params, headers) as answer:
            yield answer


@pytest.fixture
def many_chunks(pg_dsn: str, tmp_path: Path) -> Iterator[SyncdProcess]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, title text)")
        conn.execute(
            "INSERT INTO items SELECT g, 'title ' || g FROM generate_series(1, %s) g", (ROWS,)
        )
    daemon = SyncdProcess(pg_dsn, tmp_path / "storage", chunk_bytes=64 * 1024)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def nothing_frozen() -> Iterator[None]:
    if gc.get_freeze_count():
        pytest.skip("the test process froze objects already")
    yield
    gc.unfreeze()


async def _catch_up(url: str, transport: NotingTransport) -> int:
    definition = ShapeDefinition.of("items")
    async with ShapeStream(url, definition, live=False, transport=transport) as stream:
        async for batch in stream:
            assert gc.get_freeze_count() == 0  # handed over: back in the collector's view
            return sum(1 for message in batch if "key" in message)
    raise AssertionError("no batch")


async def test_a_catch_up_shelters_what_it_holds_until_its_batch(
    many_chunks: SyncdProcess, nothing_frozen: None
) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        transport = NotingTransport(client)
        assert await _catch_up(many_chunks.shape_url, transport) == ROWS
    counts = transport.frozen_at_requests
    assert len(counts) > 4
    assert counts[0] == 0 and any(counts)  # sheltered once enough messages were held
    assert gc.get_freeze_count() == 0


async def test_an_abandoned_catch_up_gives_its_messages_back(
    many_chunks: SyncdProcess, nothing_frozen: None
) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        transport = NotingTransport(client)
        reading = asyncio.create_task(_catch_up(many_chunks.shape_url, transport))
        await asyncio.wait_for(transport.sheltering.wait(), 60)
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
    assert gc.get_freeze_count() == 0


async def test_objects_the_application_froze_stay_frozen(many_chunks: SyncdProcess) -> None:
    kept = [{"frozen": [i]} for i in range(100)]
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        async with httpx.AsyncClient(timeout=30) as client:
            transport = NotingTransport(client)
            definition = ShapeDefinition.of("items")
            async with ShapeStream(
                many_chunks.shape_url, definition, live=False, transport=transport
            ) as stream:
                async for batch in stream:
                    assert sum(1 for message in batch if "key" in message) == ROWS
                    break
        # never frozen more nor unfrozen (frozen objects that die leave the count)
        assert all(0 < count <= frozen for count in transport.frozen_at_requests)
        assert 0 < gc.get_freeze_count() <= frozen
    finally:
        gc.unfreeze()
    assert kept
