"""An httpx transport that calls an ASGI app in this event loop and streams its responses.

Layer: ``syncd``. ``httpx.ASGITransport`` runs the app to completion before it returns the
response, so a response that stays open (an SSE stream, a live long-poll held for 20 s) would
arrive all at once at the end. :class:`StreamingASGITransport` runs each request's app call as
a task instead and returns the response as soon as the app has sent ``http.response.start``;
the body then arrives chunk by chunk as the app sends it.

Theory of operation
-------------------
For each request the transport reads the request body, builds the HTTP scope and starts the app
in a task with a ``receive`` that hands over the body once and then waits for the client to go
away (``http.disconnect``), and a ``send`` that resolves a future with the response start and
puts body chunks on a queue (``None`` marks the end). The caller gets an ``httpx.Response``
whose stream reads that queue. Failure mapping follows what a socket would show: the app raising
before the response started becomes that exception (``httpx`` errors pass through, e.g. a
``ConnectError`` from an app that refuses), after it started a ``httpx.ReadError``; a response
the app never finishes keeps the stream open. Closing the response (or cancelling the reader)
disconnects: ``receive`` answers ``http.disconnect``, a later ``send`` raises ``OSError`` as a
closed socket would, and the task is cancelled if it is still running.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any, Final
from urllib.parse import unquote

import httpx

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CLIENT_ADDRESS: Final = ("127.0.0.1", 0)
_END: Final = object()


class StreamingASGITransport(httpx.AsyncBaseTransport):
    """Send requests to ``app`` in this event loop; response bodies stream as they are sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        exchange = _Exchange(self.app, _scope(request), await request.aread())
        status, headers = await exchange.started()
        return httpx.Response(status, headers=headers, stream=_Body(exchange), request=request)


def _scope(request: httpx.Request) -> Scope:
    url = request.url
    port = url.port or (443 if url.scheme == "https" else 80)
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": url.scheme,
        "path": unquote(url.path),
        "raw_path": url.raw_path.split(b"?", 1)[0],
        "query_string": url.query,
        "root_path": "",
        "headers": [(name.lower(), value) for name, value in request.headers.raw],
        "server": (url.host, port),
        "client": CLIENT_ADDRESS,
        "state": {},
    }


class _Exchange:
    """One request's app task and the channel its response comes back through."""

    def __init__(self, app: ASGIApp, scope: Scope, body: bytes) -> None:
        loop = asyncio.get_running_loop()
        self._body: bytes | None = body
        self._start: asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]] = loop.create_future()
        # A caller that gave up (cancelled) no longer awaits the start; don't report its error
        # as never retrieved. A caller still waiting gets it all the same.
        self._start.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._chunks: asyncio.Queue[object] = asyncio.Queue()
        self._disconnected = asyncio.Event()
        self._task = loop.create_task(self._run(app, scope))

    async def started(self) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Wait for the response start; the app's exception if it fails before."""
        try:
            return await asyncio.shield(self._start)
        except asyncio.CancelledError:
            await self.disconnect()
            raise

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            item = await self._chunks.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise httpx.ReadError(f"the app failed while sending the body: {item!r}")
            assert isinstance(item, bytes)
            yield item

    async def disconnect(self) -> None:
        self._disconnected.set()
        if not self._task.done():
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task

    async def _run(self, app: ASGIApp, scope: Scope) -> None:
        try:
            await app(scope, self._receive, self._send)
        except asyncio.CancelledError:
            self._fail(httpx.ReadError("the request was cancelled"))
            raise
        except Exception as error:
            self._fail(error)
            return
        if not self._start.done():
            self._start.set_exception(httpx.RemoteProtocolError("the app sent no response"))
        self._chunks.put_nowait(_END)

    def _fail(self, error: BaseException) -> None:
        if not self._start.done():
            self._start.set_exception(error)
        else:
            self._chunks.put_nowait(error)

    async def _receive(self) -> Message:
        if self._body is not None:
            body, self._body = self._body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self._disconnected.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: Message) -> None:
        if self._disconnected.is_set():
            raise OSError("the client has disconnected")
        if message["type"] == "http.response.start":
            if not self._start.done():
                headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
                self._start.set_result((int(message["status"]), headers))
        elif message["type"] == "http.response.body":
            body = bytes(message.get("body", b""))
            if body:
                self._chunks.put_nowait(body)
            if not message.get("more_body", False):
                self._chunks.put_nowait(_END)


class _Body(httpx.AsyncByteStream):
    def __init__(self, exchange: _Exchange) -> None:
        self._exchange = exchange

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._exchange.chunks():
            yield chunk

    async def aclose(self) -> None:
        await self._exchange.disconnect()
