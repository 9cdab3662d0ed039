"""``jsonb`` text as Postgres outputs it (``jsonb_out``), for the ``::jsonb`` cast.

Layer: ``shapes`` (pure). :func:`canonical_jsonb` parses JSON text and renders it the way a
``jsonb`` value prints: object keys deduplicated (the last one wins) and sorted shorter-first then
bytewise, ``", "`` and ``": "`` separators, numbers as ``numeric`` prints them, strings escaped as
``escape_json`` does. Values a column of type ``jsonb`` sends are already in this form.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, Final

_ESCAPES: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


class _Number:
    """A JSON number kept as its ``numeric`` value."""

    __slots__ = ("value",)

    def __init__(self, text: str) -> None:
        from shapes.pgtypes import parse_numeric

        self.value: Decimal = parse_numeric(text)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid input syntax for type json: {name}")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return dict(pairs)  # the last duplicate key wins, as in jsonb


def canonical_jsonb(text: str) -> str:
    """The ``jsonb`` output of JSON ``text``; ``ValueError`` when Postgres would refuse it."""
    try:
        value = json.loads(
            text,
            parse_float=_Number,
            parse_int=_Number,
            parse_constant=_reject_constant,
            object_pairs_hook=_pairs,
        )
    except RecursionError:
        raise ValueError("stack depth limit exceeded") from None
    return _render(value)


def _render(value: Any) -> str:
    from shapes.pgtypes import format_numeric

    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, _Number):
        return format_numeric(value.value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_render(item) for item in value) + "]"
    keys = sorted(value, key=lambda key: (len(key.encode("utf-8")), key.encode("utf-8")))
    return "{" + ", ".join(f"{_string(key)}: {_render(value[key])}" for key in keys) + "}"


def _string(text: str) -> str:
    out = ['"']
    for char in text:
        if char == "\x00" or "\ud800" <= char <= "\udfff":
            raise ValueError("unsupported Unicode escape sequence")
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif char < " ":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)
