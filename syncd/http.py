"""The HTTP API: Electric's shape protocol over Starlette.

Layer: ``syncd``. Endpoints parse the request, ask the engine for the shape, read its log and
render the protocol's headers and bodies (``protocol.md`` §3-§6): the initial and catch-up
requests, live long-polls held until the log grows, and live Server-Sent Events.

Every failure a request may meet becomes a status and a JSON body in one place,
:func:`error_response` (for the request's own errors and for a shape whose snapshot failed);
Starlette's own refusals (404, 405) and a bug's 500 are JSON too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import importlib.resources
import json
import logging
import math
import random
import re
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from shapes import messages
from shapes.errors import InvalidRequest
from shapes.offset import LogOffset
from shapes.request import ShapeRequest, parse_shape_request
from shapes.shape import CanonicalShape
from shapes.subset import (
    SUBSET_KEYS,
    SubsetError,
    SubsetRequest,
    subset_from_body,
    subset_from_query,
    validate_subset,
)
from shapes.where_eval import EvalError
from syncd.engine import Engine
from syncd.errors import (
    DatabaseUnavailable,
    QueryFailed,
    RowsRejected,
    SchemaChanged,
)
from syncd.shape_state import ShapeState, wait_briefly
from syncd.storage import ReadPlan

log = logging.getLogger("syncd.http")

SERVER_HEADER = "syncd/0.1"
EXPOSED_HEADERS = (
    "electric-cursor,electric-handle,electric-has-data,electric-offset,electric-schema,"
    "electric-up-to-date,electric-internal-known-error,retry-after"
)
CURSOR_EPOCH = 1728432000  # 2024-10-09T00:00:00Z
CACHE_INITIAL = "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746"
CACHE_LIVE = "public, max-age=5, stale-while-revalidate=5"
SSE_KEEPALIVE = b": keep-alive\n\n"
PIECE_BYTES = 16 * 1024
"""Log bytes read and handed to the transport at a time: a reader that stops reading holds at
most one piece (plus the small buffers of :mod:`syncd.send_deadline`) until the send deadline
closes it."""
SHAPE_PATH = "/v1/shape"
MAX_BODY_BYTES = 8 * 1024 * 1024
DRAIN_BYTES = 64 * 1024 * 1024
"""How much of a body over ``MAX_BODY_BYTES`` is read (and dropped) before the 413."""
DEFINITION_MISMATCH = (
    "The specified shape definition and handle do not match. Please ensure the shape "
    "definition is correct or omit the shape handle from the request to obtain a new one."
)
_POSITION_PARAMS = frozenset(
    {"handle", "offset", "live", "live_sse", "experimental_live_sse", "cursor"}
)


@dataclass(frozen=True)
class ApiSettings:
    """Knobs of the HTTP layer."""

    long_poll_timeout: float = 20.0
    sse_timeout: float = 60.0
    sse_keepalive: float = 21.0
    send_timeout: float = 30.0
    """Seconds a response may wait for its reader to drain what was sent before it is closed."""
    piece_bytes: int = PIECE_BYTES
    max_age: int = 60
    stale_age: int = 300
    secret: str | None = None
    allow_shape_deletion: bool = False
    snapshot_wait: float = 45.0
    max_initial_requests: int = 300
    max_existing_requests: int = 10_000


class Admission:
    """Counts requests in flight per kind and refuses those over the limit (503)."""

    def __init__(self, limits: dict[str, int]) -> None:
        self.limits = limits
        self.active = dict.fromkeys(limits, 0)

    @contextlib.contextmanager
    def admit(self, kind: str) -> Iterator[bool]:
        """Yields whether the request may proceed; counts it while it does."""
        if self.active[kind] >= self.limits[kind]:
            yield False
            return
        release = self.occupy(kind)
        try:
            yield True
        finally:
            release()

    def occupy(self, kind: str) -> Callable[[], None]:
        """Count a response that outlives its handler (an SSE stream) until the returned
        function is called; calling it again does nothing.

        Taken while the handler still holds its own count, so the request is never uncounted.
        """
        self.active[kind] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.active[kind] -= 1

        return release

    def refusal(self, kind: str) -> Response:
        """The protocol's overload answer."""
        limit = self.limits[kind]
        body = {
            "code": "concurrent_request_limit_exceeded",
            "message": f"Concurrent {kind} request limit exceeded (limit: {limit}), please retry",
        }
        response = json_response(body, 503, cache="no-store")
        response.headers["surrogate-control"] = "no-store"
        response.headers["retry-after"] = str(random.randint(6, 10))
        response.headers["electric-internal-known-error"] = "true"
        return response


