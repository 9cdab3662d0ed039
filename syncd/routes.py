"""Shape endpoints mounted inside an application's own Starlette app, behind its own auth.

Layer: ``syncd``. An application serves ``GET /my/items`` itself, decides who the caller is,
and forwards the request to a (remote) syncd in Electric's protocol, narrowed to what that
caller may see::

    routes = ShapeRoutes("http://127.0.0.1:3000")
    app = Starlette(routes=[routes.route("/api/items", table="items", authorize=auth)],
                    lifespan=...)  # call ``await routes.aclose()`` on shutdown

    async def auth(request):
        user = ...                      # from a cookie, a bearer token, ...
        if user is None:
            return Response(status_code=401)
        return ShapeScope(where="owner = $1", params=[user], key=user)

Rules (the boundary; the adversary tests in ``tests/syncd/test_routes_adversary.py`` hold it):

* **One parse.** The query is read once with the daemon's own rule
  (:func:`shapes.request.read_query`): a protocol parameter given twice, or a ``params`` key that
  is not a canonical number (``params[01]``), is a 400. Position and mode (``offset``,
  ``handle``, ``live``, ``live_sse``/``experimental_live_sse``, ``cursor``, ``replica``,
  ``log``) are validated as the upstream will validate them, and the upstream query is rebuilt
  from the checked values; no client text is passed on unchecked. Other parameters are dropped.
* The table is fixed by the route: a client's ``table`` parameter is ignored.
* The client may only narrow. Its ``where`` is AND-ed with the application's,
  ``(app where) AND (client where)``, and its ``$n`` placeholders are renumbered after the
  application's params. The client's text is scanned first (pglast's lexer): it must be lexically
  complete (no unterminated string, identifier or comment) and its parentheses balanced, so it
  cannot close the surrounding parenthesis and escape the AND; it must also parse on its own as
  one clause.
* **Hidden columns stay hidden.** ``columns`` must be a subset of :attr:`ShapeScope.columns`
  (when set); without ``columns`` the client gets the allowed ones. The client's ``where``, and a
  subset's ``where`` and ``order_by`` (GET ``subset__*``/``subset[*]`` or a POST body), may only
  refer to allowed columns: a 400 names the first column it may not, as the client wrote it.
* A subset (``subset__*`` keys, or a POST body with only the subset keys ``where``, ``params``,
  ``limit``, ``offset``, ``order_by``) is checked and sent upstream as ``subset__*`` keys; the
  upstream evaluates it inside the shape's ``where``. DELETE is not served.
* The upstream answer is streamed back: status, protocol headers and body (SSE included),
  minus hop-by-hop headers, with the caller's caching: ``Cache-Control`` becomes ``private``
  (no ``s-maxage``), ``Vary`` names the credential headers, and an ETag is bound to the
  caller's scope, so a validator issued to one caller never earns another a 304. CORS headers
  come from the routes' own settings (none by default), never from the upstream. The client's
  ``Authorization`` and cookies are not forwarded. When the client disconnects (while waiting
  for the upstream's answer or while streaming it) the upstream request is closed.

Cut-off (:meth:`ShapeRoutes.cut_off`): live requests (``live=true``, long-poll or SSE) are
tracked under :attr:`ShapeScope.key`. Cutting a key off ends them at once:

* a long-poll still waiting for the upstream answers **409** ``must-refetch`` (no handle,
  ``cache-control: no-store``): the client drops its rows and starts again at ``offset=-1``,
  re-authorized with the new permissions;
* a response already streaming (an SSE stream) simply ends; the client reconnects, is
  re-authorized, and, because its narrowed ``where`` differs, gets a 409 from the upstream
  (definition mismatch) and refetches.

:class:`ShapeRoutes` coordinates one request; its collaborators own the parts:
:mod:`syncd.route_scope` (the scope, narrowing and the checks of the client's expressions),
:mod:`syncd.route_relay` (the upstream request, the relay and the cut-off registry),
:mod:`syncd.route_headers` (private caching, scope-bound ETags, CORS) and :mod:`syncd.mutations`
(writes). The names other code imports from here are re-exported.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import urlencode

import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from shapes.errors import InvalidRequest
from shapes.shape import parse_table
from syncd.embed import EMBEDDED_BASE_URL, EmbeddedSyncd
from syncd.mutations import Mutation, apply_mutations
from syncd.responses import bad_request, json_response
from syncd.route_headers import (
    DEFAULT_ALLOWED_HEADERS,
    DEFAULT_VARY,
    ETAG_SEPARATOR,
    Cors,
    bound_etag,
    private_cache_control,
    scope_tag,
    unbound_if_none_match,
)
from syncd.route_relay import (
    FORWARDED_REQUEST_HEADERS,
    HOP_BY_HOP,
    AiohttpUpstream,
    HttpxUpstream,
    Tracker,
    Upstream,
    UpstreamUnavailable,
    cut_off_response,
    first_response,
    relay,
    upstream_unavailable,
)
from syncd.route_scope import (
    Authorize,
    BadBody,
    Narrowed,
    ShapeScope,
    narrow,
    read_body_subset,
    renumber_where,
    upstream_query,
)

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ALLOWED_HEADERS",
    "DEFAULT_VARY",
    "ETAG_SEPARATOR",
    "FORWARDED_REQUEST_HEADERS",
    "HOP_BY_HOP",
    "Authorize",
    "Mutation",
    "Narrowed",
    "ShapeRoutes",
    "ShapeScope",
    "UpstreamUnavailable",
    "apply_mutations",
    "narrow",
    "private_cache_control",
    "renumber_where",
    "scope_tag",
    "shape_route",
    "upstream_query",
]


class ShapeRoutes:
    """Shape routes proxied to one upstream syncd; owns the HTTP clients and the cut-off registry.

    ``upstream`` is the syncd base URL (``http://host:port``); ``secret`` is added to every
    upstream request as ``?secret=`` when the upstream runs with one. Without ``client``, the
    routes make their own HTTP client (aiohttp, no connection limit); an ``httpx`` ``client``
    given is used for every request instead, with its own limits, and closed by :meth:`aclose`.
    An upstream that cannot be reached is a 503 with ``Retry-After: 1`` (clients retry it).

    Browsers on other origins may call the routes only from ``allowed_origins`` (none by
    default; ``"*"`` for any, without credentials), sending ``allowed_headers``; with
    ``allow_credentials`` they may send cookies. Every response is ``Cache-Control: private``
    and carries ``Vary`` on the ``vary`` request headers (the ones holding the caller's
    credentials; ``Authorization`` and ``Cookie`` by default).
    """

    def __init__(
        self,
        upstream: str,
        *,
        secret: str | None = None,
        client: httpx.AsyncClient | None = None,
        allowed_origins: Iterable[str] = (),
        allowed_headers: Iterable[str] = DEFAULT_ALLOWED_HEADERS,
        allow_credentials: bool = False,
        vary: Iterable[str] = DEFAULT_VARY,
    ) -> None:
        self.shape_url = upstream.rstrip("/") + "/v1/shape"
        self.secret = secret
        self._upstream: Upstream = AiohttpUpstream() if client is None else HttpxUpstream(client)
        self._tracker = Tracker()
        origins = frozenset(allowed_origins)
        self._cors = Cors(origins, tuple(h.lower() for h in allowed_headers), allow_credentials)
        varies = [*(h.lower() for h in vary), *(["origin"] if origins else [])]
        self._vary = ", ".join(dict.fromkeys(varies))

    @classmethod
    def in_process(
        cls, embedded: EmbeddedSyncd, *, secret: str | None = None, **settings: Any
    ) -> ShapeRoutes:
        """Routes backed by a syncd embedded in this process (no network hop); live long-polls
        and SSE streams pass through as they do from a remote syncd. ``settings`` are the other
        keyword arguments of :class:`ShapeRoutes`."""
        client = embedded.client(timeout=httpx.Timeout(10.0, read=120.0))
        return cls(EMBEDDED_BASE_URL, secret=secret, client=client, **settings)

    def route(self, path: str, *, table: str, authorize: Authorize) -> Route:
        """A Starlette route serving the shape protocol on ``path`` for ``table`` only."""
        parse_table(table)  # fail early on a bad table name

        async def endpoint(request: Request) -> Response:
            return await self.serve(request, table, authorize)

        return Route(path, endpoint, methods=["GET", "HEAD", "POST", "OPTIONS"])

    def live_requests(self, key: str) -> int:
        """How many live requests of ``key`` are in flight."""
        return len(self._tracker.live.get(key, ()))

    def cut_off(self, key: str) -> int:
        """End every in-flight live request of ``key``; returns how many were ended."""
        events = self._tracker.live.pop(key, set())
        for event in events:
            event.set()
        return len(events)

    async def aclose(self) -> None:
        """Close the upstream HTTP client (the one given too)."""
        await self._upstream.aclose()

    async def serve(self, request: Request, table: str, authorize: Authorize) -> Response:
        """One request: authorize, narrow, forward, stream back."""
        if request.method == "OPTIONS":
            return self._cors.preflight(request)
        scope = await authorize(request)
        if isinstance(scope, Response):
            return scope
        tag = scope_tag(scope)
        try:
            body_subset = await read_body_subset(request) if request.method == "POST" else None
            narrowed = narrow(request.query_params.multi_items(), table, scope, body_subset)
        except InvalidRequest as exc:
            return self._finish(request, bad_request(exc.errors()), tag)
        except BadBody as exc:
            return self._finish(request, json_response(exc.body, 400, cache="no-store"), tag)
        try:
            upstream = await self._forward(request, narrowed, scope, tag)
        except UpstreamUnavailable as exc:
            log.warning("upstream syncd unavailable: %s", exc)
            return self._finish(request, upstream_unavailable(), tag)
        if isinstance(upstream, Response):
            return self._finish(request, upstream, tag)
        response, body = upstream
        return self._finish(request, StreamingResponse(body, **response), tag)

    async def _forward(
        self, request: Request, narrowed: Narrowed, scope: ShapeScope, tag: str
    ) -> Response | tuple[dict[str, Any], AsyncIterator[bytes]]:
        query = narrowed.query
        if self.secret is not None:
            query = [*query, ("secret", self.secret)]
        headers = {h: request.headers[h] for h in FORWARDED_REQUEST_HEADERS if h in request.headers}
        if "if-none-match" in headers:
            validators = unbound_if_none_match(headers.pop("if-none-match"), tag)
            if validators is not None:
                headers["if-none-match"] = validators
        headers["accept-encoding"] = "identity"
        key = scope.key if narrowed.live else None
        cut = self._tracker.register(key)
        try:
            sending = self._upstream.send(
                self.shape_url, urlencode(query), headers, head=request.method == "HEAD"
            )
            upstream = await first_response(sending, cut, request)
        except BaseException:
            self._tracker.unregister(key, cut)
            raise
        if upstream is None:
            self._tracker.unregister(key, cut)
            return cut_off_response()
        body = relay(upstream, cut, lambda: self._tracker.unregister(key, cut))
        headers = upstream.headers
        if request.method == "POST":
            headers["cache-control"] = "no-cache"
        return {"status_code": upstream.status_code, "headers": headers}, body

    def _finish(self, request: Request, response: Response, tag: str) -> Response:
        """The caller's copy of ``response``: private caching, ``Vary``, an ETag bound to the
        caller's scope, and CORS headers for allowed origins only."""
        headers = response.headers
        for name in [n for n in headers if n.startswith("access-control-")]:
            del headers[name]
        headers["cache-control"] = private_cache_control(headers.get("cache-control"))
        if self._vary:
            headers["vary"] = self._vary
        etag = headers.get("etag")
        if etag is not None:
            del headers["etag"]
            bound = bound_etag(etag, tag)
            if bound is not None:
                headers["etag"] = bound
        headers.update(self._cors.headers_for(request))
        return response


def shape_route(
    path: str, *, table: str, authorize: Authorize, upstream: str | ShapeRoutes
) -> Route:
    """One route to ``upstream`` (a syncd base URL, or a :class:`ShapeRoutes` to share)."""
    routes = upstream if isinstance(upstream, ShapeRoutes) else ShapeRoutes(upstream)
    return routes.route(path, table=table, authorize=authorize)


# -- writes ------------------------------------------------------------------------------------
