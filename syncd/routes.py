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
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlencode

import httpx
import psycopg
from pglast.parser import ParseError, scan
from psycopg import sql
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from shapes import messages
from shapes.client.stream import shared_tls_context
from shapes.errors import InvalidRequest
from shapes.request import QueryParams, ShapeRequest, read_query, shape_request, validate_params
from shapes.shape import parse_columns, parse_table
from shapes.subset import (
    SUBSET_KEYS,
    SubsetError,
    SubsetRequest,
    subset_from_body,
    subset_from_query,
)
from shapes.where import column_references
from syncd.embed import EMBEDDED_BASE_URL, EmbeddedSyncd
from syncd.http import (
    EXPOSED_HEADERS,
    MAX_BODY_BYTES,
    bad_request,
    base_headers,
    disconnected,
    json_bytes_response,
    json_response,
)

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


@dataclass(frozen=True)
class ShapeScope:
    """What the signed-in caller may see of the route's table.

    ``where`` uses ``$1..$n`` for ``params``; ``None`` means every row. ``columns`` ``None``
    means every column. ``key`` groups the caller's live requests for :meth:`ShapeRoutes.cut_off`
    (``None``: not tracked).
    """

    where: str | None = None
    params: Sequence[str] = ()
    columns: Sequence[str] | None = None
    key: str | None = None


Authorize = Callable[[Request], Awaitable[ShapeScope | Response]]


_QUERY_KEYWORDS = frozenset({"SELECT", "VALUES", "TABLE"})
"""Keywords that start a query (``WITH`` is followed by a ``SELECT``, and also appears in
``timestamp with time zone``): a client's clause may not read other rows or tables."""


def renumber_where(where: str, shift: int) -> str:
    """``where`` with every ``$n`` placeholder turned into ``$(n + shift)``.

    Raises:
        InvalidRequest: (``where``) if the text is not lexically complete, its parentheses
            are unbalanced or it holds a subquery.
    """
    try:
        tokens = scan(where)
    except ParseError as exc:
        raise InvalidRequest("where", str(exc)) from exc
    depth = 0
    out: list[str] = []
    position = 0
    for token in tokens:  # positions are character offsets, ``end`` inclusive
        if token.name == "ASCII_40":
            depth += 1
        elif token.name == "ASCII_41":
            depth -= 1
            if depth < 0:
                raise InvalidRequest("where", "unbalanced parentheses")
        elif token.name in _QUERY_KEYWORDS:
            raise InvalidRequest("where", "subqueries are not allowed")
        elif token.name == "PARAM":
            text = where[token.start : token.end + 1]
            if not (text.startswith("$") and text[1:].isascii() and text[1:].isdigit()):
                raise InvalidRequest("where", f"invalid parameter {text}")
            out.append(where[position : token.start])
            out.append(f"${int(text[1:]) + shift}")
            position = token.end + 1
    if depth != 0:
        raise InvalidRequest("where", "unbalanced parentheses")
    out.append(where[position:])
    return "".join(out)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Narrowed:
    """A client's request as checked and narrowed to a scope: ``query`` is what goes upstream
    (rebuilt from the checked values, never the client's text passed on), ``live`` whether it
    is a live request."""

    query: list[tuple[str, str]]
    live: bool


def upstream_query(
    items: Iterable[tuple[str, str]],
    table: str,
    scope: ShapeScope,
    subset: SubsetRequest | None = None,
) -> list[tuple[str, str]]:
    """The query to send upstream: the client's request narrowed to ``scope`` on ``table``.

    Raises:
        InvalidRequest: on a client ``where``, ``params``, ``columns`` or subset it may not send,
            or a protocol parameter given twice.
    """
    return narrow(items, table, scope, subset).query


