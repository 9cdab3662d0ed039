"""Sanity tests for the TanStack DB harness itself (no syncd involved).

A tiny scripted server answers subset snapshots and the changes_only log the way Electric
does, so the on-demand path of ``tanstack_collection.mjs`` is known to work independently of
syncd's own implementation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.e2e.jsclient import pinned_client_version
from tests.e2e.tanstack import E2E_DIR, CollectionFollower, pinned_versions, tanstack_modules_ready

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not tanstack_modules_ready(), reason="run `make js` first"),
]

SCHEMA = {"id": {"type": "int8", "pk_index": 0}, "n": {"type": "int4"}}
SNAPSHOT_METADATA = {
    "xmin": "1000",
    "xmax": "1001",
    "xip_list": [],
    "database_lsn": "100",
    "snapshot_mark": 7,
}


def _message(op: str, id_: int, n: int, txids: list[int] | None = None) -> dict[str, Any]:
    headers: dict[str, Any] = {"operation": op, "relation": ["public", "items"]}
    if txids is not None:
        headers["txids"] = txids
    return {
        "key": f'"public"."items"/"{id_}"',
        "value": {"id": str(id_), "n": str(n)},
        "headers": headers,
    }


class FakeElectric:
    """Answers subset snapshots with two rows; live requests with whatever ``push`` queued."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._pending: list[dict[str, Any]] = []
        self._pushed = asyncio.Event()
        self._offset = 0
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1/shape"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def push(self, *messages: dict[str, Any]) -> None:
        self._pending.extend(messages)
        self._pushed.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {
                k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)
            }
            raw = await reader.readexactly(int(headers.get("content-length", "0")))
            body = json.loads(raw) if raw else None
            query = {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()}
            self.requests.append({"method": method, "query": query, "body": body})
            status, extra, payload = await self._answer(query, body)
            data = payload.encode()
            out = [f"HTTP/1.1 {status} OK", "connection: close", f"content-length: {len(data)}"]
            out += [f"{k}: {v}" for k, v in extra.items()]
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + data)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _answer(self, query: dict[str, str], body: Any) -> tuple[int, dict[str, str], str]:
        headers = {
            "content-type": "application/json",
            "electric-handle": "h-1",
            "electric-schema": json.dumps(SCHEMA),
            "cache-control": "no-cache",
        }
        if body or any(k.startswith("subset__") for k in query):
            rows = [_message("insert", 1, 10), _message("insert", 2, 20)]
            for row in rows:
                row["headers"]["snapshot_mark"] = SNAPSHOT_METADATA["snapshot_mark"]
            headers.update({"electric-offset": "0_0", "electric-snapshot": "true"})
            payload = '{"metadata":' + json.dumps(SNAPSHOT_METADATA) + ', "data": '
            return 200, headers, payload + json.dumps(rows) + "}"
        if query.get("live") == "true":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pushed.wait(), 1.0)
        messages, self._pending = self._pending, []
        self._pushed.clear()
        if messages:
            self._offset += 1
        messages.append({"headers": {"control": "up-to-date", "global_last_seen_lsn": "100"}})
        headers.update(
            {
                "electric-offset": f"{self._offset}_0",
                "electric-cursor": "1",
                "electric-up-to-date": "",
            }
        )
        return 200, headers, json.dumps(messages)


@pytest.fixture
async def fake() -> AsyncIterator[FakeElectric]:
    server = FakeElectric()
    await server.start()
    yield server
    await server.stop()


def test_pinned_versions_share_one_client() -> None:
    """Exact pins; the collection uses the pinned @tanstack/db and the one pinned client."""
    lock = json.loads((E2E_DIR / "package-lock.json").read_text())
    packages = lock["packages"]
    pins = pinned_versions()
    for package, version in pins.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{package} must be pinned exactly"
        assert packages[f"node_modules/{package}"]["version"] == version
    collection = packages["node_modules/@tanstack/electric-db-collection"]
    assert collection["dependencies"]["@tanstack/db"] == pins["@tanstack/db"]
    nested = [path for path in packages if path.count("node_modules/") > 1]
    assert not [p for p in nested if p.endswith(("/@electric-sql/client", "/@tanstack/db"))]
    assert packages["node_modules/@electric-sql/client"]["version"] == pinned_client_version()


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_on_demand_subset_and_await_txid(fake: FakeElectric, method: str) -> None:
    async with CollectionFollower(
        fake.url,
        "items",
        sync_mode="on-demand",
        filters=[("lt", "n", 50)],
        subset_method="POST" if method == "POST" else "GET",
        log_requests=True,
    ) as follower:
        await follower.wait_for_rows(
            {"1": {"id": "1", "n": 10}, "2": {"id": "2", "n": 20}}, timeout=20
        )
        for package, version in pinned_versions().items():
            assert follower.versions[package] == version
        first = fake.requests[0]
        assert first["method"] == method
        assert first["query"]["offset"] == "now"
        assert first["query"]["log"] == "changes_only"
        subset = first["body"] if method == "POST" else first["query"]
        key = "" if method == "POST" else "subset__"
        assert subset[key + "where"] == '"n" < $1'
        params = subset[key + "params"]
        assert (params if method == "POST" else json.loads(params)) == {"1": "50"}

        # Visible in the subset's snapshot (below xmin): resolved at once.
        assert await follower.await_txid(999, timeout=2.0)
        # A live change's txid.
        fake.push(_message("insert", 3, 30, txids=[1500]), _message("insert", 4, 80, txids=[1500]))
        assert await follower.await_txid(1500, timeout=10.0), follower.last_txid_reply
        await follower.wait_for(lambda rows: set(rows) == {"1", "2", "3"}, timeout=5)
        assert not await follower.await_txid(1501, timeout=0.5)
        assert follower.errors == []
