"""Subset snapshots: one-off queries over a shape (``subset__*`` parameters or a POST body).

Layer: ``shapes`` (pure). Validates the subset's ``where`` (like a shape's, but without
subqueries), ``params``, ``order_by`` (plain column references only), ``limit`` and ``offset``,
and reports errors nested under ``subset`` as the reference server does (``docs/protocol.md``,
"Subset snapshots").
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pglast import ast
from pglast.enums import SortByDir, SortByNulls
from pglast.parser import ParseError

from shapes.errors import InvalidRequest
from shapes.parse_tree import parse_sql
from shapes.schema import Column, columns_hint
from shapes.shape import quote_ident
from shapes.where import Where, parse_where

SUBSET_KEYS = ("where", "params", "limit", "offset", "order_by", "where_expr", "order_by_expr")


class SubsetError(InvalidRequest):
    """A subset parameter is invalid; reported as ``{"subset": {field: [message]}}``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)

    def errors(self) -> dict[str, Any]:
        return {"subset": {self.field: [self.message]}}


@dataclass(frozen=True, slots=True)
class SubsetRequest:
    """The raw subset parameters, before they are checked against the table."""

    where: str | None = None
    params: Mapping[str, str] | None = None
    limit: int | None = None
    offset: int | None = None
    order_by: str | None = None


@dataclass(frozen=True, slots=True)
class Subset:
    """A validated subset: SQL fragments ready to append to the shape's query."""

    where: Where | None
    order_by_sql: str | None
    limit: int | None
    offset: int | None


def subset_from_query(items: Mapping[str, str]) -> SubsetRequest | None:
    """The subset in query parameters (``subset__where`` or ``subset[where]``), if any."""
    found: dict[str, str] = {}
    for name, value in items.items():
        if not name.startswith("subset"):  # nearly every request: no subset at all
            continue
        for prefix, suffix in (("subset__", ""), ("subset[", "]")):
            if name.startswith(prefix) and name.endswith(suffix):
                found[name[len(prefix) : len(name) - len(suffix)]] = value
    if not found:
        return None
    params = _params_from_json(found["params"]) if "params" in found else None
    return SubsetRequest(
        where=found.get("where") or None,
        params=params,
        limit=_integer(found.get("limit"), "limit", minimum=1),
        offset=_integer(found.get("offset"), "offset", minimum=0),
        order_by=found.get("order_by") or None,
    )


def subset_from_body(body: Mapping[str, Any]) -> SubsetRequest | None:
    """The subset in a POST body (``{"where": ...}`` or ``{"subset": {...}}``), if any."""
    data: Mapping[str, Any] = body.get("subset", body)
    if not isinstance(data, Mapping):
        raise SubsetError("where", "subset must be a JSON object")
    present = {key: data[key] for key in SUBSET_KEYS if key in data}
    if not present:
        return None
    params = present.get("params")
    if params is not None and not isinstance(params, Mapping):
        raise SubsetError("params", "must be a JSON object")
    where = present.get("where")
    order_by = present.get("order_by")
    if where is not None and not isinstance(where, str):
        raise SubsetError("where", "is invalid")
    if order_by is not None and not isinstance(order_by, str):
        raise SubsetError("order_by", "is invalid")
    return SubsetRequest(
        where=where or None,
        params=None if params is None else _stringify(params),
        limit=_integer(present.get("limit"), "limit", minimum=1),
        offset=_integer(present.get("offset"), "offset", minimum=0),
        order_by=order_by or None,
    )


def _params_from_json(text: str) -> dict[str, str]:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        raise SubsetError("params", "must be a JSON object") from None
    if not isinstance(data, dict):
        raise SubsetError("params", "must be a JSON object")
    return _stringify(data)


