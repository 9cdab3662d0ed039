"""Parsing and validating the query parameters of ``GET /v1/shape``.

Layer: ``shapes`` (pure). Follows the reference server's validation order (``docs/protocol.md``,
"Request parameters"): enum casts and ``offset`` presence first, then ``offset`` format,
``handle``, ``live``, ``live_sse``, then the shape definition itself. Unknown parameters are
ignored.

One rule for reading a query, shared by the daemon and the shape routes (:func:`read_query`):
every parameter the protocol reads may be given once (a repeat is a 400, never "first wins" in
one place and "last wins" in another); ``params`` keys are canonical decimal numbers
(``params[1]``, never ``params[01]``); ``subset__x`` and ``subset[x]`` name the same key.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from shapes.errors import InvalidRequest
from shapes.offset import BEFORE_ALL, START_HINT, LogOffset, parse_offset
from shapes.shape import CanonicalShape, LogMode, Replica, parse_columns, parse_table

_PARAM_KEY = re.compile(r"params\[([^\]]*)\]")
_CANONICAL_PARAM_KEY = re.compile(r"0|[1-9][0-9]{0,8}")
"""A ``params`` key: a decimal number without sign, spaces or leading zeros (``0`` is refused
later, as out of sequence)."""
_SUBSET_FORMS = (("subset__", ""), ("subset[", "]"))
OFFSET_BLANK: Final = "can't be blank; " + START_HINT

PROTOCOL_PARAMS: Final = frozenset(
    {
        "table",
        "offset",
        "handle",
        "live",
        "live_sse",
        "experimental_live_sse",
        "cursor",
        "where",
        "columns",
        "replica",
        "log",
        "secret",
        "api_secret",
        "expired_handle",
        "cache-buster",
    }
)
"""Parameters read by name (besides ``params[n]`` and the ``subset`` keys). Each may be given
once: a server and a proxy in front of it that picked different copies of a repeated parameter
would disagree about the request."""


class RequestErrors(InvalidRequest):
    """Several invalid parameters reported together."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        first = next(iter(errors))
        super().__init__(first, errors[first][0])
        self._errors = errors

    def errors(self) -> dict[str, list[str]]:
        return self._errors


@dataclass(frozen=True, slots=True)
class ShapeRequest:
    """A validated shape request. ``offset`` is ``None`` for ``offset=now``."""

    definition: CanonicalShape
    offset: LogOffset | None
    handle: str | None
    live: bool
    live_sse: bool
    cursor: str | None

    @property
    def is_initial(self) -> bool:
        """Whether the request starts from the beginning (``offset=-1``)."""
        return self.offset == BEFORE_ALL


def _truthy(value: str | None) -> bool:
    return value is not None and value != "false"


@dataclass(frozen=True, slots=True)
class QueryParams:
    """A query read by :func:`read_query`: each protocol parameter once.

    ``values`` holds the named parameters (:data:`PROTOCOL_PARAMS`) given, ``where_params`` the
    ``params[n]`` values by canonical key, ``subset`` the subset keys (``where``, ``limit``, ...)
    given as ``subset__<key>`` or ``subset[<key>]``.
    """

    values: dict[str, str] = field(default_factory=dict)
    where_params: dict[str, str] = field(default_factory=dict)
    subset: dict[str, str] = field(default_factory=dict)


def read_query(items: Iterable[tuple[str, str]]) -> QueryParams:
    """Read query parameters (``(name, value)`` pairs) into :class:`QueryParams`.

    Raises:
        InvalidRequest: a protocol parameter given twice (field: its name), or a ``params`` key
            that is not a canonical number (field ``params``).
    """
    query = QueryParams()
    for name, value in items:
        target, key = _slot(query, name)
        if target is None:
            continue  # not a protocol parameter: ignored
        if key in target:
            raise InvalidRequest(name, "must not be given more than once")
        target[key] = value
    return query


def _slot(query: QueryParams, name: str) -> tuple[dict[str, str] | None, str]:
    """Where parameter ``name`` goes in ``query``, and under which key."""
    if name in PROTOCOL_PARAMS:
        return query.values, name
    if name.startswith("params["):
        match = _PARAM_KEY.fullmatch(name)
        key = match.group(1) if match is not None else ""
        if not _CANONICAL_PARAM_KEY.fullmatch(key):
            raise InvalidRequest("params", "Parameters can only use numbers as keys")
        return query.where_params, key
    if name.startswith("subset"):
        for prefix, suffix in _SUBSET_FORMS:
            if name.startswith(prefix) and name.endswith(suffix) and len(name) > len(prefix):
                return query.subset, name[len(prefix) : len(name) - len(suffix)]
    return None, name