class ShapeApi:
    """Request handlers bound to one engine."""

    def __init__(self, engine: Engine, settings: ApiSettings, health: Callable[[], str]) -> None:
        self.engine = engine
        self.settings = settings
        self.health = health
        self._closing_future: asyncio.Future[None] | None = None
        self.admission = Admission(
            {
                "initial": settings.max_initial_requests,
                "existing": settings.max_existing_requests,
            }
        )

    async def shape_request(self, request: Request) -> Response:
        """Every ``/v1/shape`` request but OPTIONS, under admission control."""
        kind = "initial" if request.query_params.get("offset") == "-1" else "existing"
        with self.admission.admit(kind) as admitted:
            if not admitted:
                return self.admission.refusal(kind)
            if request.method == "DELETE":
                return await self.delete_shape(request)
            if request.method == "POST":
                return await self.post_shape(request)
            return await self.get_shape(request)

    # -- entry points --------------------------------------------------------------------------

    async def get_shape(self, request: Request) -> Response:
        """``GET /v1/shape`` (and HEAD, and POST with a subset body)."""
        denied = self._check_secret(request)
        if denied is not None:
            return denied
        items = request.query_params.multi_items()
        return await self._answer(request, items, lambda: subset_from_query(dict(items)))

    async def post_shape(self, request: Request) -> Response:
        """``POST /v1/shape``: a subset snapshot described by the JSON body.

        The body's subset keys (``where``, ``params``, ``limit``, ``offset``, ``order_by``, ...,
        or a ``subset`` object) describe the subset; any other top-level key overrides the query
        parameter of that name. Every answer is ``cache-control: no-cache``.
        """
        response = await self._post_shape(request)
        response.headers["cache-control"] = "no-cache"
        return response

    async def _post_shape(self, request: Request) -> Response:
        denied = self._check_secret(request)
        if denied is not None:
            return denied
        body = await read_body(request, MAX_BODY_BYTES)
        if body is None:
            return json_response({"error": "Request body too large"}, 413, cache="no-cache")
        try:
            data = parse_json_body(body)
        except ValueError as exc:
            error = {"error": "Invalid JSON in request body", "details": str(exc)}
            return json_response(error, 400, cache="no-cache")
        if not isinstance(data, dict):
            error = {"error": "Request body must be a JSON object"}
            return json_response(error, 400, cache="no-cache")
        overrides = {
            k: v if isinstance(v, str) else json.dumps(v)
            for k, v in data.items()
            if k not in SUBSET_KEYS and k != "subset"
        }
        query = [(k, v) for k, v in request.query_params.multi_items() if k not in overrides]
        query.extend(overrides.items())
        return await self._answer(request, query, lambda: subset_from_body(data))

    async def _answer(
        self,
        request: Request,
        query: list[tuple[str, str]],
        find_subset: Callable[[], SubsetRequest | None],
    ) -> Response:
        """Serve a shape request (a log or a subset), mapping request errors to responses."""
        try:
            subset = find_subset()
            shape_request = parse_shape_request(query)
            if subset is not None:
                return await self._serve_subset(shape_request, subset)
            return await self._serve(request, shape_request)
        except Exception as exc:
            response = error_response(exc)
            if response is None:
                raise
            return response

    async def delete_shape(self, request: Request) -> Response:
        """``DELETE /v1/shape`` by definition or by handle."""
        denied = self._check_secret(request)
        if denied is not None:
            return denied
        if not self.settings.allow_shape_deletion:
            return json_response({"message": "DELETE not allowed"}, 405, cache="no-cache")
        query = request.query_params
        handle = query.get("handle") or None
        try:
            if "table" in query:
                definition = _definition_to_delete(query.multi_items())
                shape = self.engine.find(definition)
                if shape is not None and handle is not None and shape.handle != handle:
                    return json_response({"message": DEFINITION_MISMATCH}, 400, cache="no-cache")
            elif handle is None:
                raise InvalidRequest("handle", "can't be blank when shape definition is missing")
            else:
                shape = self.engine.get(handle)
        except InvalidRequest as exc:
            response = bad_request(exc.errors())
            response.headers["cache-control"] = "no-cache"
            return response
        if shape is None:
            return json_response({"message": "No existing shape found"}, 404, cache="no-cache")
        self.engine.delete(shape, "deleted through the API")
        return Response(status_code=202, headers=base_headers("no-cache"))

    async def options(self, request: Request) -> Response:
        """CORS preflight."""
        return preflight(request)

    async def health_check(self, request: Request) -> Response:
        """``GET /v1/health``."""
        status = self.health()
        code = 200 if status == "active" else 202
        cache = "no-cache, no-store, must-revalidate"
        return json_response({"status": status}, code, cache=cache)

    def _check_secret(self, request: Request) -> Response | None:
        secret = self.settings.secret
        if secret is None:
            return None
        given = request.query_params.get("secret") or request.query_params.get("api_secret")
        if given is not None and hmac.compare_digest(given.encode(), secret.encode()):
            return None
        body = json.dumps({"message": "Unauthorized - Invalid API secret"})
        headers = {"electric-server": SERVER_HEADER}
        return Response(body, 401, headers=headers, media_type="application/json")

    # -- serving -------------------------------------------------------------------------------

    async def _serve(self, request: Request, req: ShapeRequest) -> Response:
        shape, refetch = await self._resolve(req)
        if refetch is not None:
            return must_refetch(refetch)
        assert shape is not None
        if not await self._await_snapshot(shape):
            return self._after_loss(shape)
        if req.offset is None:
            return self._now_response(shape)
        offset = req.offset
        latest = shape.log.latest_offset
        if not offset.is_snapshot and offset > latest:
            if not await self._wait_for(shape, offset, self.settings.long_poll_timeout / 2):
                return bad_request({"offset": ["out of bounds for this shape"]})
        plan = shape.log.plan_read(offset)
        if req.live_sse and plan.empty:
            return self._sse(request, req, shape, offset)
        if req.live and plan.empty:
            plan = await self._hold(request, shape, offset)
            if shape.status == "gone":
                return self._after_loss(shape)
            if plan.empty:
                return self._live_timeout(req, shape, offset)
        if req.live_sse:
            return await self._sse_catch_up(req, shape, plan)
        return await self._log_response(request, req, shape, plan)

    async def _serve_subset(self, req: ShapeRequest, request: SubsetRequest) -> Response:
        shape, refetch = await self._resolve(req)
        if refetch is not None:
            return must_refetch(refetch)
        assert shape is not None
        if not await self._await_snapshot(shape):
            return self._after_loss(shape)
        subset = validate_subset(request, shape.table.by_name)
        if req.offset is None:
            end = shape.log.latest_offset
        else:
            end = shape.log.plan_read(req.offset).end
        try:
            body = await self.engine.subset(shape, subset)
        except RowsRejected as exc:
            raise SubsetError("where", exc.description) from exc
        headers = self._headers(shape, "no-cache")
        headers["electric-snapshot"] = "true"
        headers["electric-offset"] = str(end)
        headers["electric-schema"] = shape.schema_header
        return json_bytes_response(body, headers)

    async def _resolve(self, req: ShapeRequest) -> tuple[ShapeState | None, str | None]:
        """The shape to serve, or the handle to send with a 409."""
        definition = req.definition
        if req.handle is None:
            return await self.engine.get_or_create(definition), None
        shape = self.engine.get(req.handle)
        if shape is not None and shape.definition == definition:
            return shape, None
        current = await self.engine.get_or_create(definition)
        return None, current.handle

    async def _await_snapshot(self, shape: ShapeState) -> bool:
        if not shape.ready.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(shape.ready.wait(), self.settings.snapshot_wait)
        return shape.status == "ready"

    def _after_loss(self, shape: ShapeState) -> Response:
        if shape.failure is not None and shape.status == "gone":
            answer = error_response(shape.failure)
            if answer is not None:
                return answer
            return unavailable("Failed to create shape, please retry", retry_after=1)
        if not shape.ready.is_set():
            return unavailable("Snapshot is taking too long, please retry", retry_after=5)
        replacement = self.engine.find(shape.definition)
        return must_refetch(replacement.handle if replacement is not None else None)

    async def _wait_for(self, shape: ShapeState, offset: LogOffset, limit: float) -> bool:
        deadline = time.monotonic() + limit
        while shape.log.latest_offset < offset and shape.status == "ready":
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await wait_briefly((shape.notifier.wait(), self._closing()), remaining)
        return shape.status == "ready"

    async def _hold(self, request: Request, shape: ShapeState, offset: LogOffset) -> ReadPlan:
        """Wait for entries after ``offset`` up to the long-poll timeout; an empty plan when
        none came, the client went away or the server is shutting down."""
        deadline = time.monotonic() + self.settings.long_poll_timeout
        gone = asyncio.ensure_future(disconnected(request))
        closing = self._closing()
        try:
            while shape.status == "ready" and not gone.done() and not closing.done():
                waiter = shape.notifier.wait()
                plan = shape.log.plan_read(offset)
                if not plan.empty:
                    return plan
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                await wait_briefly((waiter, gone, closing), remaining)
        finally:
            if gone.done() and not gone.cancelled():
                gone.exception()  # a receive() that failed also ends the wait; don't log it
            gone.cancel()
        return ReadPlan(None, offset, offset)

    def _closing(self) -> asyncio.Future[None]:
        """Resolved by :meth:`release_live_requests`."""
        if self._closing_future is None:
            self._closing_future = asyncio.get_running_loop().create_future()
        return self._closing_future

    def release_live_requests(self) -> None:
        """Answer every held long-poll now and end every SSE stream (for shutting down), so
        that the server can stop without cancelling handlers."""
        closing = self._closing()
        if not closing.done():
            closing.set_result(None)

    # -- responses -----------------------------------------------------------------------------

    def _headers(self, shape: ShapeState, cache: str | None) -> dict[str, str]:
        headers = base_headers(cache)
        headers["electric-handle"] = shape.handle
        return headers

    def _cache_for(self, req: ShapeRequest) -> str:
        if req.is_initial:
            return CACHE_INITIAL
        if req.live:
            return CACHE_LIVE
        return self._cache_for_catch_up()

    async def _log_response(
        self, request: Request, req: ShapeRequest, shape: ShapeState, plan: ReadPlan
    ) -> Response:
        assert req.offset is not None
        end = plan.end
        headers = self._headers(shape, self._cache_for(req))
        headers["electric-offset"] = str(end)
        headers["electric-has-data"] = "true"
        headers["etag"] = f'"{shape.handle}:{req.offset}:{end}"'
        if req.live:
            headers["electric-cursor"] = self.next_cursor(req.cursor)
        tail: list[bytes] = []
        if not req.is_initial and end >= shape.log.latest_offset:
            headers["electric-up-to-date"] = ""
            lsn = end.tx if req.live else max(self.engine.last_seen_lsn, end.tx)
            tail.append(messages.up_to_date(lsn))
        if _etag_matches(request, headers["etag"]):
            return Response(status_code=304, headers=headers)
        if not req.live:
            headers["electric-schema"] = shape.schema_header
        pieces = self._pieces(shape, plan, tail)
        first = await anext(pieces)
        if first[1]:  # the whole body in one piece
            await pieces.aclose()
            return json_bytes_response(messages.json_array(first[0]), headers)
        return BoundedStreamingResponse(
            _json_array_body(first[0], pieces),
            self.settings.send_timeout,
            headers=headers,
            media_type="application/json",
        )

    async def _pieces(
        self, shape: ShapeState, plan: ReadPlan, tail: list[bytes]
    ) -> AsyncGenerator[tuple[list[bytes], bool], None]:
        """The entries ``plan`` names in pieces of about ``piece_bytes``, ``tail`` after the
        last one; each with whether it is the last."""
        size = self.settings.piece_bytes
        log = shape.log
        chunk = plan.snapshot_chunk
        if chunk is not None:
            position = 0
            while True:
                lines, position, done = await asyncio.to_thread(
                    log.read_snapshot_piece, chunk, position, size
                )
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

    def _now_response(self, shape: ShapeState) -> Response:
        headers = self._headers(shape, self._cache_for_catch_up())
        latest = shape.log.latest_offset
        headers["electric-offset"] = str(latest)
        headers["electric-has-data"] = "false"
        headers["electric-up-to-date"] = ""
        headers["electric-schema"] = shape.schema_header
        headers["etag"] = f'"{shape.handle}:now:{latest}:{time.monotonic_ns()}"'
        lsn = self.engine.last_seen_lsn or latest.tx
        body = messages.json_array([messages.up_to_date(lsn)])
        return json_bytes_response(body, headers)

    def _cache_for_catch_up(self) -> str:
        settings = self.settings
        return f"public, max-age={settings.max_age}, stale-while-revalidate={settings.stale_age}"

    def _live_timeout(self, req: ShapeRequest, shape: ShapeState, offset: LogOffset) -> Response:
        headers = self._headers(shape, CACHE_LIVE)
        headers["electric-offset"] = str(offset)
        headers["electric-has-data"] = "false"
        headers["electric-up-to-date"] = ""
        headers["electric-cursor"] = self.next_cursor(req.cursor)
        headers["etag"] = f'"{shape.handle}:{offset}:{offset}:{time.monotonic_ns()}"'
        lsn = self.engine.last_seen_lsn or shape.log.latest_offset.tx
        return json_bytes_response(messages.json_array([messages.up_to_date(lsn)]), headers)

    def _sse_headers(
        self, req: ShapeRequest, shape: ShapeState, offset: LogOffset
    ) -> dict[str, str]:
        sse_age = max(int(self.settings.sse_timeout) - 1, 0)
        headers = self._headers(shape, f"public, max-age={sse_age}")
        headers["electric-offset"] = str(offset)
        headers["electric-cursor"] = self.next_cursor(req.cursor)
        headers["electric-has-data"] = "true"
        headers["electric-up-to-date"] = ""
        headers["connection"] = "keep-alive"
        headers["etag"] = f'"{shape.handle}:{offset}:{offset}"'
        return headers

    async def _sse_catch_up(self, req: ShapeRequest, shape: ShapeState, plan: ReadPlan) -> Response:
        assert req.offset is not None
        headers = self._sse_headers(req, shape, req.offset)
        pieces = self._pieces(shape, plan, [messages.up_to_date(plan.end.tx)])
        first = await anext(pieces)
        if first[1]:
            await pieces.aclose()
            return Response(sse_data(first[0]), headers=headers, media_type="text/event-stream")
        return BoundedStreamingResponse(
            _sse_body(first[0], pieces),
            self.settings.send_timeout,
            headers=headers,
            media_type="text/event-stream",
        )

    def _sse(
        self, request: Request, req: ShapeRequest, shape: ShapeState, offset: LogOffset
    ) -> Response:
        headers = self._sse_headers(req, shape, offset)
        release = self.admission.occupy("existing")
        stream = self._sse_events(shape, offset, release)
        # A stream that is never iterated (the client left before the body) never reaches its
        # ``finally``; the finaliser releases its count then.
        weakref.finalize(stream, release)
        return BoundedStreamingResponse(
            stream, self.settings.send_timeout, headers=headers, media_type="text/event-stream"
        )

    async def _sse_events(
        self, shape: ShapeState, offset: LogOffset, release: Callable[[], None]
    ) -> AsyncGenerator[bytes, None]:
        """The live stream: the log after ``offset`` in pieces of at most ``piece_bytes`` as it
        grows, ``up-to-date`` whenever a piece reaches the log's end, keep-alives meanwhile.

        Each piece is sent before the next is read, so a reader that stops reading holds one
        piece, never the backlog (see :mod:`syncd.send_deadline`)."""
        closing = self._closing()
        position: int | None = None
        piece_bytes = self.settings.piece_bytes
        try:
            deadline = time.monotonic() + self.settings.sse_timeout
            last_sent = time.monotonic()
            while shape.status == "ready" and not closing.done():
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
                now = time.monotonic()
                if now >= deadline:
                    return
                if now - last_sent >= self.settings.sse_keepalive:
                    yield SSE_KEEPALIVE
                    last_sent = now
                timeout = min(deadline, last_sent + self.settings.sse_keepalive) - now
                await wait_briefly((waiter, closing), timeout)
        finally:
            release()

    def next_cursor(self, previous: str | None) -> str:
        """The ``electric-cursor``: the end of the current long-poll interval, always increasing."""
        interval = int(self.settings.long_poll_timeout)
        if interval <= 0:
            return "0"
        elapsed = time.time() - CURSOR_EPOCH
        upcoming = math.ceil(elapsed / interval) * interval
        try:
            before = int(previous or "0")
        except ValueError:
            before = 0
        if upcoming > before:
            return str(upcoming)
        return str(before + random.randint(1, 3600))


