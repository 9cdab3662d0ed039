"""The HTTP API: Electric's shape protocol over Starlette.

Layer: ``syncd``. :class:`ShapeApi` coordinates a request: it parses it, asks the engine for the
shape, waits for its snapshot or for the log to grow, and answers with the protocol's headers
and bodies (``docs/protocol.md``, "Reading a shape"): the initial and catch-up requests, live
long-polls held until the log grows, and live Server-Sent Events. Its collaborators own the
rest:

* :mod:`syncd.admission`: how many requests may be in flight (503 over the limit);
* :mod:`syncd.live_requests`: held long-polls and open SSE streams, counted, and released at
  shutdown;
* :mod:`syncd.shape_responses`: the answers to reads of a shape's log and of its live tail
  (long-poll and SSE), and the settings of the HTTP layer;
* :mod:`syncd.responses`: protocol headers, JSON bodies and :func:`error_response`, the one
  place where every failure a request may meet (its own errors, a shape whose snapshot failed)
  becomes a status and a JSON body;
* :mod:`syncd.bodies`: bodies streamed in bounded pieces, SSE framing and the live SSE stream;
* :mod:`syncd.cache_headers`: ``cache-control``, the cursor, ETag revalidation;
* :mod:`syncd.request_body`: reading a POST body;
* :mod:`syncd.asgi_app`: the ASGI app (``GET /v1/shape`` directly, the other routes through
  Starlette, path normalisation, OpenAPI; Starlette's own refusals, 404 and 405, and a bug's
  500 are JSON too);
* :mod:`syncd.metrics`: ``GET /metrics`` and the count and time of every response.

The names of those modules that other code imports from here are re-exported.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from shapes.errors import InvalidRequest
from shapes.offset import BEFORE_ALL, LogOffset
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
from syncd.admission import Admission
from syncd.asgi_app import SHAPE_PATH, SyncdApp, create_app, normalise_path
from syncd.bodies import (
    PIECE_BYTES,
    SSE_KEEPALIVE,
    BoundedStreamingResponse,
    disconnected,
    sse_data,
    yield_to_others,
)
from syncd.cache_headers import (
    CACHE_INITIAL,
    CACHE_LIVE,
    CURSOR_EPOCH,
)
from syncd.engine import Engine
from syncd.errors import RowsRejected
from syncd.live_requests import LiveRequests
from syncd.request_body import DRAIN_BYTES, MAX_BODY_BYTES, parse_json_body, read_body
from syncd.responses import (
    EXPOSED_HEADERS,
    SERVER_HEADER,
    bad_request,
    base_headers,
    error_response,
    json_bytes_response,
    json_response,
    must_refetch,
    preflight,
    unavailable,
)
from syncd.shape_responses import ApiSettings, ShapeResponses
from syncd.shape_state import ShapeState, wait_briefly
from syncd.storage import ReadPlan, SnapshotIncomplete

__all__ = [
    "CACHE_INITIAL",
    "CACHE_LIVE",
    "CURSOR_EPOCH",
    "DEFINITION_MISMATCH",
    "DELETE_REFUSED",
    "DRAIN_BYTES",
    "EXPOSED_HEADERS",
    "MAX_BODY_BYTES",
    "PIECE_BYTES",
    "SERVER_HEADER",
    "SHAPE_PATH",
    "SSE_KEEPALIVE",
    "Admission",
    "ApiSettings",
    "BoundedStreamingResponse",
    "ShapeApi",
    "SyncdApp",
    "bad_request",
    "base_headers",
    "create_app",
    "disconnected",
    "error_response",
    "json_bytes_response",
    "json_response",
    "must_refetch",
    "normalise_path",
    "parse_json_body",
    "preflight",
    "read_body",
    "sse_data",
    "unavailable",
    "yield_to_others",
]

DEFINITION_MISMATCH = (
    "The specified shape definition and handle do not match. Please ensure the shape "
    "definition is correct or omit the shape handle from the request to obtain a new one."
)
DELETE_REFUSED = (
    "DELETE not allowed: start syncd with --allow-shape-deletion "
    "(SYNCD_ALLOW_SHAPE_DELETION=true) to enable it"
)
_POSITION_PARAMS = frozenset(
    {"handle", "offset", "live", "live_sse", "experimental_live_sse", "cursor"}
)


class ShapeApi:
    """Request handlers bound to one engine."""

    def __init__(self, engine: Engine, settings: ApiSettings, health: Callable[[], str]) -> None:
        self.engine = engine
        self.settings = settings
        self.health = health
        self.admission = Admission(
            {
                "initial": settings.max_initial_requests,
                "existing": settings.max_existing_requests,
            }
        )
        self.live = LiveRequests(self.admission)
        """Held long-polls and open SSE streams."""
        self.responses = ShapeResponses(engine, settings, self.live)
        """What answers a request for a shape's log (or its live tail) looks like."""

    async def shape_request(self, request: Request) -> Response:
        """Every ``/v1/shape`` request but OPTIONS, under admission control.

        ``POST`` asks for a subset snapshot described by its JSON body: the body's subset keys
        (``where``, ``params``, ``limit``, ``offset``, ``order_by``, ..., or a ``subset`` object)
        describe the subset; any other top-level key overrides the query parameter of that
        name. Every answer to a POST is ``cache-control: no-cache``.
        """
        items = query_items(request)
        kind = "initial" if _last(items, "offset") == "-1" else "existing"
        with self.admission.admit(kind) as admitted:
            if not admitted:
                return self.admission.refusal(kind)
            if request.method == "DELETE":
                return await self.delete_shape(items)
            # GET, HEAD and POST are answered in this frame, with no coroutine of their own: a
            # held long-poll keeps its chain of frames for its whole life.
            post = request.method == "POST"
            denied = self._check_secret(items)
            if denied is not None:
                if post:
                    denied.headers["cache-control"] = "no-cache"
                return denied
            body: dict[str, Any] | None = None
            if post:
                read = await self._read_post(request, items)
                if isinstance(read, Response):
                    return read
                items, body = read
            try:
                subset = subset_from_query(dict(items)) if body is None else subset_from_body(body)
                shape_request = parse_shape_request(items)
                items.clear()  # consumed: not kept as long as a held request
                if subset is not None:
                    response = await self._serve_subset(shape_request, subset)
                else:
                    response = await self._serve(request, shape_request)
            except Exception as exc:
                mapped = error_response(exc)
                if mapped is None:
                    raise
                response = mapped
            if post:
                response.headers["cache-control"] = "no-cache"
            return response

    async def _read_post(
        self, request: Request, items: list[tuple[str, str]]
    ) -> tuple[list[tuple[str, str]], dict[str, Any]] | Response:
        """A POST's query (``items`` with the body's overrides) and JSON body, or the answer to
        a body that is too large or not a JSON object."""
        raw = await read_body(request, MAX_BODY_BYTES)
        if raw is None:
            return json_response({"error": "Request body too large"}, 413, cache="no-cache")
        try:
            data = parse_json_body(raw)
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
        query = [(k, v) for k, v in items if k not in overrides]
        query.extend(overrides.items())
        return query, data

    async def delete_shape(self, items: list[tuple[str, str]]) -> Response:
        """``DELETE /v1/shape`` by definition or by handle, its query parameters in ``items``."""
        denied = self._check_secret(items)
        if denied is not None:
            return denied
        if not self.settings.allow_shape_deletion:
            return json_response({"message": DELETE_REFUSED}, 405, cache="no-cache")
        handle = _last(items, "handle") or None
        try:
            if _last(items, "table") is not None:
                definition = _definition_to_delete(items)
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
        self.engine.delete(shape, "deleted through the API", cause="deleted")
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

    def _check_secret(self, items: list[tuple[str, str]]) -> Response | None:
        secret = self.settings.secret
        if secret is None:
            return None
        given = _last(items, "secret") or _last(items, "api_secret")
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
        deadline = time.monotonic() + self.settings.snapshot_wait
        if not shape.ready.is_set() and req.offset is not None:
            chunk = await self._closed_chunk(shape, req.offset, deadline)
            if chunk is not None:  # served while the rest of the snapshot is being written
                if req.live_sse:
                    return await self.responses.sse_catch_up(req, shape, chunk)
                return await self.responses.log(request, req, shape, chunk)
        if not await self._await_snapshot(shape, deadline):
            return self._after_loss(shape)
        if req.offset is None:
            return self.responses.now(shape)
        offset = req.offset
        latest = shape.log.latest_offset
        if not offset.is_snapshot and offset > latest:
            if not await self.live.wait_for(shape, offset, self.settings.long_poll_timeout / 2):
                return bad_request({"offset": ["out of bounds for this shape"]})
        plan = shape.log.plan_read(offset)
        if req.live_sse and plan.empty:
            return self.responses.sse(request, req, shape, offset)
        if req.live and plan.empty:
            del plan  # not kept while the request is held
            plan = await self.live.hold(request, shape, offset, self.settings.long_poll_timeout)
            if shape.status == "gone":
                return self._after_loss(shape)
            if plan.empty:
                return self.responses.live_timeout(req, shape, offset)
        if req.live_sse:
            return await self.responses.sse_catch_up(req, shape, plan)
        return await self.responses.log(request, req, shape, plan)

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
        headers = self.responses.headers(shape, "no-cache")
        headers["electric-snapshot"] = "true"
        headers["electric-offset"] = str(end)
        headers["electric-schema"] = shape.schema_header
        return json_bytes_response(body, headers)

    async def _resolve(self, req: ShapeRequest) -> tuple[ShapeState | None, str | None]:
        """The shape to serve, or the handle to send with a 409."""
        definition = req.definition
        if req.handle is None:
            created = await self.engine.get_or_create(definition)
            created.last_used = time.monotonic()
            return created, None
        shape = self.engine.get(req.handle)
        if shape is not None and shape.definition == definition:
            shape.last_used = time.monotonic()
            return shape, None
        current = await self.engine.get_or_create(definition)
        return None, current.handle

    async def _await_snapshot(self, shape: ShapeState, deadline: float | None = None) -> bool:
        if not shape.ready.is_set():
            if deadline is None:
                deadline = time.monotonic() + self.settings.snapshot_wait
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(shape.ready.wait(), max(0.0, deadline - time.monotonic()))
        return shape.status == "ready"

    async def _closed_chunk(
        self, shape: ShapeState, offset: LogOffset, deadline: float
    ) -> ReadPlan | None:
        """The read of the snapshot chunk after ``offset`` once that chunk is closed, while the
        snapshot is still being taken: a client receives a large snapshot as it is written.

        None when the answer needs the whole snapshot (a change-log offset, the snapshot's end,
        or the snapshot finished or failed meanwhile), or the deadline passed."""
        if not offset.is_snapshot and offset != BEFORE_ALL:
            return None
        while shape.status == "snapshotting" and not self.live.closing.done():
            waiter = shape.notifier.wait()
            with contextlib.suppress(SnapshotIncomplete):
                plan = shape.log.plan_read(offset)
                # a complete snapshot is only served once its buffered changes are in the log
                return plan if plan.snapshot_chunk is not None else None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            await wait_briefly((waiter, self.live.closing), remaining)
        return None

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

    def release_live_requests(self) -> None:
        """Answer every held long-poll now and end every SSE stream (for shutting down), so
        that the server can stop without cancelling handlers."""
        self.live.release_all()


def query_items(request: Request) -> list[tuple[str, str]]:
    """The request's query parameters in order, parsed as Starlette parses them.

    Not through ``request.query_params``: that caches two copies (a list and a dict) on the
    request, which a held long-poll or an open SSE stream keeps for its whole life.
    """
    query: bytes = request.scope.get("query_string", b"")
    return parse_qsl(query.decode("latin-1"), keep_blank_values=True)


def _last(items: list[tuple[str, str]], name: str) -> str | None:
    """The value of the last parameter called ``name`` (as ``query_params.get`` gives it)."""
    for key, value in reversed(items):
        if key == name:
            return value
    return None


def _definition_to_delete(items: list[tuple[str, str]]) -> CanonicalShape:
    """The shape definition a ``DELETE`` names; request-position parameters are ignored."""
    kept = [(name, value) for name, value in items if name not in _POSITION_PARAMS]
    return parse_shape_request([*kept, ("offset", "-1")]).definition