def parse_shape_request(items: Iterable[tuple[str, str]]) -> ShapeRequest:
    """Validate query parameters (as ``(name, value)`` pairs) into a :class:`ShapeRequest`.

    Raises:
        InvalidRequest: with the field and message the reference server would report; a
            repeated parameter or a non-canonical ``params`` key (:func:`read_query`).
    """
    return shape_request(read_query(items))


def shape_request(query: QueryParams) -> ShapeRequest:
    """Validate a query read by :func:`read_query` into a :class:`ShapeRequest`.

    Raises:
        InvalidRequest: with the field and message the reference server would report.
    """
    params = query.values
    replica, log_mode = _cast_enums(params)
    offset_text = params.get("offset")
    offset = None if offset_text in (None, "now") else parse_offset(offset_text or "")
    handle = params.get("handle") or None
    if offset_text not in ("-1", "-1_0", "now") and handle is None:
        raise InvalidRequest("handle", "can't be blank when offset != -1")
    live = _truthy(params.get("live"))
    if live and offset == BEFORE_ALL:
        raise InvalidRequest("live", "can't be true when offset == -1")
    if live and offset is None:
        raise InvalidRequest("live", "can't be true when offset is 'now'")
    sse_text = params.get("live_sse", params.get("experimental_live_sse"))
    live_sse = _truthy(sse_text)
    if live_sse and not live:
        raise InvalidRequest("live_sse", "can't be true unless live is also true")
    definition = _definition(params, query.where_params, replica, log_mode)
    if offset == BEFORE_ALL or offset is None:
        handle = None
    return ShapeRequest(definition, offset, handle, live, live_sse, params.get("cursor"))


def _cast_enums(params: dict[str, str]) -> tuple[Replica, LogMode]:
    errors: dict[str, list[str]] = {}
    replica = params.get("replica", "default")
    log_mode = params.get("log", "full")
    if replica not in ("default", "full"):
        errors["replica"] = ["is invalid"]
    if log_mode not in ("full", "changes_only"):
        errors["log"] = ["is invalid"]
    if not params.get("offset"):
        errors["offset"] = [OFFSET_BLANK]
    if errors:
        raise RequestErrors(errors)
    return replica, log_mode  # type: ignore[return-value]


def _definition(
    params: dict[str, str], where_params: dict[str, str], replica: Replica, log_mode: LogMode
) -> CanonicalShape:
    table, columns, where = params.get("table"), params.get("columns"), params.get("where")
    key = (table, columns, where or None, tuple(sorted(where_params.items())), replica, log_mode)
    size = len(table or "") + len(columns or "") + len(where or "")
    if size > _CACHED_REQUEST_CHARS:
        return _canonical_shape.__wrapped__(*key)  # rare and big: keep the cache small
    return _canonical_shape(*key)


_CACHED_REQUEST_CHARS = 2048


@functools.lru_cache(maxsize=4096)
def _canonical_shape(
    table_text: str | None,
    columns_text: str | None,
    where: str | None,
    where_params: tuple[tuple[str, str], ...],
    replica: Replica,
    log_mode: LogMode,
) -> CanonicalShape:
    """The shape a request names; cached, since live clients repeat the same request."""
    if not table_text:
        raise InvalidRequest("table", "can't be blank")
    schema, table = parse_table(table_text)
    columns = None
    if columns_text is not None:
        columns = tuple(sorted(set(parse_columns(columns_text))))
    validate_params(dict(where_params))
    return CanonicalShape(
        schema=schema,
        table=table,
        where=where,
        params=where_params if where is not None else (),
        columns=columns,
        replica=replica,
        log=log_mode,
    )


def validate_params(where_params: dict[str, str]) -> None:
    """Check that ``params`` keys are the integers 1..n, written canonically (no leading zero).

    Raises:
        InvalidRequest: on ``params`` otherwise.
    """
    if not all(_CANONICAL_PARAM_KEY.fullmatch(key) for key in where_params):
        raise InvalidRequest("params", "Parameters can only use numbers as keys")
    numbers = sorted(int(key) for key in where_params if len(key) < 19)  # longer: never 1..n
    if numbers != list(range(1, len(where_params) + 1)):
        raise InvalidRequest("params", "Parameters must be numbered sequentially, starting from 1")
