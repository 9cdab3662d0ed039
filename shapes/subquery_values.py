"""Dependency values: normalised keys, their canonical text, and the tag hashes built from it.

Layer: ``shapes`` (pure). The outer row's left-side column and the inner query's projected
column are compared by Postgres in their common type (``int4`` against ``int8`` in ``int8``,
``varchar`` against ``text`` in ``text``, ``numeric`` against ``float8`` in ``float8``). A
:class:`KeyColumn` converts a value of either side into that *key type* and normalises it, so
values Postgres finds equal become equal Python keys. :func:`canonical_text` writes a key back as
text that (a) is the same for equal keys (``1.0`` and ``1.00`` are ``1``, ``'1 mon'`` and
``'30 days'`` are one interval, ``-0`` is ``0``) and (b) reads back, through the key type's input
function, as an equal key: it is both what the tags hash and what view sets are persisted and
sent to SQL as.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from shapes import pgtime, pgtypes
from shapes import where_eval as ev
from shapes.errors import EvaluationError
from shapes.pgtypes import INTS, Infinity, Interval

KEY_TYPES: Final = frozenset(
    {
        "bool",
        "int8",
        "float4",
        "float8",
        "numeric",
        "text",
        "bpchar",
        "uuid",
        "date",
        "time",
        "timestamp",
        "timestamptz",
        "interval",
    }
)


def key_type(common: str) -> str | None:
    """The key type of a comparison type, or None when subquery values of it are unsupported."""
    if common in INTS:
        return "int8"  # every integer type compares as Python ints
    if common == "varchar":
        return "text"
    return common if common in KEY_TYPES else None


_INT8_LIMIT = 1 << 63


@dataclass(frozen=True, slots=True)
class KeyColumn:
    """Converts values of a column of type ``source`` to keys of type ``key``."""

    source: str
    key: str
    convert: Callable[[Any], Any] = field(compare=False)
    """Follows from ``source`` and ``key``: equal key columns may hold different functions."""

    @classmethod
    def of(cls, source: str, key: str) -> KeyColumn:
        convert = pgtypes.converter(source, key)
        if convert is None:  # key types are common types: the source converts implicitly
            raise ValueError(f"no conversion from {source} to {key}")
        return cls(source, key, convert)

    def from_value(self, value: Any) -> Hashable:
        """The key of a parsed, non-NULL value of the source type."""
        if self.key == "int8" and type(value) is int and -_INT8_LIMIT <= value < _INT8_LIMIT:
            return value  # integers are their own keys
        try:
            return normalise_key(self.key, self.convert(value))
        except EvaluationError:
            raise
        except (ValueError, ArithmeticError, OverflowError):
            raise EvaluationError(
                "invalid input syntax in a cast", "invalid_text_representation"
            ) from None

    def from_text(self, text: str | None) -> Hashable:
        """The key of a row's text value (None for NULL); ``ValueError`` if it does not parse."""
        if text is None:
            return None
        return self.from_value(pgtypes.parse_text(self.source, text))


def normalise_key(key: str, value: Any) -> Hashable:
    """One Python value per Postgres-equal class of values of type ``key``."""
    if key == "bpchar" or key == "text":
        return pgtypes.bpchar_to_text(value) if key == "bpchar" else str(value)
    if key in ("float4", "float8") and value == 0:
        return 0.0  # -0 = 0
    if key == "interval":
        return Interval(0, 0, value.key())
    return ev.hash_key(value)


def canonical_text(key: str, value: Hashable) -> str:
    """The text of a (non-NULL) key: equal keys give equal texts, which read back as the key."""
    if value is ev.NAN:
        return "NaN"
    if key in ("float4", "float8"):
        return _float_text(float(value))  # type: ignore[arg-type]
    if key == "numeric":
        return _numeric_text(value)  # type: ignore[arg-type]
    if key == "bool":
        return "t" if value else "f"
    if key in pgtypes.TIMESTAMPS:
        return pgtypes.format_datetime(key, value)  # type: ignore[arg-type]
    if key == "time":
        return pgtime.format_time(value)  # type: ignore[arg-type]
    if key == "interval":
        return pgtypes.format_interval(value)  # type: ignore[arg-type]
    return str(value)


def key_from_text(key: str, text: str) -> Hashable:
    """Inverse of :func:`canonical_text`; ``ValueError`` when the text is not of the type."""
    return normalise_key(key, pgtypes.parse_text(key, text))


def _float_text(value: float) -> str:
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "0"
    return repr(value)  # shortest text that reads back as exactly this double


def _numeric_text(value: Decimal | Infinity) -> str:
    if not isinstance(value, Decimal) or not value.is_finite():
        return pgtypes.format_numeric(value)  # type: ignore[arg-type]
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def value_slot_text(value: Hashable, columns: tuple[str, ...], keys: tuple[str, ...]) -> str:
    """The text a subquery position's tag slot hashes, before the prefix.

    Single column: ``v:<text>`` or ``NULL``; row form: ``<col>:`` followed by that, for each
    outer left-side column, with no separator.
    """
    if len(columns) == 1:
        return _part(keys[0], value)
    parts = value if isinstance(value, tuple) else (None,) * len(columns)
    return "".join(
        f"{column}:{_part(key, part)}"
        for column, key, part in zip(columns, keys, parts, strict=True)
    )


def _part(key: str, value: Hashable) -> str:
    return "NULL" if value is None else "v:" + canonical_text(key, value)


def tag_hash(prefix: str, slot_text: str) -> str:
    """A tag slot: the lowercase MD5 hex of the prefix followed by the slot text."""
    return hashlib.md5((prefix + slot_text).encode("utf-8"), usedforsecurity=False).hexdigest()
