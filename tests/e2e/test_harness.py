"""Sanity tests for the JS-client harness itself (no syncd involved).

A tiny scripted HTTP server stands in for syncd so that state reporting, value
serialisation, must-refetch and SSE can be checked before the real server exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.e2e.jsclient import (
    E2E_DIR,
    ShapeFollower,
    describe_diff,
    installed_client_version,
    node_modules_ready,
    pinned_client_version,
    version_is_exact_1_5,
)

pytestmark = pytest.mark.e2e

needs_node = pytest.mark.skipif(
    not node_modules_ready(), reason="run `npm ci` in tests/e2e (make js) first"
)


def test_pinned_client_version_is_exact_1_5() -> None:
    version = pinned_client_version()
    assert version_is_exact_1_5(version), f"@electric-sql/client must be pinned to 1.5.x: {version}"
    lock = json.loads((E2E_DIR / "package-lock.json").read_text())
    assert lock["packages"][""]["dependencies"]["@electric-sql/client"] == version
    assert lock["packages"]["node_modules/@electric-sql/client"]["version"] == version
    installed = installed_client_version()
    assert installed is None or installed == version


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@needs_node
@pytest.mark.parametrize("live_sse", [False, True])
async def test_closed_port_reports_errors_and_shuts_down(live_sse: bool) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1/shape"
    follower = ShapeFollower(url, "items", live_sse=live_sse)
    async with follower:
        err = await follower.wait_for_error(timeout=20)
        assert err["transient"] is True
        assert not err["fatal"]
        assert "fetch failed" in err["message"]
        assert follower.returncode is None, "the client should keep retrying"
        with pytest.raises(AssertionError, match="timed out") as info:
            await follower.wait_for(lambda rows: bool(rows), timeout=0.5)
        assert "fetch failed" in str(info.value)
        started = time.monotonic()
    assert time.monotonic() - started < 4.5, "SIGTERM should stop the follower promptly"
    assert follower.returncode == 0
    assert follower.events[-1] == {"type": "exit", "reason": "SIGTERM"}
    assert follower.client_version == pinned_client_version()
    assert follower.rows == {}


# --------------------------------------------------------------------------- fake server

SCHEMA = {
    "id": {"type": "int8", "pk_index": 0, "not_null": True},
    "name": {"type": "text"},
    "n": {"type": "int4"},
    "flag": {"type": "bool"},
    "data": {"type": "jsonb"},
    "ratio": {"type": "float8"},
}
K1 = '"public"."items"/"1"'
K2 = '"public"."items"/"2"'
ROW1 = {"id": "1", "name": "a", "n": "5", "flag": "t", "data": '{"x": [1, 2]}', "ratio": "NaN"}
ROW2 = {
    "id": "9007199254740993",
    "name": None,
    "n": None,
    "flag": "f",
    "data": "null",
    "ratio": "0.5",
}
REL = ["public", "items"]


def _insert(key: str, row: dict[str, Any]) -> dict[str, Any]:
    return {"key": key, "value": row, "headers": {"operation": "insert", "relation": REL}}


def _update(key: str, row: dict[str, Any]) -> dict[str, Any]:
    headers = {"operation": "update", "relation": REL, "lsn": "100", "op_position": 0}
    return {"key": key, "value": row, "headers": {**headers, "txids": [7], "last": True}}


def _up_to_date(lsn: str = "100") -> dict[str, Any]:
    return {"headers": {"control": "up-to-date", "global_last_seen_lsn": lsn}}


class FakeShapeServer:
    """Just enough of the shape protocol for one table, driven by the request's offset.

    Handle ``h1``: snapshot {K1, K2}, then a live update of K1. With ``rotate`` the next
    live request gets a 409 to handle ``h2``, whose snapshot only has K2.
    """

    def __init__(self, *, rotate: bool = False, omit_schema: bool = False) -> None:
        self.rotate = rotate
        self.omit_schema = omit_schema
        self.requests: list[dict[str, str]] = []
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self.port = 0

    async def __aenter__(self) -> FakeShapeServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        # Live requests are held for at most a second; let them finish on their own.
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/shape"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1].decode()
            query = {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()}
            self.requests.append(query)
            await self._respond(query, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _respond(self, q: dict[str, str], writer: asyncio.StreamWriter) -> None:
        offset, handle = q.get("offset"), q.get("handle", "h1")
        live, sse = q.get("live") == "true", q.get("live_sse") == "true"
        if offset == "-1":
            rows = [_insert(K2, ROW2)] if handle == "h2" else [_insert(K1, ROW1), _insert(K2, ROW2)]
            return self._json(writer, 200, rows, handle, "0_inf", schema=True)
        if offset == "0_inf" and not live:
            return self._json(writer, 200, [_up_to_date("0")], handle, "0_inf", schema=True)
        if offset == "0_inf" and handle == "h1":
            batch = [_update(K1, {"id": "1", "name": "b"}), _up_to_date()]
            if sse:
                return self._sse(writer, batch, handle, "0_inf")
            return self._json(writer, 200, batch, handle, "100_0", cursor="1")
        if self.rotate and handle == "h1":
            body = [{"headers": {"control": "must-refetch"}}]
            return self._json(writer, 409, body, "h2", None)
        # Caught up: hold the live request a little, then report nothing new.
        await asyncio.sleep(1.0)
        if sse:
            return self._sse(writer, [], handle, offset or "0_inf")
        self._json(writer, 200, [_up_to_date()], handle, offset or "0_inf", cursor="2")

    def _headers(self, status: int, handle: str, offset: str | None) -> list[str]:
        reason = {200: "OK", 409: "Conflict"}[status]
        lines = [f"HTTP/1.1 {status} {reason}", f"electric-handle: {handle}", "connection: close"]
        if offset is not None:
            lines.append(f"electric-offset: {offset}")
        return lines

    def _json(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: list[dict[str, Any]],
        handle: str,
        offset: str | None,
        *,
        schema: bool = False,
        cursor: str | None = None,
    ) -> None:
        data = json.dumps(body).encode()
        lines = self._headers(status, handle, offset)
        lines += ["content-type: application/json", f"content-length: {len(data)}"]
        if schema and not self.omit_schema:
            lines.append(f"electric-schema: {json.dumps(SCHEMA)}")
        if cursor is not None:
            lines.append(f"electric-cursor: {cursor}")
        if body and body[-1].get("headers", {}).get("control") == "up-to-date":
            lines.append("electric-up-to-date: ")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)

    def _sse(
        self, writer: asyncio.StreamWriter, body: list[dict[str, Any]], handle: str, offset: str
    ) -> None:
        lines = self._headers(200, handle, offset)
        lines += ["content-type: text/event-stream", "electric-cursor: 3"]
        events = "".join(f"data: {json.dumps(m)}\n\n" for m in body)
        writer.write(("\r\n".join(lines) + "\r\n\r\n" + events).encode())


EXPECTED_AFTER_UPDATE: dict[str, dict[str, Any]] = {
    K1: {"id": "1", "name": "b", "n": 5, "flag": True, "data": {"x": [1, 2]}, "ratio": "NaN"},
    K2: {
        "id": "9007199254740993",
        "name": None,
        "n": None,
        "flag": False,
        "data": None,
        "ratio": 0.5,
    },
}


@pytest.fixture
async def fake_server() -> AsyncIterator[FakeShapeServer]:
    async with FakeShapeServer() as server:
        yield server


@needs_node
@pytest.mark.parametrize("live_sse", [False, True])
async def test_reports_materialised_state(fake_server: FakeShapeServer, live_sse: bool) -> None:
    async with ShapeFollower(
        fake_server.url, "items", live_sse=live_sse, report_types=True, columns=["id", "name"]
    ) as follower:
        rows = await follower.wait_for_rows(EXPECTED_AFTER_UPDATE, timeout=20)
        assert rows == EXPECTED_AFTER_UPDATE
        assert follower.types[K1] == {
            "id": "bigint",
            "name": "string",
            "n": "number",
            "flag": "boolean",
            "data": "object",
            "ratio": "number",
        }
        state = follower.state
        assert state is not None
        assert state["handle"] == "h1" and state["isUpToDate"] is True
        assert state["offset"] == "100_0"
        # A state without the update was reported first (the snapshot).
        assert follower.states_seen >= 1
        assert follower.errors == []
        assert follower.must_refetch_count == 0
    first = fake_server.requests[0]
    assert first["table"] == "items" and first["offset"] == "-1"
    assert first["columns"] == '"id","name"'
    if live_sse:
        assert any(r.get("live_sse") == "true" for r in fake_server.requests)
    else:
        assert not any("live_sse" in r for r in fake_server.requests)


@needs_node
async def test_reports_must_refetch() -> None:
    async with (
        FakeShapeServer(rotate=True) as server,
        ShapeFollower(server.url, "items", where="n > $1", params={"1": "0"}) as follower,
    ):
        await follower.wait_for(lambda rows: K1 in rows, timeout=20)
        rows = await follower.wait_for(lambda rows: set(rows) == {K2}, timeout=20)
        assert rows[K2]["id"] == "9007199254740993"
        assert follower.must_refetch_count >= 1
        assert {"type": "must-refetch"} in follower.events
        assert follower.state is not None and follower.state["handle"] == "h2"
        # The state just before the rotation is flushed before the rows are cleared.
        seen = [
            (s["handle"], s["offset"], {k: r["name"] for k, r in s["rows"].items()})
            for s in follower.states
        ]
        # (the first, snapshot-only state may be merged into the next by the throttle)
        assert seen[-2:] == [("h1", "100_0", {K1: "b", K2: None}), ("h2", "0_inf", {K2: None})]
        assert seen[0] in (("h1", "0_inf", {K1: "a", K2: None}), seen[-2])
    assert server.requests[0]["where"] == "n > $1"
    assert server.requests[0]["params[1]"] == "0"


@needs_node
async def test_fatal_client_error_ends_the_follower() -> None:
    async with (
        FakeShapeServer(omit_schema=True) as server,
        ShapeFollower(server.url, "items") as follower,
    ):
        with pytest.raises(AssertionError, match="exited") as info:
            await follower.wait_for(lambda rows: bool(rows), timeout=20)
        assert "MissingHeadersError" in str(info.value)
        assert follower.returncode == 1
        assert [e["name"] for e in follower.fatal_errors][:1] == ["MissingHeadersError"]
        assert "electric-schema" in follower.fatal_errors[0]["message"]


@needs_node
async def test_wait_for_failure_shows_diff(fake_server: FakeShapeServer) -> None:
    async with ShapeFollower(fake_server.url, "items") as follower:
        await follower.wait_for_rows(EXPECTED_AFTER_UPDATE, timeout=20)
        wanted = {K1: {**EXPECTED_AFTER_UPDATE[K1], "name": "zzz"}}
        with pytest.raises(AssertionError) as info:
            await follower.wait_for_rows(wanted, timeout=0.3)
    message = str(info.value)
    assert "timed out" in message
    assert "1 unexpected, 1 different" in message
    assert 'name: "zzz" != "b"' in message


def test_describe_diff() -> None:
    text = describe_diff({"a": {"x": 1}, "b": {"x": 1}}, {"a": {"x": 2}, "c": {}})
    assert "1 missing, 1 unexpected, 1 different" in text
    assert "x: 1 != 2" in text