def narrow(
    items: Iterable[tuple[str, str]],
    table: str,
    scope: ShapeScope,
    body_subset: SubsetRequest | None = None,
) -> Narrowed:
    """Read the client's query once (:func:`shapes.request.read_query`), check it and build the
    upstream query from the values checked. ``body_subset`` is a subset from a POST body.

    Raises:
        InvalidRequest: on a client ``where``, ``params``, ``columns`` or subset it may not send,
            or a protocol parameter given twice.
    """
    client = read_query(items)
    values = client.values
    position = {k: v for k, v in values.items() if k not in _DEFINITION_PARAMS}
    # offset, handle, live, live_sse, replica and log exactly as the upstream will read them
    checked = shape_request(QueryParams({**position, "table": table}))
    definition = checked.definition
    query: list[tuple[str, str]] = [("table", table), ("offset", _offset_text(checked))]
    if checked.handle is not None:
        query.append(("handle", checked.handle))
    if checked.live:
        query.append(("live", "true"))
    if checked.live_sse:
        query.append(("live_sse", "true"))
    if checked.cursor is not None:
        query.append(("cursor", checked.cursor))
    query += [("replica", definition.replica), ("log", definition.log)]
    query += [(name, values[name]) for name in _OPAQUE_PARAMS if name in values]
    query += _narrowed_where(values.get("where") or None, client.where_params, scope)
    columns = _columns(values.get("columns"), scope.columns)
    if columns is not None:
        query.append(("columns", ",".join(_quote(c) for c in columns)))
    if body_subset is not None and client.subset:
        raise SubsetError("where", "a subset goes in the query or in the body, not both")
    subset = body_subset if body_subset is not None else _query_subset(client.subset)
    if subset is not None:
        query += _subset_query(subset, scope.columns)
    return Narrowed(query, checked.live)


_DEFINITION_PARAMS = frozenset({"where", "columns", "table", "secret", "api_secret"})
_OPAQUE_PARAMS = ("expired_handle", "cache-buster")
"""Passed on as given: the client's cache keys, read by no server."""


def _offset_text(checked: ShapeRequest) -> str:
    return "now" if checked.offset is None else str(checked.offset)


def _narrowed_where(
    client_where: str | None, client_params: dict[str, str], scope: ShapeScope
) -> list[tuple[str, str]]:
    """``where`` and ``params[n]``: the scope's, AND-ed with the client's (renumbered)."""
    validate_params(client_params)
    app_params = list(scope.params)
    where = scope.where
    if client_where is not None:
        shifted = renumber_where(client_where, len(app_params))
        _check_references(client_where, scope.columns, InvalidRequest, "where")
        where = shifted if where is None else f"({where})\nAND ({shifted}\n)"
        app_params += [client_params[str(i)] for i in range(1, len(client_params) + 1)]
    if where is None:
        return []
    numbered = [(f"params[{i}]", value) for i, value in enumerate(app_params, start=1)]
    return [("where", where), *numbered]


def _check_references(
    text: str,
    allowed: Sequence[str] | None,
    error: type[InvalidRequest],
    field: str,
    *,
    order_by: bool = False,
) -> None:
    """Refuse a clause (or ORDER BY list) that does not parse on its own, or that names a
    column outside ``allowed`` (``None``: all are allowed); the 400 names each such column as
    the client wrote it.

    Raises:
        InvalidRequest: ``error(field, ...)``.
    """
    try:
        references = column_references(text, order_by=order_by)
    except InvalidRequest as exc:
        raise error(field, exc.message) from None
    if allowed is None:
        return
    refused = list(dict.fromkeys(r.text for r in references if r.name not in allowed))
    if refused:
        raise error(field, "The following columns are not allowed: " + ", ".join(refused))


def _query_subset(fields: dict[str, str]) -> SubsetRequest | None:
    if not fields:
        return None
    subset = subset_from_query({f"subset__{key}": value for key, value in fields.items()})
    return subset if subset is not None else SubsetRequest()


