"""The ASGI application around a :class:`~syncd.http.ShapeApi`: ``GET /v1/shape`` answered
directly (:class:`SyncdApp`), every other route through a Starlette router, the JSON answers to
Starlette's own refusals and to bugs, path normalisation and the OpenAPI document.

Layer: ``syncd``.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from syncd.metrics import METRICS_PATH, Metrics, RequestMetrics, request_mode
from syncd.responses import json_response

if TYPE_CHECKING:
    from syncd.http import ShapeApi
    from syncd.metrics import MetricsEndpoint

SHAPE_PATH = "/v1/shape"


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (unknown path: 404, method: 405) as JSON error bodies."""
    assert isinstance(exc, HTTPException)
    messages_by_status = {404: "Not found", 405: "Method not allowed"}
    message = messages_by_status.get(exc.status_code, exc.detail)
    response = json_response({"message": message}, exc.status_code, cache="no-store")
    response.headers.update(exc.headers or {})
    return response


def _bug_response() -> Response:
    """A bug's answer: a JSON 500 that says nothing of the failure (the log has it)."""
    return json_response({"message": "Internal server error"}, 500, cache="no-store")


async def _internal_error(request: Request, exc: Exception) -> Response:
    return _bug_response()


async def _root(request: Request) -> Response:
    return Response(b"", status_code=200)


@functools.cache
def _openapi_document() -> bytes:
    return importlib.resources.files("syncd").joinpath("openapi.json").read_bytes()


async def _openapi(request: Request) -> Response:
    """``GET /v1/openapi.json``: the OpenAPI description of this API."""
    headers = {"cache-control": "public, max-age=3600"}
    return Response(_openapi_document(), headers=headers, media_type="application/json")


def create_app(
    api: ShapeApi,
    lifespan: Callable[[Starlette], Any] | None = None,
    *,
    metrics: MetricsEndpoint | None = None,
) -> SyncdApp:
    """The ASGI application serving the shape API (and ``GET /metrics`` when given its
    endpoint: then every request is counted and timed too)."""

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
    if metrics is not None:
        routes.append(Route(METRICS_PATH, metrics.handle, methods=["GET"]))
    router = Starlette(routes=routes, lifespan=lifespan)
    router.add_exception_handler(HTTPException, _http_error)
    router.add_exception_handler(Exception, _internal_error)
    if metrics is not None:  # outermost: it sees every response, the refusals' too
        router.add_middleware(RequestMetrics, metrics=metrics.metrics)
    return SyncdApp(api, router, None if metrics is None else metrics.metrics)


class SyncdApp:
    """The ASGI application: ``GET /v1/shape`` answered in this one frame, every other request
    (and the lifespan) passed to a Starlette router.

    Paths are normalised first: ``/v1/shape/``, ``/v1//shape`` (and, via ASGI's decoding,
    ``/v1/%73hape``) are ``/v1/shape``, so a proxy's path-based rules and syncd always agree on
    the endpoint.

    ``GET /v1/shape`` is the request every live client repeats, and a long-poll holds its
    coroutines for up to the live time-out. Through Starlette it would also hold the frames of
    the application, its error middleware and the metrics middleware (with a wrapped ``send``):
    about a fifth of the memory of a held request. So this frame does their work itself: it
    counts and times the request, and answers a bug with the JSON 500 (then re-raises it for
    the server to log, as Starlette does).
    """

    def __init__(self, api: ShapeApi, router: Starlette, metrics: Metrics | None) -> None:
        self.api = api
        self.router = router
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.router(scope, receive, send)
            return
        path = scope["path"]
        if path != SHAPE_PATH:
            path = normalise_path(path)
            if path != scope["path"]:
                scope = dict(scope, path=path, raw_path=path.encode())
        if path != SHAPE_PATH or scope["method"] != "GET":
            await self.router(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None
        try:
            try:
                response = await self.api.shape_request(Request(scope, receive))
            except Exception:
                status = 500
                await _bug_response()(scope, receive, send)
                raise
            status = response.status_code
            await response(scope, receive, send)
        finally:
            if self.metrics is not None:
                mode = request_mode(scope)
                self.metrics.response("shape", mode, status, time.perf_counter() - started)


def normalise_path(path: str) -> str:
    """Collapse repeated slashes and drop a trailing one."""
    collapsed = re.sub(r"/{2,}", "/", path)
    if len(collapsed) > 1 and collapsed.endswith("/"):
        collapsed = collapsed[:-1]
    return collapsed
