"""What a route's client may ask for: the caller's :class:`ShapeScope` and the narrowing of the
client's request to it.

Layer: ``syncd``. The query is read once (:func:`shapes.request.read_query`), position and mode
are checked as the upstream will check them, and the upstream query is rebuilt from the checked
values (:func:`narrow`). The client's ``where`` is scanned (:func:`renumber_where`: lexically
complete, balanced parentheses, no subquery) and AND-ed after the scope's; its columns, and a
subset's ``where`` and ``order_by``, may only name allowed columns. A POST body may carry only
a subset (:func:`read_body_subset`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pglast.parser import ParseError, scan
from starlette.requests import Request
from starlette.responses import Response

from shapes.errors import InvalidRequest
from shapes.request import QueryParams, ShapeRequest, read_query, shape_request, validate_params
from shapes.shape import parse_columns
from shapes.subset import (
    SUBSET_KEYS,
    SubsetError,
    SubsetRequest,
    subset_from_body,
    subset_from_query,
)
from shapes.where import column_references
from syncd.request_body import MAX_BODY_BYTES


@dataclass(frozen=True)
class ShapeScope:
    """What the signed-in caller may see of the route's table.

    ``where`` uses ``$1..$n`` for ``params``; ``None`` means every row. ``columns`` ``None``
    means every column. ``key`` groups the caller's live requests for
    :meth:`~syncd.routes.ShapeRoutes.cut_off` (``None``: not tracked).
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


class BadBody(Exception):
    """A POST body the routes do not take; ``body`` is the 400's JSON."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.body = body


_BODY_KEYS = frozenset({*SUBSET_KEYS, "subset"})


async def read_body_subset(request: Request) -> SubsetRequest | None:
    """The subset a POST body describes (``None`` for an empty body or ``{}``).

    Only the subset keys are taken: a body may not override the query (``table``, ``where``,
    ``live``, ...), since the routes decide those.

    Raises:
        BadBody: the body is too large, not JSON, not an object, or has other keys.
        InvalidRequest: a subset key is invalid.
    """
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BadBody({"error": "Request body too large"})
    try:
        data = json.loads(body, parse_constant=_reject_constant) if body.strip() else {}
    except (ValueError, RecursionError):
        raise BadBody({"error": "Invalid JSON in request body"}) from None
    if not isinstance(data, dict):
        raise BadBody({"error": "Request body must be a JSON object"})
    others = sorted(key for key in data if key not in _BODY_KEYS)
    if others:
        raise BadBody(
            {
                "message": "Invalid request",
                "errors": dict.fromkeys(others, ["is not allowed in the body"]),
            }
        )
    return subset_from_body(data)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