def _subset_query(subset: SubsetRequest, allowed: Sequence[str] | None) -> list[tuple[str, str]]:
    """The ``subset__*`` parameters of a checked subset (a subset without a ``where`` is sent
    as ``subset__where=true``, so that it still is one)."""
    if subset.params is not None:
        try:
            validate_params(dict(subset.params))
        except InvalidRequest as exc:
            raise SubsetError("params", exc.message) from None
    query = [("subset__where", subset.where or "true")]
    if subset.where is not None:
        _check_references(subset.where, allowed, SubsetError, "where")
    if subset.params:
        query.append(("subset__params", json.dumps(dict(subset.params))))
    if subset.order_by is not None:
        _check_references(subset.order_by, allowed, SubsetError, "order_by", order_by=True)
        query.append(("subset__order_by", subset.order_by))
    if subset.limit is not None:
        query.append(("subset__limit", str(subset.limit)))
    if subset.offset is not None:
        query.append(("subset__offset", str(subset.offset)))
    return query


def _columns(client: str | None, allowed: Sequence[str] | None) -> Sequence[str] | None:
    if client is None:
        return allowed
    asked = parse_columns(client)
    if allowed is not None:
        refused = [c for c in asked if c not in allowed]
        if refused:
            raise InvalidRequest(
                "columns", "The following columns are not allowed: " + ", ".join(refused)
            )
    return asked


def _cut_off_response() -> Response:
    headers = base_headers("no-store")
    return json_bytes_response(messages.MUST_REFETCH, headers, 409)


def private_cache_control(value: str | None) -> str:
    """``Cache-Control`` for one caller's eyes: ``public`` becomes ``private`` and ``s-maxage``
    (a shared cache's lifetime) goes; the other directives (``max-age``, ...) stay, so the
    caller's own cache behaves as the protocol expects. No value gives ``private, no-store``."""
    if not value:
        return "private, no-store"
    kept = [
        directive
        for part in value.split(",")
        if (directive := part.strip())
        and directive.lower() not in ("public", "private")
        and not directive.lower().startswith("s-maxage")
    ]
    return ", ".join(["private", *kept])


ETAG_SEPARATOR: Final = "~"


def scope_tag(scope: ShapeScope) -> str:
    """A short digest of ``scope``, appended to every ETag the routes hand out, so that a
    validator given to one caller never revalidates (304) a response for another."""
    columns = None if scope.columns is None else list(scope.columns)
    identity = json.dumps([scope.key, scope.where, list(scope.params), columns])
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def _bound_etag(etag: str, tag: str) -> str | None:
    """The upstream's strong ETag ``"X"`` as ``"X~tag"`` (``None`` for anything else)."""
    if len(etag) < 2 or not (etag.startswith('"') and etag.endswith('"')):
        return None
    return f'"{etag[1:-1]}{ETAG_SEPARATOR}{tag}"'


def _unbound_if_none_match(value: str, tag: str) -> str | None:
    """The validators of ``If-None-Match`` that were handed to this scope, as the upstream
    issued them; ``None`` when there are none."""
    suffix = ETAG_SEPARATOR + tag
    kept = [
        f'"{part[: -len(suffix)]}"'
        for raw in value.split(",")
        if (part := raw.strip().strip('"')).endswith(suffix)
    ]
    return ", ".join(kept) or None


class _Tracker:
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
"""HTTP clients a :class:`ShapeRoutes` spreads its upstream requests over: each live request
holds a connection, and httpx looks at every connection of its pool on each request, so a
thousand held requests in one pool would make each new one slow."""


def _upstream_clients() -> list[httpx.AsyncClient]:
    timeout = httpx.Timeout(10.0, read=120.0)
    # No connection limit: a held live request must never wait for another to end.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    tls = shared_tls_context()
    return [
        httpx.AsyncClient(timeout=timeout, limits=limits, verify=tls)
        for _ in range(UPSTREAM_CLIENTS)
    ]


DEFAULT_ALLOWED_HEADERS: Final = ("authorization", "content-type")
DEFAULT_VARY: Final = ("authorization", "cookie")


