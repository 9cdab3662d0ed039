"""Forwarding a narrowed request to the upstream syncd and relaying its answer back.

Layer: ``syncd``. The upstream request is raced against the caller's cut-off and the client's
disconnect (:func:`first_response`); the body is relayed chunk by chunk under the same stops
(:func:`relay`). Live requests are tracked per scope key (:class:`Tracker`) so that they can be
cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import httpx
from starlette.requests import Request
from starlette.responses import Response

from shapes import messages
from shapes.client.stream import shared_tls_context
from syncd.bodies import disconnected
from syncd.responses import base_headers, json_bytes_response

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        # recomputed by this server
        "content-length",
        "content-encoding",
        "date",
        "server",
    }
)
FORWARDED_REQUEST_HEADERS = ("if-none-match", "accept", "x-request-id")


def cut_off_response() -> Response:
    """The 409 ``must-refetch`` a live request cut off before the upstream answered gets."""
    headers = base_headers("no-store")
    return json_bytes_response(messages.MUST_REFETCH, headers, 409)


class Tracker:
    """The live requests in flight, per key."""

    def __init__(self) -> None:
        self.live: dict[str, set[asyncio.Event]] = {}

    def register(self, key: str | None) -> asyncio.Event:
        event = asyncio.Event()
        if key is not None:
            self.live.setdefault(key, set()).add(event)
        return event

    def unregister(self, key: str | None, event: asyncio.Event) -> None:
        events = self.live.get(key) if key is not None else None
        if events is not None:
            events.discard(event)
            if not events:
                del self.live[key]  # type: ignore[arg-type]


UPSTREAM_CLIENTS: Final = 8
"""HTTP clients a :class:`~syncd.routes.ShapeRoutes` spreads its upstream requests over: each
live request holds a connection, and httpx looks at every connection of its pool on each
request, so a thousand held requests in one pool would make each new one slow."""


def upstream_clients() -> list[httpx.AsyncClient]:
    timeout = httpx.Timeout(10.0, read=120.0)
    # No connection limit: a held live request must never wait for another to end.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    tls = shared_tls_context()
    return [
        httpx.AsyncClient(timeout=timeout, limits=limits, verify=tls)
        for _ in range(UPSTREAM_CLIENTS)
    ]


def upstream_headers(upstream: httpx.Response) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in upstream.headers.multi_items():
        lowered = name.lower()
        if lowered not in HOP_BY_HOP:
            headers[lowered] = value
    return headers


async def first_response(
    sending: Awaitable[httpx.Response], cut: asyncio.Event, request: Request
) -> httpx.Response | None:
    """The upstream response, or ``None`` if ``cut`` was set or the client left first."""
    send_task = asyncio.ensure_future(sending)
    stop_tasks = [asyncio.ensure_future(cut.wait()), asyncio.ensure_future(disconnected(request))]
    try:
        await asyncio.wait({send_task, *stop_tasks}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        send_task.cancel()
        send_task.add_done_callback(_retrieve)
        raise
    finally:
        for task in stop_tasks:
            task.cancel()
            task.add_done_callback(_retrieve)
    if send_task.done():
        return send_task.result()
    send_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await send_task
    return None


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a finished helper task's outcome as seen: an error of a task whose answer is no
    longer wanted (the upstream closed during shutdown, the client left) is not news."""
    if not task.cancelled():
        task.exception()


async def relay(
    upstream: httpx.Response, cut: asyncio.Event, done: Callable[[], None]
) -> AsyncIterator[bytes]:
    """The upstream body chunk by chunk, until it ends, ``cut`` is set or the client leaves.

    An upstream that breaks off mid-body (it shuts down, the connection drops) ends the body
    here too: the client sees a truncated response and reconnects.
    """
    chunks = upstream.aiter_raw()
    cut_task = asyncio.ensure_future(cut.wait())
    next_task: asyncio.Future[bytes] | None = None
    try:
        while True:
            next_task = asyncio.ensure_future(anext(chunks))
            await asyncio.wait({next_task, cut_task}, return_when=asyncio.FIRST_COMPLETED)
            if not next_task.done():
                return
            try:
                chunk = next_task.result()
            except (StopAsyncIteration, httpx.HTTPError):
                return
            yield chunk
    finally:
        cut_task.cancel()
        try:
            if next_task is not None:  # a read still running (cut, client gone, shutdown)
                next_task.cancel()
                next_task.add_done_callback(_retrieve)
                await asyncio.wait({next_task})
        finally:
            done()
            await upstream.aclose()
