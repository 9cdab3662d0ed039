"""Turn the text values of shape messages into Python values, guided by ``electric-schema``.

Layer: ``shapes`` (pure). Values on the wire are Postgres text output or ``None``
(``docs/protocol.md``, "Values and electric-schema"); the ``electric-schema`` header names each
column's type and array dimensions. Conversions: int2/4/8 → ``int``, float4/8 → ``float``
(``Infinity``/``NaN`` too), bool (``t``/``true``) → ``bool``, json/jsonb → parsed JSON, numeric
→ ``Decimal``; every other type stays a string. Array columns become (nested) lists of converted
elements, ``NULL`` elements ``None``. Columns missing from the schema are left unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Final

Schema = Mapping[str, Mapping[str, Any]]
"""A parsed ``electric-schema`` header: column name → column info (``type``, ``dims``, …)."""

ElementParser = Callable[[str], Any]


def _parse_bool(text: str) -> bool:
    return text in ("t", "true")


PARSERS: Final[Mapping[str, ElementParser]] = {
    "int2": int,
    "int4": int,
    "int8": int,
    "float4": float,
    "float8": float,
    "numeric": Decimal,
    "bool": _parse_bool,
    "json": json.loads,
    "jsonb": json.loads,
}


def _identity(text: str) -> str:
    return text


def parse_schema(header: str | None) -> dict[str, dict[str, Any]]:
    """Parse an ``electric-schema`` header; ``None``, ``null`` or garbage give ``{}``."""
    if not header:
        return {}
    try:
        parsed = json.loads(header)
    except ValueError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    return {str(k): dict(v) for k, v in parsed.items() if isinstance(v, dict)}


def parse_array(text: str, element: ElementParser = _identity) -> list[Any]:
    """Parse a Postgres array literal such as ``{1,NULL,"a\\"b",{2,3}}``.

    Unquoted ``NULL`` becomes ``None``; quoted elements are unescaped (``\\\\`` and ``\\"``)
    and never ``None``. A leading dimension decoration (``[1:2]={…}``) is skipped.

    Raises:
        ValueError: if ``text`` is not an array literal.
    """
    if text.startswith("["):
        equals = text.find("=")
        if equals < 0:
            raise ValueError(f"not an array literal: {text!r}")
        text = text[equals + 1 :]
    if not text.startswith("{"):
        raise ValueError(f"not an array literal: {text!r}")
    result, end = _parse_level(text, 0, element)
    if end != len(text):
        raise ValueError(f"trailing characters in array literal: {text!r}")
    return result


def _parse_level(text: str, pos: int, element: ElementParser) -> tuple[list[Any], int]:
    """Parse the ``{…}`` starting at ``pos``; return the list and the position after ``}``."""
    assert text[pos] == "{"
    pos += 1
    items: list[Any] = []
    if pos < len(text) and text[pos] == "}":
        return items, pos + 1
    while pos < len(text):
        char = text[pos]
        if char == "{":
            nested, pos = _parse_level(text, pos, element)
            items.append(nested)
        elif char == '"':
            pos += 1
            chars: list[str] = []
            while pos < len(text) and text[pos] != '"':
                if text[pos] == "\\" and pos + 1 < len(text):
                    pos += 1
                chars.append(text[pos])
                pos += 1
            if pos >= len(text):
                raise ValueError(f"unterminated quoted element: {text!r}")
            pos += 1
            items.append(element("".join(chars)))
        else:
            start = pos
            while pos < len(text) and text[pos] not in ",}":
                pos += 1
            raw = text[start:pos].strip()
            items.append(None if raw.upper() == "NULL" else element(raw))
        if pos >= len(text):
            break
        if text[pos] == ",":
            pos += 1
        elif text[pos] == "}":
            return items, pos + 1
        else:
            raise ValueError(f"unexpected {text[pos]!r} in array literal: {text!r}")
    raise ValueError(f"unterminated array literal: {text!r}")


def parse_value(value: Any, info: Mapping[str, Any] | None) -> Any:
    """Convert one column value according to its schema entry (``None`` info: unchanged)."""
    if value is None or info is None or not isinstance(value, str):
        return value
    parser = PARSERS.get(str(info.get("type")), _identity)
    if info.get("dims"):
        return parse_array(value, parser)
    return parser(value)


def parse_row(row: Mapping[str, Any], schema: Schema) -> dict[str, Any]:
    """Convert every column of a row; columns missing from ``schema`` are kept as they are."""
    return {name: parse_value(value, schema.get(name)) for name, value in row.items()}


def _converter(info: Mapping[str, Any]) -> ElementParser | None:
    """What :func:`parse_value` does to a text value of this column; None when it keeps it."""
    parser = PARSERS.get(str(info.get("type")))
    if info.get("dims"):
        element = parser or _identity
        return lambda text: parse_array(text, element)
    return parser


class RowParser:
    """:func:`parse_row` for many rows of one schema: each column's conversion is looked up
    once, and only the columns that change are visited."""

    __slots__ = ("_columns",)

    def __init__(self, schema: Schema) -> None:
        self._columns = [
            (name, convert)
            for name, info in schema.items()
            if (convert := _converter(info)) is not None
        ]

    def is_empty(self) -> bool:
        """True when no column of the schema changes (every row is left as it is)."""
        return not self._columns

    def parse_in_place(self, row: dict[str, Any]) -> dict[str, Any]:
        """Convert ``row``'s values in place (equal to ``parse_row(row, schema)``); return it."""
        for name, convert in self._columns:
            value = row.get(name)
            if isinstance(value, str):
                row[name] = convert(value)
        return row
