"""Response bodies written in bounded pieces: JSON arrays and Server-Sent Events.

Layer: ``syncd``. A log is read and handed to the transport one piece (about
:data:`PIECE_BYTES`) at a time, each piece sent before the next is read, and every send bounded
by a deadline (:class:`BoundedStreamingResponse`): a reader that stops reading holds one piece,
never the backlog. :func:`live_sse_events` is the live SSE stream: the log as it grows,
``up-to-date`` at its end, keep-alives meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from shapes import messages
from shapes.offset import LogOffset
from syncd.send_deadline import connection_gone
from syncd.shape_state import ShapeState, Wakeup, wait_briefly
from syncd.storage import ReadPlan, ShapeLog

log = logging.getLogger("syncd.http")

SSE_KEEPALIVE = b": keep-alive\n\n"
PIECE_BYTES = 16 * 1024
"""Log bytes read and handed to the transport at a time: a reader that stops reading holds at
most one piece (plus the small buffers of :mod:`syncd.send_deadline`) until the send deadline
closes it."""
SNAPSHOT_PIECE_BYTES = 256 * 1024
"""The same for snapshot chunks in a JSON array body. Each of their pieces is read on a worker
thread, so pieces this size keep the thread hops (and sends) of a 10 MB chunk to about 40: a
first sync of a large table is limited by the disk and the socket, not by the hops."""


class BoundedStreamingResponse(StreamingResponse):
    """A streamed body whose every piece must be taken by the transport within
    ``send_timeout`` seconds; a reader that does not drain in time ends the response.

    Under ``python -m syncd`` the connection's own deadline (:mod:`syncd.send_deadline`)
    resets it, which ends the waiting send; under any other ASGI server a timer around each
    piece's send keeps the handler from waiting forever.
    """

    def __init__(
        self,
        content: AsyncGenerator[bytes, None],
        send_timeout: float,
        headers: dict[str, str],
        media_type: str,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(content, headers=headers, media_type=media_type)
        self.pieces = content
        self.send_timeout = send_timeout
        self.on_close = on_close
        """Called once the response has ended, however it ended."""

    gone: Wakeup | None = None
    """The connection's :func:`~syncd.send_deadline.connection_gone` signal, when it has one."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            gone = connection_gone(scope)
            if gone is None:  # Starlette's way: a task group with a task reading the disconnect
                await super().__call__(scope, receive, send)
                return
            self.gone = gone
            await self.stream_response(send)
        finally:
            if self.on_close is not None:
                self.on_close()

    async def stream_response(self, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        start["headers"] = self.raw_headers
        await send(start)
        # Sent: the message and the encoded headers (some forty small objects) need not live as
        # long as an SSE stream does.
        del start
        self.raw_headers = []
        gone = self.gone
        try:
            async for piece in self.pieces:
                if gone is not None and gone.done():
                    return
                message = {"type": "http.response.body", "body": piece, "more_body": True}
                if gone is None:
                    async with asyncio.timeout(self.send_timeout):
                        await send(message)
                else:  # the connection's deadline bounds the send (docstring)
                    await send(message)
        except TimeoutError:
            log.info("ending a response whose reader did not drain it in %g s", self.send_timeout)
            return
        finally:
            await self.pieces.aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def json_array_body(
    first: list[bytes], rest: AsyncGenerator[tuple[list[bytes], bool], None]
) -> AsyncGenerator[bytes, None]:
    """A JSON array of every piece's items, written piece by piece."""
    try:
        yield b"[" + b",".join(first)
        separator = b"," if first else b""
        async for items, _last in rest:
            if items:
                yield separator + b",".join(items)
                separator = b","
        yield b"]"
    finally:
        await rest.aclose()


async def sse_body(
    first: list[bytes], rest: AsyncGenerator[tuple[list[bytes], bool], None]
) -> AsyncGenerator[bytes, None]:
    """Every piece's items as Server-Sent Events, piece by piece."""
    try:
        yield sse_data(first)
        async for items, _last in rest:
            yield sse_data(items)
    finally:
        await rest.aclose()


async def yield_to_others() -> None:
    """Let the event loop run other work between two pieces of one body.

    A send that does not wait (a fast reader, or one that is gone: uvicorn drops what is sent
    after a disconnect) would otherwise let one response read a whole backlog in one go, and
    the disconnect listener never get to end it."""
    await asyncio.sleep(0)


def sse_data(items: list[bytes]) -> bytes:
    """Server-Sent Events, one ``data:`` event per message."""
    return b"".join(b"data: " + item + b"\n\n" for item in items)


async def disconnected(request: Request) -> None:
    """Return once the client has gone (the ASGI server sends ``http.disconnect``).

    For requests whose body has been read or is empty (GET): what comes before is dropped.
    """
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def log_pieces(
    log: ShapeLog,
    plan: ReadPlan,
    tail: list[bytes],
    size: int,
    *,
    snapshot_size: int | None = None,
) -> AsyncGenerator[tuple[list[bytes], bool], None]:
    """The entries ``plan`` names in pieces of about ``size`` bytes, ``tail`` after the last
    one; each with whether it is the last.

    With ``snapshot_size``, a snapshot chunk is read in pieces of that size whose lines come
    joined by commas into one item (for JSON array bodies); otherwise one item per line."""
    chunk = plan.snapshot_chunk
    if chunk is not None:
        read = log.read_snapshot_piece if snapshot_size is None else log.read_snapshot_joined
        piece_size = size if snapshot_size is None else snapshot_size
        position = 0
        small = log.snapshot_chunk_is_small(chunk)
        while True:
            if small:  # a few kilobytes in the page cache: a thread would cost more
                lines, position, done = read(chunk, position, piece_size)
            else:
                lines, position, done = await asyncio.to_thread(read, chunk, position, piece_size)
            yield ([*lines, *tail] if done else lines), done
            if done:
                return
            await yield_to_others()
    offset, place = plan.after, None
    while True:
        piece = log.read_piece(offset, size, place, until=plan.end)
        offset, place = piece.end, piece.position
        done = offset >= plan.end or not piece.items
        yield ([*piece.items, *tail] if done else piece.items), done
        if done:
            return
        await yield_to_others()


async def live_sse_events(
    shape: ShapeState,
    offset: LogOffset,
    closing: Wakeup,
    *,
    piece_bytes: int,
    duration: float,
    keepalive: float,
    gone: Wakeup | None = None,
) -> AsyncGenerator[bytes, None]:
    """The live stream: the log after ``offset`` in pieces of at most ``piece_bytes`` as it
    grows, ``up-to-date`` whenever a piece reaches the log's end, keep-alives meanwhile.

    Each piece is sent before the next is read, so a reader that stops reading holds one
    piece, never the backlog (see :mod:`syncd.send_deadline`). The stream ends after ``duration``
    seconds, when the shape is no longer ready, when ``closing`` resolves or when ``gone`` does
    (the connection was lost)."""
    position: int | None = None
    deadline = time.monotonic() + duration
    last_sent = time.monotonic()
    signals = (closing,) if gone is None else (closing, gone)
    while shape.status == "ready" and not any(signal.done() for signal in signals):
        waiter = shape.notifier.wait()
        piece = shape.log.read_piece(offset, piece_bytes, position)
        if piece.items:
            offset, position = piece.end, piece.position
            events = piece.items
            if offset >= shape.log.latest_offset:
                events.append(messages.up_to_date(offset.tx))
            data = sse_data(events)
            caught_up = offset >= shape.log.latest_offset
            del piece, events  # not held while the reader drains ``data``
            yield data
            del data
            last_sent = time.monotonic()
            if not caught_up:
                await yield_to_others()
            continue
        del piece  # an empty piece, not held while the stream idles
        now = time.monotonic()
        if now >= deadline:
            return
        if now - last_sent >= keepalive:
            yield SSE_KEEPALIVE
            last_sent = now
        wait = min(deadline, last_sent + keepalive) - now
        await wait_briefly((waiter, *signals), wait)
