"""``StreamingASGITransport``: responses stream while the app runs; disconnects and failures."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from syncd.asgi_transport import Receive, Scope, Send, StreamingASGITransport


class Ticker:
    """Sends one chunk per ``release`` and records what it saw."""

    def __init__(self) -> None:
        self.release: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.scope: Scope = {}
        self.body = b""
        self.send_error: BaseException | None = None
        self.finished = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.body = (await receive())["body"]
        start = {"type": "http.response.start", "status": 201, "headers": [(b"x-kind", b"tick")]}
        await send(start)
        try:
            while (chunk := await self.release.get()) is not None:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError as error:
            self.send_error = error
        finally:
            self.finished.set()


async def test_chunks_arrive_while_the_app_is_still_running() -> None:
    app = Ticker()
    async with httpx.AsyncClient(transport=StreamingASGITransport(app)) as client:
        request = client.build_request(
            "POST", "http://app.local/a%20b/c?x=1&y=%2F", content=b"payload"
        )
        response = await client.send(request, stream=True)
        assert response.status_code == 201
        assert response.headers["x-kind"] == "tick"
        chunks = response.aiter_bytes()
        for expected in (b"one", b"two"):
            app.release.put_nowait(expected)
            assert await asyncio.wait_for(anext(chunks), 5) == expected
        app.release.put_nowait(None)
        assert [chunk async for chunk in chunks] == []
        await response.aclose()
    assert app.body == b"payload"
    assert app.scope["method"] == "POST"
    assert app.scope["path"] == "/a b/c"
    assert app.scope["raw_path"] == b"/a%20b/c"
    assert app.scope["query_string"] == b"x=1&y=%2F"
    assert app.scope["server"] == ("app.local", 80)


async def test_closing_the_response_disconnects_the_app() -> None:
    app = Ticker()
    async with httpx.AsyncClient(transport=StreamingASGITransport(app)) as client:
        async with client.stream("GET", "http://app.local/") as response:
            app.release.put_nowait(b"first")
            async for chunk in response.aiter_bytes():
                assert chunk == b"first"
                break
    await asyncio.wait_for(app.finished.wait(), 5)


async def test_an_app_waiting_for_the_disconnect_is_cancelled_when_the_client_goes() -> None:
    outcome: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        try:
            await receive()
            outcome.append("returned")
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    async with httpx.AsyncClient(transport=StreamingASGITransport(app)) as client:
        response = await client.send(client.build_request("GET", "http://app.local/"), stream=True)
        assert await anext(response.aiter_bytes()) == b"x"
        assert outcome == []
        await response.aclose()
    assert outcome == ["cancelled"]


async def failing_before_start(scope: Scope, receive: Receive, send: Send) -> None:
    raise httpx.ConnectError("refused")


async def failing_after_start(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    raise RuntimeError("broken")


async def silent(scope: Scope, receive: Receive, send: Send) -> None:
    return None


@pytest.mark.parametrize(
    ("app", "error"),
    [
        (failing_before_start, httpx.ConnectError),
        (failing_after_start, httpx.ReadError),
        (silent, httpx.RemoteProtocolError),
    ],
)
async def test_failures_look_like_transport_errors(app: Any, error: type[Exception]) -> None:
    async with httpx.AsyncClient(transport=StreamingASGITransport(app)) as client:
        with pytest.raises(error):
            await client.get("http://app.local/")