def _stringify(params: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in params.items():
        if value is None:
            out[str(key)] = ""
        elif isinstance(value, bool):
            out[str(key)] = "true" if value else "false"
        elif isinstance(value, str):
            out[str(key)] = value
        else:
            out[str(key)] = json.dumps(value)
    return out


_BIGINT_MAX = (1 << 63) - 1
"""Postgres takes ``LIMIT`` and ``OFFSET`` as ``bigint``."""


def _integer(value: Any, field: str, *, minimum: int) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
        # ``2.5`` is no row count; JSON ``Infinity`` and ``NaN`` land here too
        raise SubsetError(field, "is invalid")
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise SubsetError(field, "is invalid") from None
    if number < minimum:
        raise SubsetError(field, f"must be greater than or equal to {minimum}")
    if number > _BIGINT_MAX:
        raise SubsetError(field, f"must be less than or equal to {_BIGINT_MAX}")
    return number


def validate_subset(request: SubsetRequest, columns: Mapping[str, Column]) -> Subset:
    """Check a subset against the table's columns.

    Raises:
        SubsetError: with the field (``where``, ``params``, ``order_by``, ...) at fault.
    """
    if (request.limit is not None or request.offset is not None) and request.order_by is None:
        raise SubsetError("order_by", "order_by is required when limit or offset is present")
    where = None
    if request.where is not None:
        try:
            where = parse_where(request.where, columns, request.params)
        except InvalidRequest as error:
            message = error.message
            if "subqueries" in message:
                message = "Subqueries are not allowed in subsets"
            raise SubsetError(error.field, message) from None
    order_by = None if request.order_by is None else parse_order_by(request.order_by, columns)
    return Subset(where, order_by, request.limit, request.offset)


_DIRECTIONS = {
    SortByDir.SORTBY_DEFAULT: "",
    SortByDir.SORTBY_ASC: " ASC",
    SortByDir.SORTBY_DESC: " DESC",
}
_NULLS = {
    SortByNulls.SORTBY_NULLS_DEFAULT: "",
    SortByNulls.SORTBY_NULLS_FIRST: " NULLS FIRST",
    SortByNulls.SORTBY_NULLS_LAST: " NULLS LAST",
}


def parse_order_by(text: str, columns: Mapping[str, Column]) -> str:
    """Parse ``order_by`` (column references with ASC/DESC and NULLS FIRST/LAST) into SQL."""
    wrapped = "SELECT 1 ORDER BY " + text
    try:
        statements = parse_sql(wrapped)
    except ParseError as error:
        location = error.args[1] if error.args[1] is not None else len(wrapped)
        raise SubsetError("order_by", f"At location {location}: {error.args[0]}") from None
    if len(statements) != 1:
        raise SubsetError("order_by", 'unescaped ";" causing statement split')
    select = statements[0].stmt
    if not isinstance(select, ast.SelectStmt) or _has_other_clauses(select):
        raise SubsetError("order_by", "malformed query ending with SQL clauses")
    return ", ".join(_sort_item(item, columns) for item in select.sortClause or ())


def _has_other_clauses(select: ast.SelectStmt) -> bool:
    return any(
        getattr(select, name, None)
        for name in ("whereClause", "fromClause", "groupClause", "havingClause", "limitCount")
    )


def _sort_item(item: ast.SortBy, columns: Mapping[str, Column]) -> str:
    node = item.node
    if isinstance(node, ast.ParamRef):
        raise SubsetError(
            "order_by", f"parameter ${node.number} is not supported in ORDER BY clauses"
        )
    fields = node.fields if isinstance(node, ast.ColumnRef) else None
    if fields is None or len(fields) != 1:
        kind = type(node).__name__
        raise SubsetError("order_by", f"{kind} expressions are not allowed in ORDER BY clauses")
    field = fields[0]
    if not isinstance(field, ast.String) or field.sval is None:
        raise SubsetError("order_by", "A_Star expressions are not allowed in ORDER BY clauses")
    name = field.sval
    if name not in columns:
        raise SubsetError("order_by", f"unknown reference {name}; {columns_hint(columns)}")
    if item.useOp:
        raise SubsetError("order_by", "USING is not allowed in ORDER BY clauses")
    direction = _DIRECTIONS.get(item.sortby_dir or SortByDir.SORTBY_DEFAULT, "")
    nulls = _NULLS.get(item.sortby_nulls or SortByNulls.SORTBY_NULLS_DEFAULT, "")
    return quote_ident(name) + direction + nulls
