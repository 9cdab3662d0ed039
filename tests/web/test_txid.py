"""A write's ``txid`` is the one syncd puts in the ``txids`` of the changes it made.

The original answered the 64-bit ``txid_current()`` while the stream carries 32-bit xids
(§8.20). Here each write kind is followed through a real syncd on the migrated database (which
also shows that syncd takes the publication the migrations made).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.syncd_process import SyncdProcess

from .conftest import Api


@pytest.fixture
def syncd(burn_dsn: str, tmp_path: Path) -> Iterator[SyncdProcess]:
    daemon = SyncdProcess(burn_dsn, tmp_path / "storage", long_poll_timeout=2)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


class Seen:
    """The txids seen so far, and a way to wait for some."""

    def __init__(self) -> None:
        self.txids: set[int] = set()
        self._changed = asyncio.Condition()

    async def add(self, txids: set[int]) -> None:
        async with self._changed:
            self.txids |= txids
            self._changed.notify_all()

    async def wait_for(self, txids: set[int]) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: txids <= self.txids)


async def follow(url: str, table: str, seen: Seen, ready: asyncio.Event) -> None:
    """Follow ``table``'s shape, adding every change's txids to ``seen``."""
    async with httpx.AsyncClient(timeout=30.0) as client:
        query = {"table": table, "offset": "-1"}
        while True:
            answer = await client.get(url, params=query)
            assert answer.status_code in (200, 204), answer.text
            for message in answer.json() if answer.status_code == 200 else []:
                txids = message.get("headers", {}).get("txids", [])
                await seen.add({int(txid) for txid in txids})
            query = {
                "table": table,
                "handle": answer.headers["electric-handle"],
                "offset": answer.headers["electric-offset"],
            }
            if "electric-up-to-date" in answer.headers:
                ready.set()
                query.update(live="true", cursor=answer.headers.get("electric-cursor", ""))


@contextlib.asynccontextmanager
async def following(url: str, tables: list[str], seen: Seen) -> AsyncIterator[None]:
    readiness = [asyncio.Event() for _ in tables]
    tasks = [
        asyncio.create_task(follow(url, t, seen, r)) for t, r in zip(tables, readiness, strict=True)
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readiness)), timeout=60)
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_every_write_kind_answers_the_txid_its_changes_carry(
    api: Api, syncd: SyncdProcess
) -> None:
    owner, bob = await api.sign_up(), await api.sign_up()
    seen = Seen()
    async with following(syncd.shape_url, ["threads", "events", "memberships"], seen):
        thread = uuid.uuid4()
        answers = [await api.post(owner, "/api/threads", {"id": str(thread)})]
        answers.append(await api.write(owner, thread, "rename", name="renamed"))
        answers.append(await api.write(bob, thread, "join"))
        answers.append(await api.write(bob, thread, "messages", text="hello"))
        answers.append(await api.write(bob, thread, "leave"))
        answers.append(await api.write(owner, thread, "delete"))
        assert [answer.status_code for answer in answers] == [200] * 6
        txids = {answer.json()["txid"] for answer in answers}
        assert len(txids) == 6
        await asyncio.wait_for(seen.wait_for(txids), timeout=60)
