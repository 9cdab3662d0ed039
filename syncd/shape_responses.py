"""The answers to reads of a shape: a piece of its log, its current end, a live long-poll that
timed out, and Server-Sent Events (a catch-up, or the live stream), with the protocol's headers.

Layer: ``syncd``. :class:`ShapeResponses` builds them for :class:`~syncd.http.ShapeApi`, which
decides which one a request gets (``docs/protocol.md``, "Reading a shape").
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from shapes import messages
from shapes.offset import LogOffset
from shapes.request import ShapeRequest
from syncd.bodies import (
    PIECE_BYTES,
    SNAPSHOT_PIECE_BYTES,
    BoundedStreamingResponse,
    json_array_body,
    live_sse_events,
    log_pieces,
    sse_body,
    sse_data,
)
from syncd.cache_headers import CACHE_LIVE, cache_for, catch_up_cache, etag_matches, next_cursor
from syncd.engine import Engine
from syncd.live_requests import LiveRequests
from syncd.responses import base_headers, json_bytes_response
from syncd.send_deadline import connection_gone
from syncd.shape_state import ShapeState
from syncd.storage import ReadPlan


@dataclass(frozen=True)
class ApiSettings:
    """Knobs of the HTTP layer."""

    long_poll_timeout: float = 20.0
    sse_timeout: float = 60.0
    sse_keepalive: float = 21.0
    send_timeout: float = 30.0
    """Seconds a response may wait for its reader to drain what was sent before it is closed."""
    piece_bytes: int = PIECE_BYTES
    snapshot_piece_bytes: int = SNAPSHOT_PIECE_BYTES
    max_age: int = 60
    stale_age: int = 300
    secret: str | None = None
    allow_shape_deletion: bool = False
    snapshot_wait: float = 45.0
    max_initial_requests: int = 300
    max_existing_requests: int = 10_000


class ShapeResponses:
    """Builds the answers to reads of shapes, for one engine and one set of settings."""

    def __init__(self, engine: Engine, settings: ApiSettings, live: LiveRequests) -> None:
        self.engine = engine
        self.settings = settings
        self.live = live

    def headers(self, shape: ShapeState, cache: str | None) -> dict[str, str]:
        headers = base_headers(cache)
        headers["electric-handle"] = shape.handle
        return headers

    def _cache_for(self, req: ShapeRequest) -> str:
        return cache_for(req, self.settings.max_age, self.settings.stale_age)

    async def log(
        self, request: Request, req: ShapeRequest, shape: ShapeState, plan: ReadPlan
    ) -> Response:
        assert req.offset is not None
        end = plan.end
        headers = self.headers(shape, self._cache_for(req))
        headers["electric-offset"] = str(end)
        headers["electric-has-data"] = "true"
        headers["etag"] = f'"{shape.handle}:{req.offset}:{end}"'
        if req.live:
            headers["electric-cursor"] = self.next_cursor(req.cursor)
        tail: list[bytes] = []
        if not req.is_initial and end >= shape.log.latest_offset:
            headers["electric-up-to-date"] = ""
            lsn = end.tx if req.live else max(self.engine.seen_lsn_for(shape), end.tx)
            tail.append(messages.up_to_date(lsn))
        if etag_matches(request, headers["etag"]):
            return Response(status_code=304, headers=headers)
        if not req.live:
            headers["electric-schema"] = shape.schema_header
        pieces = log_pieces(
            shape.log,
            plan,
            tail,
            self.settings.piece_bytes,
            snapshot_size=self.settings.snapshot_piece_bytes,  # one JSON array: lines joined
        )
        first = await anext(pieces)
        if first[1]:  # the whole body in one piece
            await pieces.aclose()
            return json_bytes_response(messages.json_array(first[0]), headers)
        return BoundedStreamingResponse(
            json_array_body(first[0], pieces),
            self.settings.send_timeout,
            headers=headers,
            media_type="application/json",
        )

    def now(self, shape: ShapeState) -> Response:
        headers = self.headers(shape, self._cache_for_catch_up())
        latest = shape.log.latest_offset
        headers["electric-offset"] = str(latest)
        headers["electric-has-data"] = "false"
        headers["electric-up-to-date"] = ""
        headers["electric-schema"] = shape.schema_header
        headers["etag"] = f'"{shape.handle}:now:{latest}:{time.monotonic_ns()}"'
        lsn = self.engine.seen_lsn_for(shape) or latest.tx
        body = messages.json_array([messages.up_to_date(lsn)])
        return json_bytes_response(body, headers)

    def _cache_for_catch_up(self) -> str:
        return catch_up_cache(self.settings.max_age, self.settings.stale_age)

    def live_timeout(self, req: ShapeRequest, shape: ShapeState, offset: LogOffset) -> Response:
        headers = self.headers(shape, CACHE_LIVE)
        headers["electric-offset"] = str(offset)
        headers["electric-has-data"] = "false"
        headers["electric-up-to-date"] = ""
        headers["electric-cursor"] = self.next_cursor(req.cursor)
        headers["etag"] = f'"{shape.handle}:{offset}:{offset}:{time.monotonic_ns()}"'
        lsn = self.engine.seen_lsn_for(shape) or shape.log.latest_offset.tx
        return json_bytes_response(messages.json_array([messages.up_to_date(lsn)]), headers)

    def _sse_headers(
        self, req: ShapeRequest, shape: ShapeState, offset: LogOffset
    ) -> dict[str, str]:
        sse_age = max(int(self.settings.sse_timeout) - 1, 0)
        headers = self.headers(shape, f"public, max-age={sse_age}")
        headers["electric-offset"] = str(offset)
        headers["electric-cursor"] = self.next_cursor(req.cursor)
        headers["electric-has-data"] = "true"
        headers["electric-up-to-date"] = ""
        headers["connection"] = "keep-alive"
        headers["etag"] = f'"{shape.handle}:{offset}:{offset}"'
        # nginx passes each event on at once and keeps the stream out of its cache
        headers["x-accel-buffering"] = "no"
        return headers

    async def sse_catch_up(self, req: ShapeRequest, shape: ShapeState, plan: ReadPlan) -> Response:
        assert req.offset is not None
        headers = self._sse_headers(req, shape, req.offset)
        tail = [messages.up_to_date(plan.end.tx)]
        # one event per message: snapshot lines are not joined
        pieces = log_pieces(shape.log, plan, tail, self.settings.piece_bytes)
        first = await anext(pieces)
        if first[1]:
            await pieces.aclose()
            return Response(sse_data(first[0]), headers=headers, media_type="text/event-stream")
        return BoundedStreamingResponse(
            sse_body(first[0], pieces),
            self.settings.send_timeout,
            headers=headers,
            media_type="text/event-stream",
        )

    def sse(
        self, request: Request, req: ShapeRequest, shape: ShapeState, offset: LogOffset
    ) -> Response:
        headers = self._sse_headers(req, shape, offset)
        release = self.live.stream_opened(shape)
        settings = self.settings
        stream = live_sse_events(
            shape,
            offset,
            self.live.closing,
            piece_bytes=settings.piece_bytes,
            duration=settings.sse_timeout,
            keepalive=settings.sse_keepalive,
            gone=connection_gone(request.scope),
        )
        return BoundedStreamingResponse(
            stream,
            self.settings.send_timeout,
            headers=headers,
            media_type="text/event-stream",
            on_close=release,
        )

    def next_cursor(self, previous: str | None) -> str:
        """The ``electric-cursor``: the end of the current long-poll interval, always increasing."""
        return next_cursor(previous, self.settings.long_poll_timeout)
