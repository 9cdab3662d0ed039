"""Postgres parse trees as pglast's nodes, built from the parser's JSON output.

Layer: ``shapes`` (pure).

pglast's own :func:`pglast.parser.parse_sql` builds every node through a validating
``__setattr__`` (type checks, enum and list coercion, attribute by attribute): for the short
clauses shapes carry, about four fifths of a parse, paid on every new shape. :func:`parse_sql`
here returns the same tree, node for node (the same classes, attribute values, enum members,
tuples for lists, ``None`` for what is absent, character positions for locations), from
:func:`pglast.parser.parse_sql_json` decoded by msgspec, with each node made directly. The JSON
leaves out what is zero, false or empty; each attribute's C type (from the node class's slot
descriptions) gives what it stands for. The test suite checks the two parsers agree on every
clause it knows, locations included.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Final

import msgspec
from pglast import ast, enums
from pglast.parser import parse_sql as pglast_parse_sql
from pglast.parser import parse_sql_json

_decode: Final = msgspec.json.Decoder().decode

Locate = Callable[[int], "int | None"]
"""A parser position (a byte offset into the UTF-8 text) to pglast's (the character index)."""

_VALUE_NODES: Final = {
    "ival": ast.Integer,
    "fval": ast.Float,
    "boolval": ast.Boolean,
    "sval": ast.String,
    "bsval": ast.BitString,
}
"""The keys under which the JSON holds an ``A_Const``'s value, and the value's node."""

_NUMBERS: Final = frozenset(
    {"int", "int16", "int32", "int64", "uint32", "uint64", "long", "Oid", "Index",
     "AttrNumber", "bits32", "Cardinality", "SubTransactionId", "Size", "AclMode",
     "RelFileNumber"}
)  # fmt: skip


class _Unsupported(Exception):
    """A node holds an attribute of a C type this module does not convert: pglast parses."""


def parse_sql(sql: str) -> tuple[ast.RawStmt, ...]:
    """The statements of ``sql``, as :func:`pglast.parser.parse_sql` gives them.

    Raises:
        pglast.parser.ParseError: as pglast raises it (the same message and position).
    """
    tree = _decode(parse_sql_json(sql))
    locate = _locator(sql)
    try:
        return tuple(_raw_statement(statement, locate) for statement in tree.get("stmts", ()))
    except _Unsupported:
        return pglast_parse_sql(sql)


def _raw_statement(fields: dict[str, Any], locate: Locate) -> ast.RawStmt:
    """A statement: its start and length in characters, as pglast counts them (a length of 0
    is the rest of the text)."""
    start, length = fields.get("stmt_location", 0), fields.get("stmt_len", 0)
    first, end = locate(start), locate(start + length)
    if first is None or end is None:
        raise _Unsupported("a statement's bounds outside the text")
    node = object.__new__(ast.RawStmt)
    object.__setattr__(node, "stmt", _wrapped(fields["stmt"], locate))
    object.__setattr__(node, "stmt_location", first)
    object.__setattr__(node, "stmt_len", end - first)
    return node


def _locator(sql: str) -> Locate:
    """pglast's positions: ``None`` outside the text, the character holding the byte inside."""
    if sql.isascii():
        size = len(sql)
        return lambda offset: offset if 0 <= offset < size else None
    index = [i for i, char in enumerate(sql) for _ in range(len(char.encode("utf-8")))]
    size = len(index)
    return lambda offset: index[offset] if 0 <= offset < size else None


def _wrapped(value: Any, locate: Locate) -> Any:
    """A node as the JSON holds it: ``{"Tag": {fields}}``; a ``List`` is a tuple, and ``{}``
    the null item of a list (``SELECT DISTINCT``'s clause is a list of one)."""
    if not value:
        return None
    ((tag, fields),) = value.items()
    if tag == "List":
        return tuple(_wrapped(item, locate) for item in fields.get("items", ()))
    if tag == "A_Const":
        return _constant(fields, locate)
    return _node(tag, fields, locate)


def _constant(fields: dict[str, Any], locate: Locate) -> ast.A_Const:
    node = object.__new__(ast.A_Const)
    isnull = bool(fields.get("isnull", False))
    value = None
    if not isnull:
        for key, cls in _VALUE_NODES.items():
            if key in fields:
                value = _node(cls.__name__, fields[key], locate)
                break
    object.__setattr__(node, "isnull", isnull)
    object.__setattr__(node, "val", value)
    return node


def _node(tag: str, fields: dict[str, Any], locate: Locate) -> ast.Node:
    cls, slots = _slots_of(tag)
    node = object.__new__(cls)
    for name, make, default in slots:
        raw = fields.get(name)
        if raw is not None:
            object.__setattr__(node, name, make(raw, locate))
        elif default is _AT_START:
            object.__setattr__(node, name, locate(0))
        else:
            object.__setattr__(node, name, default)
    return node


_AT_START: Final = object()
"""The default of a location: the JSON leaves out position 0."""


_Slot = tuple[str, Callable[[Any, Locate], Any], Any]
_SLOTS: dict[str, tuple[type[ast.Node], tuple[_Slot, ...]]] = {}


def _slots_of(tag: str) -> tuple[type[ast.Node], tuple[_Slot, ...]]:
    """A node class and, for each attribute, how its JSON value becomes pglast's, and what an
    attribute the JSON leaves out is."""
    known = _SLOTS.get(tag)
    if known is not None:
        return known
    cls = getattr(ast, tag)
    slots = tuple(_slot(name, info.c_type) for name, info in cls.__slots__.items())
    _SLOTS[tag] = (cls, slots)
    return cls, slots


def _slot(name: str, c_type: str) -> _Slot:
    if c_type == "ParseLoc":
        return name, _location, _AT_START
    if c_type == "char":
        return name, _same, "\x00"
    if c_type == "char*":
        return name, _same, None
    if c_type == "List*":
        return name, _list, None
    if c_type in ("Node*", "Expr*"):
        return name, _wrapped, None  # any node: ``{"Tag": {fields}}``
    if c_type.endswith("*"):
        return name, _typed(c_type[:-1]), None  # a node of one type: its fields alone
    if c_type == "bool":
        return name, _same, False
    if c_type in ("double", "float", "Cost"):
        return name, _same, 0.0
    if c_type in _NUMBERS:
        return name, _same, 0
    members = getattr(enums, c_type, None)
    if isinstance(members, type) and issubclass(members, enum.Enum):
        return name, _member(members), members(0)
    raise _Unsupported(f"no JSON conversion for {c_type!r} ({name})")


def _same(raw: Any, locate: Locate) -> Any:
    return raw


def _location(raw: int, locate: Locate) -> int | None:
    return locate(raw)


def _list(raw: list[Any], locate: Locate) -> tuple[Any, ...]:
    return tuple(_wrapped(item, locate) for item in raw)


def _typed(tag: str) -> Callable[[Any, Locate], Any]:
    if not isinstance(getattr(ast, tag, None), type):
        raise _Unsupported(f"no node class {tag!r}")

    def make(raw: Any, locate: Locate) -> Any:
        return _node(tag, raw, locate)

    return make


def _member(members: type[enum.Enum]) -> Callable[[Any, Locate], Any]:
    def make(raw: Any, locate: Locate) -> Any:
        return members[raw] if isinstance(raw, str) else members(raw)

    return make