class BoundedStreamingResponse(StreamingResponse):
    """A streamed body whose every piece must be taken by the transport within
    ``send_timeout`` seconds; a reader that does not drain in time ends the response.

    Under ``python -m syncd`` the connection is aborted by :mod:`syncd.send_deadline` first;
    this bound keeps the handler from waiting forever under any other ASGI server.
    """

    def __init__(
        self,
        content: AsyncGenerator[bytes, None],
        send_timeout: float,
        headers: dict[str, str],
        media_type: str,
    ) -> None:
        super().__init__(content, headers=headers, media_type=media_type)
        self.pieces = content
        self.send_timeout = send_timeout

    async def stream_response(self, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        await send({**start, "headers": self.raw_headers})
        try:
            async for piece in self.pieces:
                async with asyncio.timeout(self.send_timeout):
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
        except TimeoutError:
            log.info("ending a response whose reader did not drain it in %g s", self.send_timeout)
            return
        finally:
            await self.pieces.aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _json_array_body(
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


async def _sse_body(
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


def _definition_to_delete(items: list[tuple[str, str]]) -> CanonicalShape:
    """The shape definition a ``DELETE`` names; request-position parameters are ignored."""
    kept = [(name, value) for name, value in items if name not in _POSITION_PARAMS]
    return parse_shape_request([*kept, ("offset", "-1")]).definition


def parse_json_body(body: bytes) -> Any:
    """The JSON value of a request body (``{}`` when blank).

    Raises:
        ValueError: when it is not JSON, nests too deeply, holds ``NaN``/``Infinity`` or a
            string that is no Unicode text (a lone surrogate, ``"\\ud800"``).
    """
    if not body.strip():
        return {}
    try:
        data = json.loads(body, parse_constant=_reject_constant)
        json.dumps(data, ensure_ascii=False).encode()
    except RecursionError:
        raise ValueError("nested too deeply") from None
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _etag_matches(request: Request, etag: str) -> bool:
    given = request.headers.get("if-none-match")
    if not given:
        return False
    wanted = etag.strip('"')
    return any(part.strip().strip('"') == wanted for part in given.split(","))


def preflight(request: Request) -> Response:
    """The CORS preflight answer: 204, allowing the headers the browser asks for."""
    headers = base_headers(None)
    headers["access-control-max-age"] = "86400"
    asked = request.headers.get("access-control-request-headers", "")
    allowed = [h.strip() for h in asked.lower().split(",") if h.strip()]
    if allowed:
        headers["access-control-allow-headers"] = ", ".join(allowed)
    origin = request.headers.get("origin")
    if origin:
        headers["access-control-allow-origin"] = origin
    return Response(status_code=204, headers=headers)


def base_headers(cache: str | None) -> dict[str, str]:
    """Headers every ``/v1/shape`` response carries."""
    headers = {
        "electric-server": SERVER_HEADER,
        "access-control-allow-origin": "*",
        "access-control-expose-headers": EXPOSED_HEADERS,
        "access-control-allow-methods": "GET, POST, HEAD, DELETE, OPTIONS",
    }
    if cache is not None:
        headers["cache-control"] = cache
    return headers


def json_bytes_response(body: bytes, headers: dict[str, str], status: int = 200) -> Response:
    """A JSON response from ready-made bytes."""
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def json_response(data: Any, status: int, *, cache: str | None) -> Response:
    """A JSON response from a value."""
    body = json.dumps(data, separators=(",", ":")).encode()
    return json_bytes_response(body, base_headers(cache), status)


def bad_request(errors: dict[str, list[str]]) -> Response:
    """The protocol's 400 body."""
    response = json_response(
        {"message": "Invalid request", "errors": errors}, 400, cache="no-store"
    )
    response.headers["surrogate-control"] = "no-store"
    return response


def error_response(exc: BaseException) -> Response | None:
    """The protocol's answer to a request that failed with ``exc``, or to a shape whose
    snapshot did; ``None`` for anything else (a bug, left to the server's 500).

    This is where every failure a request may meet becomes a status and a JSON body. Bodies
    quote the request at most, never Postgres's message, which may quote a row.
    """
    if isinstance(exc, InvalidRequest):
        return bad_request(exc.errors())
    if isinstance(exc, RowsRejected):
        # the where clause fails on the table's data (division by zero, bad cast, ...):
        # retrying cannot help, so this is the client's error
        return bad_request({"where": [exc.description]})
    if isinstance(exc, EvalError):
        return bad_request({"where": ["evaluating it on the table's rows failed"]})
    if isinstance(exc, SchemaChanged):
        return must_refetch(None)
    if isinstance(exc, DatabaseUnavailable):
        message = "Cannot connect to the database to verify the shape. Please try again later."
        return unavailable(message, retry_after=1)
    if isinstance(exc, QueryFailed):
        return unavailable(f"The query for the shape failed ({exc}), please retry", retry_after=1)
    return None


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request's body, or ``None`` when it is longer than ``limit`` bytes.

    A body over the limit is read on and dropped, up to ``DRAIN_BYTES`` in all, so that the
    client, still sending, reads the 413 instead of a reset connection; past that (or when the
    declared length is past it) the rest is left unread and the connection closes. Either way
    it costs no memory.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and len(declared) < 20 and int(declared) > DRAIN_BYTES:
        return None
    parts: list[bytes] = []
    size = 0
    try:
        async for part in request.stream():
            size += len(part)
            if size > DRAIN_BYTES:
                return None
            if size <= limit:
                parts.append(part)
    except ClientDisconnect:
        pass
    return None if size > limit else b"".join(parts)


def must_refetch(handle: str | None) -> Response:
    """A 409 that sends the client back to ``offset=-1`` (with the current handle if known)."""
    cache = (
        "public, max-age=60, must-revalidate" if handle else "public, max-age=1, must-revalidate"
    )
    headers = base_headers(cache)
    if handle:
        headers["electric-handle"] = handle
        headers["etag"] = f'"{handle}::"'
    return json_bytes_response(messages.MUST_REFETCH, headers, 409)


def unavailable(message: str, *, retry_after: int) -> Response:
    """A 503 with ``retry-after``."""
    response = json_response({"message": message}, 503, cache="no-store")
    response.headers["retry-after"] = str(retry_after)
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (unknown path: 404, method: 405) as JSON error bodies."""
    assert isinstance(exc, HTTPException)
    messages_by_status = {404: "Not found", 405: "Method not allowed"}
    message = messages_by_status.get(exc.status_code, exc.detail)
    response = json_response({"message": message}, exc.status_code, cache="no-store")
    response.headers.update(exc.headers or {})
    return response


async def _internal_error(request: Request, exc: Exception) -> Response:
    """A bug's answer: a JSON 500 that says nothing of the failure (the log has it)."""
    return json_response({"message": "Internal server error"}, 500, cache="no-store")


async def _root(request: Request) -> Response:
    return Response(b"", status_code=200)


@functools.cache
def _openapi_document() -> bytes:
    return importlib.resources.files("syncd").joinpath("openapi.json").read_bytes()


async def _openapi(request: Request) -> Response:
    """``GET /v1/openapi.json``: the OpenAPI description of this API."""
    headers = {"cache-control": "public, max-age=3600"}
    return Response(_openapi_document(), headers=headers, media_type="application/json")


def create_app(api: ShapeApi, lifespan: Callable[[Starlette], Any] | None = None) -> Starlette:
    """The Starlette application serving the shape API."""

    async def shape_endpoint(request: Request) -> Response:
        if request.method == "OPTIONS":
            return await api.options(request)
        return await api.shape_request(request)

    routes = [
        Route(SHAPE_PATH, shape_endpoint, methods=["GET", "HEAD", "POST", "DELETE", "OPTIONS"]),
        Route("/v1/health", api.health_check, methods=["GET", "HEAD"]),
        Route("/v1/openapi.json", _openapi, methods=["GET"]),
        Route("/", _root, methods=["GET", "HEAD"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(NormalisePath, shape_get=api.shape_request)
    return app


class NormalisePath:
    """Routes ``/v1/shape/``, ``/v1//shape`` (and, via ASGI's decoding, ``/v1/%73hape``) as
    ``/v1/shape``, so a proxy's path-based rules and syncd always agree on the endpoint.

    ``GET /v1/shape``, the request every live client repeats, goes to ``shape_get`` directly
    instead of through the router (about a fifth of the server's time per live request).
    """

    def __init__(
        self, app: ASGIApp, shape_get: Callable[[Request], Awaitable[Response]] | None = None
    ) -> None:
        self.app = app
        self.shape_get = shape_get

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = normalise_path(scope["path"])
            if path != scope["path"]:
                scope = dict(scope, path=path, raw_path=path.encode())
            if path == SHAPE_PATH and scope["method"] == "GET" and self.shape_get is not None:
                response = await self.shape_get(Request(scope, receive))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def normalise_path(path: str) -> str:
    """Collapse repeated slashes and drop a trailing one."""
    collapsed = re.sub(r"/{2,}", "/", path)
    if len(collapsed) > 1 and collapsed.endswith("/"):
        collapsed = collapsed[:-1]
    return collapsed