@dataclass(frozen=True)
class _Cors:
    """Who may call the routes from another origin (browsers' CORS)."""

    origins: frozenset[str]
    headers: tuple[str, ...]
    credentials: bool

    def allow_origin(self, request: Request) -> str | None:
        """The ``Access-Control-Allow-Origin`` for ``request`` (``None``: no CORS headers)."""
        origin = request.headers.get("origin")
        if "*" in self.origins:
            return "*"
        return origin if origin is not None and origin in self.origins else None

    def headers_for(self, request: Request) -> dict[str, str]:
        allowed = self.allow_origin(request)
        if allowed is None:
            return {}
        headers = {
            "access-control-allow-origin": allowed,
            "access-control-expose-headers": EXPOSED_HEADERS,
        }
        if self.credentials and allowed != "*":
            headers["access-control-allow-credentials"] = "true"
        return headers

    def preflight(self, request: Request) -> Response:
        """204; allows this origin (when listed) the routes' methods and the listed headers,
        never whatever the browser asks for."""
        headers = {"vary": "Origin", **self.headers_for(request)}
        if "access-control-allow-origin" in headers:
            headers["access-control-allow-methods"] = "GET, HEAD, POST, OPTIONS"
            headers["access-control-allow-headers"] = ", ".join(self.headers)
            headers["access-control-max-age"] = "86400"
        return Response(status_code=204, headers=headers)


class ShapeRoutes:
    """Shape routes proxied to one upstream syncd; owns the HTTP clients and the cut-off registry.

    ``upstream`` is the syncd base URL (``http://host:port``); ``secret`` is added to every
    upstream request as ``?secret=`` when the upstream runs with one. Without ``client``, the
    routes make their own clients (:data:`UPSTREAM_CLIENTS`, no connection limit); a ``client``
    given is used for every request, with its own limits, and closed by :meth:`aclose`.

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
        self._clients = [client] if client is not None else _upstream_clients()
        self._turn = itertools.cycle(self._clients)
        self._tracker = _Tracker()
        origins = frozenset(allowed_origins)
        self._cors = _Cors(origins, tuple(h.lower() for h in allowed_headers), allow_credentials)
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
        """Close the upstream HTTP clients (the one given too)."""
        for client in self._clients:
            await client.aclose()

    async def serve(self, request: Request, table: str, authorize: Authorize) -> Response:
        """One request: authorize, narrow, forward, stream back."""
        if request.method == "OPTIONS":
            return self._cors.preflight(request)
        scope = await authorize(request)
        if isinstance(scope, Response):
            return scope
        tag = scope_tag(scope)
        try:
            body_subset = await _body_subset(request) if request.method == "POST" else None
            narrowed = narrow(request.query_params.multi_items(), table, scope, body_subset)
        except InvalidRequest as exc:
            return self._finish(request, bad_request(exc.errors()), tag)
        except _BadBody as exc:
            return self._finish(request, json_response(exc.body, 400, cache="no-store"), tag)
        upstream = await self._forward(request, narrowed, scope, tag)
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
            validators = _unbound_if_none_match(headers.pop("if-none-match"), tag)
            if validators is not None:
                headers["if-none-match"] = validators
        headers["accept-encoding"] = "identity"
        client = next(self._turn)
        method = "HEAD" if request.method == "HEAD" else "GET"
        upstream_request = client.build_request(
            method, self.shape_url, params=urlencode(query), headers=headers
        )
        key = scope.key if narrowed.live else None
        cut = self._tracker.register(key)
        try:
            sending = client.send(upstream_request, stream=True)
            upstream = await _first(sending, cut, request)
        except BaseException:
            self._tracker.unregister(key, cut)
            raise
        if upstream is None:
            self._tracker.unregister(key, cut)
            return _cut_off_response()
        body = _relay(upstream, cut, lambda: self._tracker.unregister(key, cut))
        headers = _upstream_headers(upstream)
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
            bound = _bound_etag(etag, tag)
            if bound is not None:
                headers["etag"] = bound
        headers.update(self._cors.headers_for(request))
        return response


class _BadBody(Exception):
    """A POST body the routes do not take; ``body`` is the 400's JSON."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.body = body


_BODY_KEYS = frozenset({*SUBSET_KEYS, "subset"})


