"""Response bodies to messages whose values are already Python values.

Layer: ``shapes.client``. Theory of operation: a catch-up body holds thousands of rows of one
schema. Decoded without types, each of its values is a string that Python code then converts,
one call per value (:class:`~shapes.values.RowParser`). When msgspec knows the columns' types it
converts integers and numerics itself while it decodes, in C: :class:`BodyDecoder` gives
it the schema as a ``TypedDict`` per row. What msgspec would convert differently from
:func:`~shapes.values.parse_value` (booleans written ``t``/``f``, floats, JSON, arrays)
stays text in the decoder and is converted afterwards, in place, by a
:class:`~shapes.values.RowParser` of those columns only.

The result equals an untyped decode followed by :func:`~shapes.values.parse_row` on every
``value`` and ``old_value`` (a property test checks it), with two limits that the protocol
makes moot: a message's keys other than ``headers``, ``key``, ``value`` and ``old_value``, and
a row's columns that the schema does not name, are not kept. (A schema with a column named by
the empty string, which Postgres does not allow, is decoded untyped: msgspec can confuse that
key with another field.) A body that does not fit the types
(a value of the wrong kind, a row that is not an object) is decoded again without them and
converted value by value, so the typed path never changes what a caller receives, only how
fast.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Final, TypedDict

import msgspec

from shapes.values import RowParser, Schema

Message = dict[str, Any]

_untyped: Final = msgspec.json.Decoder().decode

DECODER_TYPES: Final[Mapping[str, type]] = {
    "int2": int,
    "int4": int,
    "int8": int,
    "numeric": Decimal,
}
"""Column types msgspec converts from Postgres's text output exactly as
:data:`~shapes.values.PARSERS` does (``NaN`` and the infinities included). Floats are not
among them: msgspec reads ``-0`` as positive zero, and Postgres writes a float's negative zero
that way. (A numeric's zero has no sign in Postgres.)"""

ROW_PARTS: Final = ("value", "old_value")


class BodyDecoder:
    """Decodes JSON bodies of one schema's messages and converts their values."""

    __slots__ = ("_typed", "_rest", "_all")

    def __init__(self, schema: Schema) -> None:
        columns: dict[str, Any] = {}
        rest: dict[str, Mapping[str, Any]] = {}
        for name, info in schema.items():
            kind = None if info.get("dims") else DECODER_TYPES.get(str(info.get("type")))
            if kind is None:
                columns[name] = Any
                rest[name] = info
            else:
                columns[name] = kind | None
        # Functional syntax: class syntax would leave ``row`` a string annotation that msgspec
        # resolves in the module's globals, where this local type is not.
        row = TypedDict("row", columns, total=False)  # type: ignore[misc]
        message = TypedDict(  # noqa: UP013
            "message", {"headers": Any, "key": Any, "value": row, "old_value": row}, total=False
        )
        self._typed: Callable[[bytes], Any] | None = None
        if "" not in schema:  # msgspec can match an empty key to another field of a TypedDict
            self._typed = msgspec.json.Decoder(list[message], strict=False).decode
        self._rest = RowParser(rest)
        self._all = RowParser(schema)

    def decode(self, body: bytes) -> Any:
        """``body`` decoded, its rows' values converted when it is a list of messages.

        Raises:
            ValueError: ``body`` is not JSON (:class:`msgspec.DecodeError`).
        """
        if self._typed is None:
            return self.convert(_untyped(body))
        try:
            messages = self._typed(body)
        except msgspec.ValidationError:
            return self.convert(_untyped(body))
        _convert_rows(messages, self._rest)
        return messages

    def convert(self, decoded: Any) -> Any:
        """Convert the rows of ``decoded`` (an untyped decode) in place; return it."""
        if isinstance(decoded, list):
            _convert_rows(decoded, self._all)
        return decoded


def _convert_rows(messages: list[Any], parser: RowParser) -> None:
    if parser.is_empty():
        return
    parse = parser.parse_in_place
    for message in messages:
        if isinstance(message, dict):
            for part in ROW_PARTS:
                row = message.get(part)
                if isinstance(row, dict):
                    parse(row)
