"""Protocol headers and JSON responses of the shape API, and the one error-mapping point.

Layer: ``syncd``. :func:`base_headers` are on every ``/v1/shape`` response; :func:`error_response`
is where every failure a request may meet (its own errors, a shape whose snapshot failed)
becomes a status and a JSON body; :func:`preflight` answers CORS preflights.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from shapes import messages
from shapes.errors import InvalidRequest
from shapes.where_eval import EvalError
from syncd.errors import (
    DatabaseUnavailable,
    QueryFailed,
    ReadNotAllowed,
    RowsRejected,
    SchemaChanged,
)

SERVER_HEADER = "syncd/0.1"
EXPOSED_HEADERS = (
    "electric-cursor,electric-handle,electric-has-data,electric-offset,electric-schema,"
    "electric-up-to-date,electric-internal-known-error,retry-after"
)


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
    if isinstance(exc, ReadNotAllowed):
        return bad_request({"table": [exc.description]})
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