async def _body_subset(request: Request) -> SubsetRequest | None:
    """The subset a POST body describes (``None`` for an empty body or ``{}``).

    Only the subset keys are taken: a body may not override the query (``table``, ``where``,
    ``live``, ...), since the routes decide those.

    Raises:
        _BadBody: the body is too large, not JSON, not an object, or has other keys.
        InvalidRequest: a subset key is invalid.
    """
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _BadBody({"error": "Request body too large"})
    try:
        data = json.loads(body, parse_constant=_reject_constant) if body.strip() else {}
    except (ValueError, RecursionError):
        raise _BadBody({"error": "Invalid JSON in request body"}) from None
    if not isinstance(data, dict):
        raise _BadBody({"error": "Request body must be a JSON object"})
    others = sorted(key for key in data if key not in _BODY_KEYS)
    if others:
        raise _BadBody(
            {
                "message": "Invalid request",
                "errors": dict.fromkeys(others, ["is not allowed in the body"]),
            }
        )
    return subset_from_body(data)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _upstream_headers(upstream: httpx.Response) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in upstream.headers.multi_items():
        lowered = name.lower()
        if lowered not in HOP_BY_HOP:
            headers[lowered] = value
    return headers


async def _first(
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


async def _relay(
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


def shape_route(
    path: str, *, table: str, authorize: Authorize, upstream: str | ShapeRoutes
) -> Route:
    """One route to ``upstream`` (a syncd base URL, or a :class:`ShapeRoutes` to share)."""
    routes = upstream if isinstance(upstream, ShapeRoutes) else ShapeRoutes(upstream)
    return routes.route(path, table=table, authorize=authorize)


# -- writes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    """One write: ``insert`` uses ``values``; ``update`` sets ``values`` where ``key`` matches;
    ``delete`` removes the rows matching ``key``. ``table`` is ``tbl`` or ``schema.tbl``."""

    type: Literal["insert", "update", "delete"]
    table: str
    values: Mapping[str, Any] = field(default_factory=dict)
    key: Mapping[str, Any] = field(default_factory=dict)


def _mutation_sql(mutation: Mutation) -> tuple[sql.Composed, list[Any]]:
    schema, table = parse_table(mutation.table)
    target = sql.Identifier(schema, table)

    def matching(key: Mapping[str, Any]) -> sql.Composed:
        if not key:
            raise ValueError(f"{mutation.type} on {mutation.table} needs a key")
        return sql.SQL(" AND ").join(
            sql.SQL("{} = %s").format(sql.Identifier(name)) for name in key
        )

    if mutation.type == "insert":
        names = list(mutation.values)
        statement = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            target,
            sql.SQL(", ").join(map(sql.Identifier, names)),
            sql.SQL(", ").join(sql.Placeholder() * len(names)),
        )
        return statement, list(mutation.values.values())
    if mutation.type == "update":
        if not mutation.values:
            raise ValueError(f"update on {mutation.table} needs values")
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = %s").format(sql.Identifier(name)) for name in mutation.values
        )
        statement = sql.SQL("UPDATE {} SET {} WHERE {}").format(
            target, assignments, matching(mutation.key)
        )
        return statement, [*mutation.values.values(), *mutation.key.values()]
    if mutation.type == "delete":
        statement = sql.SQL("DELETE FROM {} WHERE {}").format(target, matching(mutation.key))
        return statement, list(mutation.key.values())
    raise ValueError(f"unknown mutation type: {mutation.type!r}")


async def apply_mutations(conn: psycopg.AsyncConnection[Any], mutations: Iterable[Mutation]) -> int:
    """Apply ``mutations`` in one transaction; returns its txid (for ``awaitTxId``).

    The txid is ``pg_current_xact_id()::xid``, the number the shape log puts in a change's
    ``txids``. Use a connection with no transaction open (autocommit or idle): inside an outer
    transaction this only makes a savepoint, and the changes appear when that one commits.
    """
    async with conn.transaction():
        for mutation in mutations:
            statement, values = _mutation_sql(mutation)
            await conn.execute(statement, values)
        cursor = await conn.execute("SELECT pg_current_xact_id()::xid::text")
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])
