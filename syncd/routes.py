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

Rules:

* The table is fixed by the route: a client's ``table`` parameter is ignored.
* The client may only narrow. Its ``where`` is AND-ed with the application's,
  ``(app where) AND (client where)``, and its ``$n`` placeholders are renumbered after the
  application's params. The client's text is scanned first (pglast's lexer): it must be lexically
  complete (no unterminated string, identifier or comment) and its parentheses balanced, so it
  cannot close the surrounding parenthesis and escape the AND.
* ``columns`` must be a subset of :attr:`ShapeScope.columns` (when set), otherwise 400 in the
  protocol's error body; without ``columns`` the client gets the allowed ones.
* ``offset``, ``handle``, ``live``, ``cursor``, ``live_sse``, ``experimental_live_sse``, ``log``,
  ``replica``, ``expired_handle``, ``cache-buster`` and the GET ``subset__*`` keys pass through
  (a subset is evaluated inside the shape's ``where`` by the upstream). Other parameters are
  dropped. POST and DELETE are not served.
* The upstream answer is streamed back as is: status, protocol headers and body (SSE included),
  minus hop-by-hop headers. The client's ``Authorization`` and cookies are not forwarded. When the
  client disconnects (while waiting for the upstream's answer or while streaming it) the upstream
  request is closed.

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
import itertools
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
from shapes.request import validate_params
from shapes.shape import parse_columns, parse_table
from syncd.embed import EMBEDDED_BASE_URL, EmbeddedSyncd
from syncd.http import bad_request, base_headers, disconnected, json_bytes_response, preflight

PASS_THROUGH = frozenset(
    {
        "offset",
        "handle",
        "live",
        "cursor",
        "live_sse",
        "experimental_live_sse",
        "log",
        "replica",
        "expired_handle",
        "cache-buster",
    }
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


def _truthy(value: str | None) -> bool:
    return value is not None and value != "false"


def renumber_where(where: str, shift: int) -> str:
    """``where`` with every ``$n`` placeholder turned into ``$(n + shift)``.

    Raises:
        InvalidRequest: (``where``) if the text is not lexically complete or its parentheses
            are unbalanced.
    """
    raw = where.encode()
    try:
        tokens = scan(where)
    except ParseError as exc:
        raise InvalidRequest("where", str(exc)) from exc
    depth = 0
    out: list[bytes] = []
    position = 0
    for token in tokens:  # positions are byte offsets, ``end`` inclusive
        if token.name == "ASCII_40":
            depth += 1
        elif token.name == "ASCII_41":
            depth -= 1
            if depth < 0:
                raise InvalidRequest("where", "unbalanced parentheses")
        elif token.name == "PARAM":
            number = int(raw[token.start + 1 : token.end + 1])
            out.append(raw[position : token.start])
            out.append(b"$%d" % (number + shift))
            position = token.end + 1
    if depth != 0:
        raise InvalidRequest("where", "unbalanced parentheses")
    out.append(raw[position:])
    return b"".join(out).decode()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def upstream_query(
    items: Iterable[tuple[str, str]], table: str, scope: ShapeScope
) -> list[tuple[str, str]]:
    """The query to send upstream: the client's request narrowed to ``scope`` on ``table``.

    Raises:
        InvalidRequest: on a client ``where``, ``params`` or ``columns`` it may not send.
    """
    query: list[tuple[str, str]] = [("table", table)]
    client_where: str | None = None
    client_params: dict[str, str] = {}
    client_columns: str | None = None
    for name, value in items:
        if name in PASS_THROUGH or name.startswith("subset__"):
            query.append((name, value))
        elif name == "where":
            client_where = client_where or value or None
        elif name == "columns":
            client_columns = value if client_columns is None else client_columns
        elif name.startswith("params[") and name.endswith("]"):
            client_params.setdefault(name[len("params[") : -1], value)
    app_params = list(scope.params)
    where = scope.where
    if client_where is not None:
        validate_params(client_params)
        shifted = renumber_where(client_where, len(app_params))
        where = shifted if where is None else f"({where})\nAND ({shifted}\n)"
        app_params += [client_params[str(i)] for i in range(1, len(client_params) + 1)]
    if where is not None:
        query.append(("where", where))
        query.extend((f"params[{i}]", value) for i, value in enumerate(app_params, start=1))
    columns = _columns(client_columns, scope.columns)
    if columns is not None:
        query.append(("columns", ",".join(_quote(c) for c in columns)))
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


def _response_headers(upstream: httpx.Response) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in upstream.headers.multi_items():
        lowered = name.lower()
        if lowered not in HOP_BY_HOP:
            headers[lowered] = value
    return headers


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


class ShapeRoutes:
    """Shape routes proxied to one upstream syncd; owns the HTTP clients and the cut-off registry.

    ``upstream`` is the syncd base URL (``http://host:port``); ``secret`` is added to every
    upstream request as ``?secret=`` when the upstream runs with one. Without ``client``, the
    routes make their own clients (:data:`UPSTREAM_CLIENTS`, no connection limit); a ``client``
    given is used for every request, with its own limits, and closed by :meth:`aclose`.
    """

    def __init__(
        self,
        upstream: str,
        *,
        secret: str | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.shape_url = upstream.rstrip("/") + "/v1/shape"
        self.secret = secret
        self._clients = [client] if client is not None else _upstream_clients()
        self._turn = itertools.cycle(self._clients)
        self._tracker = _Tracker()

    @classmethod
    def in_process(cls, embedded: EmbeddedSyncd, *, secret: str | None = None) -> ShapeRoutes:
        """Routes backed by a syncd embedded in this process (no network hop); live long-polls
        and SSE streams pass through as they do from a remote syncd."""
        client = embedded.client(timeout=httpx.Timeout(10.0, read=120.0))
        return cls(EMBEDDED_BASE_URL, secret=secret, client=client)

    def route(self, path: str, *, table: str, authorize: Authorize) -> Route:
        """A Starlette route serving the shape protocol on ``path`` for ``table`` only."""
        parse_table(table)  # fail early on a bad table name

        async def endpoint(request: Request) -> Response:
            return await self.serve(request, table, authorize)

        return Route(path, endpoint, methods=["GET", "HEAD", "OPTIONS"])

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
            return preflight(request)
        scope = await authorize(request)
        if isinstance(scope, Response):
            return scope
        try:
            query = upstream_query(request.query_params.multi_items(), table, scope)
        except InvalidRequest as exc:
            return bad_request(exc.errors())
        if self.secret is not None:
            query.append(("secret", self.secret))
        headers = {h: request.headers[h] for h in FORWARDED_REQUEST_HEADERS if h in request.headers}
        headers["accept-encoding"] = "identity"
        client = next(self._turn)
        upstream_request = client.build_request(
            request.method, self.shape_url, params=urlencode(query), headers=headers
        )
        live = _truthy(request.query_params.get("live"))
        key = scope.key if live else None
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
        return StreamingResponse(
            body, status_code=upstream.status_code, headers=_response_headers(upstream)
        )


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
        raise
    finally:
        for task in stop_tasks:
            task.cancel()
    if send_task.done():
        return send_task.result()
    send_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await send_task
    return None


async def _relay(
    upstream: httpx.Response, cut: asyncio.Event, done: Callable[[], None]
) -> AsyncIterator[bytes]:
    """The upstream body chunk by chunk, until it ends, ``cut`` is set or the client leaves."""
    chunks = upstream.aiter_raw()
    cut_task = asyncio.ensure_future(cut.wait())
    try:
        while True:
            next_task = asyncio.ensure_future(anext(chunks))
            await asyncio.wait({next_task, cut_task}, return_when=asyncio.FIRST_COMPLETED)
            if not next_task.done():
                next_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await next_task
                return
            try:
                chunk = next_task.result()
            except StopAsyncIteration:
                return
            yield chunk
    finally:
        cut_task.cancel()
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
