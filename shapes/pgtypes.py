"""Postgres types of the ``where`` subset: text input and output, arrays, intervals, casts.

Layer: ``shapes`` (pure). A *type* is a short string: a scalar name from :data:`SCALARS`
(``int4``, ``text``, ...), the same name with ``[]`` appended for an array of it, ``unknown``
for an untyped literal, or ``opaque:<name>`` for a column type outside the subset (enums,
jsonb, ...), whose values stay the text Postgres sent.

Python values: ``bool``, ``int``, ``float``, ``decimal.Decimal``, ``str``, ``uuid.UUID``,
integers for ``date``/``time``/``timestamp``/``timestamptz`` (:mod:`shapes.pgtime`),
:class:`Interval`, :class:`Infinity` for ``±infinity`` dates and timestamps, and nested tuples
for arrays (``None`` for SQL NULL everywhere). ``bpchar`` values are :class:`BpChar`: padded,
compared without trailing spaces.

Text input follows what Postgres *outputs* (``DateStyle`` ISO, ``IntervalStyle`` iso_8601) plus
the common input spellings. A value without a time zone read as ``timestamptz`` is taken to be
UTC: syncd runs its sessions with ``TimeZone=UTC``.
"""

from __future__ import annotations

import math
import re
import struct
import uuid
from collections.abc import Callable
from decimal import Context, Decimal, InvalidOperation
from functools import lru_cache, total_ordering
from typing import Any, Final

from shapes import pgjson, pgtime
from shapes.errors import EvaluationError

SCALARS: Final = frozenset(
    {
        "bool",
        "int2",
        "int4",
        "int8",
        "float4",
        "float8",
        "numeric",
        "text",
        "varchar",
        "bpchar",
        "uuid",
        "date",
        "time",
        "timestamp",
        "timestamptz",
        "interval",
    }
)
INTS: Final = frozenset({"int2", "int4", "int8"})
NUMERIC_RANK: Final = {"int2": 0, "int4": 1, "int8": 2, "numeric": 3, "float4": 4, "float8": 5}
TEXTS: Final = frozenset({"text", "varchar", "bpchar"})
TIMESTAMPS: Final = frozenset({"date", "timestamp", "timestamptz"})
UNKNOWN: Final = "unknown"
JSONB: Final = "opaque:jsonb"
"""``jsonb`` has no operators here: casts to it, ``IS NULL`` and ``::text`` only."""

ALIASES: Final = {
    "int": "int4",
    "integer": "int4",
    "smallint": "int2",
    "bigint": "int8",
    "real": "float4",
    "float": "float8",
    "decimal": "numeric",
    "boolean": "bool",
    "char": "bpchar",
    "character": "bpchar",
}

_INT_WORDS: Final = {"int2": "smallint", "int4": "integer", "int8": "bigint"}
_INT_BASES: Final = {"0x": 16, "0o": 8, "0b": 2}
_INT_RANGE: Final = {"int2": 1 << 15, "int4": 1 << 31, "int8": 1 << 63}
_INT_RE: Final = re.compile(
    r"\s*([+-]?)(0[xX](?:_?[0-9a-fA-F])+|0[oO](?:_?[0-7])+|0[bB](?:_?[01])+|[0-9](?:_?[0-9])*)\s*"
)
_FLOAT_RE: Final = re.compile(
    r"\s*[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)\s*",
    re.IGNORECASE,
)
_NUMERIC_RE: Final = re.compile(
    r"\s*[+-]?(?:(?:[0-9](?:_?[0-9])*\.?(?:[0-9](?:_?[0-9])*)?|\.[0-9](?:_?[0-9])*)"
    r"(?:[eE][+-]?[0-9]+)?|infinity|inf|nan)\s*",
    re.IGNORECASE,
)
_TRUE: Final = frozenset({"t", "tr", "tru", "true", "y", "ye", "yes", "on", "1"})
_FALSE: Final = frozenset({"f", "fa", "fal", "fals", "false", "n", "no", "of", "off", "0"})
_USEC_PER_DAY: Final = 86_400_000_000
_WIDE: Final = Context(prec=200_000)


@total_ordering
class Infinity:
    """``infinity`` (``sign=1``) or ``-infinity`` of a date or timestamp type."""

    __slots__ = ("sign",)

    def __init__(self, sign: int) -> None:
        self.sign = sign

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Infinity) and other.sign == self.sign

    def __lt__(self, other: object) -> bool:
        if isinstance(other, Infinity):
            return self.sign < other.sign
        return self.sign < 0

    def __gt__(self, other: object) -> bool:
        if isinstance(other, Infinity):
            return self.sign > other.sign
        return self.sign > 0

    def __hash__(self) -> int:
        return hash(("infinity", self.sign))

    def __repr__(self) -> str:
        return "Infinity(+1)" if self.sign > 0 else "Infinity(-1)"


@total_ordering
class Interval:
    """An interval as Postgres stores it: months, days and microseconds, kept apart.

    Postgres compares intervals after converting to microseconds with 30-day months and
    24-hour days, so ``'1 mon' = '30 days'``; equality and hashing here do the same.
    """

    __slots__ = ("days", "micros", "months")

    def __init__(self, months: int, days: int, micros: int) -> None:
        self.months = months
        self.days = days
        self.micros = micros

    def key(self) -> int:
        """The comparison key: total microseconds with 30-day months and 24-hour days."""
        return (self.months * 30 + self.days) * _USEC_PER_DAY + self.micros

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Interval) and self.key() == other.key()

    def __lt__(self, other: Interval) -> bool:
        return self.key() < other.key()

    def __hash__(self) -> int:
        return hash(self.key())

    def __neg__(self) -> Interval:
        return Interval(-self.months, -self.days, -self.micros)

    def __add__(self, other: Interval) -> Interval:
        return Interval(
            self.months + other.months, self.days + other.days, self.micros + other.micros
        )

    def __sub__(self, other: Interval) -> Interval:
        return self + (-other)

    def __repr__(self) -> str:
        return f"Interval({self.months}, {self.days}, {self.micros})"


def is_array(type_name: str) -> bool:
    """True for array types (``int4[]``)."""
    return type_name.endswith("[]")


def element_type(type_name: str) -> str:
    """The element type of an array type."""
    return type_name[:-2]


def is_textual(type_name: str) -> bool:
    """True for the string types and untyped literals."""
    return type_name in TEXTS or type_name == UNKNOWN


# ---------------------------------------------------------------------------------------------
# Text input


def parse_bool(text: str) -> bool:
    """Parse Postgres ``boolin`` input (``t``, ``true``, ``yes``, ``on``, ``1``, prefixes...)."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(text)


def _int_parser(type_name: str) -> Callable[[str], int]:
    limit = _INT_RANGE[type_name]

    def parse(text: str) -> int:
        # Postgres writes integers as plain decimal digits: read those directly.
        digits = text[1:] if text[:1] == "-" else text
        if digits.isascii() and digits.isdigit() and len(digits) < 20:
            value = int(text)
            if not -limit <= value < limit:
                raise _out_of_range(f"value is out of range for type {_INT_WORDS[type_name]}")
            return value
        match = _INT_RE.fullmatch(text)
        if match is None:
            raise ValueError(text)
        digits = match.group(2)
        if "_" in digits or digits[:2].lower() in _INT_BASES:
            raise NewerSyntax(
                "integer input with a base prefix or underscores is read only by Postgres 16+"
            )
        base = _INT_BASES.get(digits[:2].lower(), 10)
        value = int(digits[2:] if base != 10 else digits, base)
        if match.group(1) == "-":
            value = -value
        if not -limit <= value < limit:
            raise _out_of_range(f"value is out of range for type {_INT_WORDS[type_name]}")
        return value

    return parse


class NewerSyntax(ValueError):
    """Input only some Postgres versions read: a clause with it is refused, not guessed."""


_MANTISSA_DIGIT: Final = re.compile(r"^[^eE]*[1-9]")


def _out_of_range(message: str) -> EvaluationError:
    return EvaluationError(message, "numeric_value_out_of_range")


def parse_float8(text: str) -> float:
    """Parse ``float8`` input, including ``NaN`` and ``±Infinity`` (no overflow or underflow)."""
    if _FLOAT_RE.fullmatch(text) is None:
        raise ValueError("invalid input syntax for type double precision")
    value = float(text)
    if math.isinf(value) and "inf" not in text.lower():
        raise _out_of_range("value is out of range for type double precision")
    if value == 0.0 and _MANTISSA_DIGIT.search(text):
        raise _out_of_range("value is out of range for type double precision")
    return value


def to_float4(value: float) -> float:
    """Round a Python float to the nearest ``float4`` (single precision)."""
    if math.isinf(value) or math.isnan(value):
        return value
    try:
        return float(struct.unpack("f", struct.pack("f", value))[0])
    except OverflowError:
        raise _out_of_range("value out of range: overflow") from None


def float8_to_float4(value: float) -> float:
    """``float8::float4``: overflow and underflow are errors."""
    result = to_float4(value)
    if result == 0.0 and value != 0.0:
        raise _out_of_range("value out of range: underflow")
    return result


def parse_float4(text: str) -> float:
    """Parse ``float4`` input (no overflow or underflow)."""
    try:
        return float8_to_float4(parse_float8(text))
    except EvaluationError:
        raise _out_of_range("value is out of range for type real") from None


def check_float(result: float, inf_ok: bool, zero_ok: bool) -> float:
    """Postgres's check of a float operation's result: overflow to infinity, underflow to 0."""
    if math.isinf(result) and not inf_ok:
        raise _out_of_range("value out of range: overflow")
    if result == 0.0 and not zero_ok:
        raise _out_of_range("value out of range: underflow")
    return result


def normal_numeric(value: Decimal) -> Decimal:
    """Postgres has no negative zero and no positive exponent in its numeric scale."""
    if not value.is_finite():
        return value
    if value.is_zero() and value.is_signed():
        value = value.copy_negate()
    if value.as_tuple().exponent > 0:  # type: ignore[operator]
        value = value.quantize(Decimal(1), context=_WIDE)
    return value


def parse_numeric(text: str) -> Decimal:
    """Parse ``numeric`` input (``NaN`` and ``±Infinity`` included)."""
    if _NUMERIC_RE.fullmatch(text) is None:
        raise ValueError("invalid input syntax for type numeric")
    if "_" in text:
        raise NewerSyntax("underscores in numeric input are read only by Postgres 16 and later")
    try:
        return normal_numeric(Decimal(text.strip()))
    except InvalidOperation:
        raise ValueError("invalid input syntax for type numeric") from None


def parse_uuid(text: str) -> uuid.UUID:
    """Parse ``uuid`` input: 32 hex digits, optional hyphens and braces."""
    return uuid.UUID(text.strip())


def _special(text: str) -> Infinity | None:
    word = text.strip().lower()
    if word in ("infinity", "+infinity"):
        return Infinity(1)
    if word == "-infinity":
        return Infinity(-1)
    return None


def parse_date(text: str) -> int | Infinity:
    """Parse ``date`` input (ISO form, ``BC``, any year in range) or ``±infinity``."""
    special = _special(text)
    return special if special is not None else pgtime.parse_date(text)


def parse_time(text: str) -> int:
    """Parse ``time`` input ``HH:MM[:SS[.ffffff]]`` (``24:00:00`` included)."""
    return pgtime.parse_time(text)


def parse_timestamp(text: str) -> int | Infinity:
    """Parse ``timestamp`` input; like Postgres, a time zone in the text is ignored."""
    special = _special(text)
    return special if special is not None else pgtime.parse_timestamp(text, with_zone=False)


def parse_timestamptz(text: str) -> int | Infinity:
    """Parse ``timestamptz`` input (no zone given: UTC, syncd's session time zone)."""
    special = _special(text)
    return special if special is not None else pgtime.parse_timestamp(text, with_zone=True)


_INTERVAL_UNITS: Final = {
    "millennium": (12000, 0, 0),
    "millennia": (12000, 0, 0),
    "century": (1200, 0, 0),
    "centuries": (1200, 0, 0),
    "decade": (120, 0, 0),
    "decades": (120, 0, 0),
    "year": (12, 0, 0),
    "years": (12, 0, 0),
    "y": (12, 0, 0),
    "mon": (1, 0, 0),
    "mons": (1, 0, 0),
    "month": (1, 0, 0),
    "months": (1, 0, 0),
    "week": (0, 7, 0),
    "weeks": (0, 7, 0),
    "w": (0, 7, 0),
    "day": (0, 1, 0),
    "days": (0, 1, 0),
    "d": (0, 1, 0),
    "hour": (0, 0, 3_600_000_000),
    "hours": (0, 0, 3_600_000_000),
    "h": (0, 0, 3_600_000_000),
    "minute": (0, 0, 60_000_000),
    "minutes": (0, 0, 60_000_000),
    "min": (0, 0, 60_000_000),
    "mins": (0, 0, 60_000_000),
    "m": (0, 0, 60_000_000),
    "second": (0, 0, 1_000_000),
    "seconds": (0, 0, 1_000_000),
    "sec": (0, 0, 1_000_000),
    "secs": (0, 0, 1_000_000),
    "s": (0, 0, 1_000_000),
    "millisecond": (0, 0, 1000),
    "milliseconds": (0, 0, 1000),
    "ms": (0, 0, 1000),
    "microsecond": (0, 0, 1),
    "microseconds": (0, 0, 1),
    "us": (0, 0, 1),
}
_INTERVAL_TOKEN: Final = re.compile(
    r"\s*(?:(?P<clock>[+-]?\d+:\d+(?::\d+(?:\.\d*)?)?)"
    r"|(?P<num>[+-]?(?:\d+\.?\d*|\.\d+))\s*(?P<unit>[a-z]+)?)",
)


_ISO_FIELD: Final = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+))([A-Z])")
_ISO_DATE_UNITS: Final = {"Y": (12, 0, 0), "M": (1, 0, 0), "W": (0, 7, 0), "D": (0, 1, 0)}
_ISO_TIME_UNITS: Final = {
    "H": (0, 0, 3_600_000_000),
    "M": (0, 0, 60_000_000),
    "S": (0, 0, 1_000_000),
}


def parse_interval(text: str) -> Interval:
    """Parse ``interval`` input: ISO 8601 designators (``P1Y2M-3DT4H5M6.5S``, the form syncd's
    sessions output with ``IntervalStyle=iso_8601``) or the Postgres style
    (``1 year 2 mons 3 days 04:05:06``, verbose units, a leading ``@``, a trailing ``ago``).
    """
    stripped = text.strip()
    if stripped[:1] in ("P", "p") and "-" not in stripped[1:5].strip("+-0123456789.YMWDTymwdt"):
        return _parse_iso_interval(stripped.upper())
    return _parse_postgres_interval(text)


def _parse_iso_interval(text: str) -> Interval:
    date_part, _, time_part = text[1:].partition("T")
    if not date_part and not time_part:
        raise ValueError(text)
    total: list[Any] = [0, 0, Decimal(0)]
    for part, units in ((date_part, _ISO_DATE_UNITS), (time_part, _ISO_TIME_UNITS)):
        position = 0
        while position < len(part):
            match = _ISO_FIELD.match(part, position)
            if match is None or match.group(2) not in units:
                raise ValueError(text)
            _add_amount(total, Decimal(match.group(1)), units[match.group(2)])
            position = match.end()
    months, days, micros = total
    return Interval(int(months), int(days), _round_half_even(Decimal(micros)))


def _add_amount(total: list[Any], amount: Decimal, unit: tuple[int, int, int]) -> None:
    """Add ``amount`` of a unit, spilling fractions downwards as Postgres does."""
    unit_months, unit_days, unit_micros = unit
    if unit_months >= 12:  # fractional years round to whole months
        total[0] += int(_round_half_even(amount * unit_months))
        return
    if unit_months:
        whole = int(amount)
        total[0] += whole
        spill = (amount - whole) * 30
        total[1] += int(spill)
        total[2] += (spill - int(spill)) * _USEC_PER_DAY
        return
    if unit_days:
        days = amount * unit_days
        total[1] += int(days)
        total[2] += (days - int(days)) * _USEC_PER_DAY
        return
    total[2] += amount * unit_micros


def _round_half_even(value: Decimal) -> int:
    return int(value.to_integral_value(rounding="ROUND_HALF_EVEN"))


def _parse_postgres_interval(text: str) -> Interval:
    body = text.strip().lower()
    if body.startswith("@"):
        body = body[1:]
    negate = body.endswith(" ago")
    if negate:
        body = body[:-4]
    months = days = 0
    micros = Decimal(0)
    position, found = 0, False
    body = body.rstrip()
    while position < len(body):
        match = _INTERVAL_TOKEN.match(body, position)
        if match is None or match.end() == position:
            raise ValueError(text)
        position, found = match.end(), True
        if match.group("clock"):
            micros += _clock_micros(match.group("clock"))
            continue
        unit = match.group("unit")
        if unit is None:
            unit = "s"
        if unit not in _INTERVAL_UNITS:
            raise ValueError(text)
        total: list[Any] = [months, days, micros]
        _add_amount(total, Decimal(match.group("num")), _INTERVAL_UNITS[unit])
        months, days, micros = total
    if not found:
        raise ValueError(text)
    result = Interval(months, days, _round_half_even(micros))
    return -result if negate else result


def _clock_micros(clock: str) -> Decimal:
    sign = -1 if clock.startswith("-") else 1
    parts = clock.lstrip("+-").split(":")
    hours, minutes = int(parts[0]), int(parts[1])
    seconds = Decimal(parts[2]) if len(parts) > 2 else Decimal(0)
    return sign * ((hours * 60 + minutes) * 60_000_000 + seconds * 1_000_000)


class BpChar(str):
    """A ``char(n)`` value as Postgres stores it, padding included.

    Comparison and hashing ignore trailing spaces, as ``bpchar``'s operators do; ``LIKE``, the
    output function (``concat``) and ``::char(n)`` see the padded text. Casting to ``text`` or
    ``varchar`` (also implicitly, e.g. for ``||`` or ``lower``) drops the trailing spaces.
    """

    __slots__ = ()

    def stripped(self) -> str:
        """The value without trailing spaces (what ``::text`` gives)."""
        return str(self).rstrip(" ")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and self.stripped() == other.rstrip(" ")

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self.stripped())

    def __lt__(self, other: str) -> bool:
        return self.stripped() < other.rstrip(" ")

    def __le__(self, other: str) -> bool:
        return self.stripped() <= other.rstrip(" ")

    def __gt__(self, other: str) -> bool:
        return self.stripped() > other.rstrip(" ")

    def __ge__(self, other: str) -> bool:
        return self.stripped() >= other.rstrip(" ")


def parse_bpchar(text: str) -> BpChar:
    """A ``bpchar`` value, padding kept (see :class:`BpChar`)."""
    return BpChar(text)


def bpchar_to_text(value: str) -> str:
    """``bpchar::text``: the trailing spaces go."""
    return str(value).rstrip(" ")


def _identity(text: str) -> str:
    return text


SCALAR_PARSERS: Final[dict[str, Callable[[str], Any]]] = {
    "bool": parse_bool,
    "int2": _int_parser("int2"),
    "int4": _int_parser("int4"),
    "int8": _int_parser("int8"),
    "float4": parse_float4,
    "float8": parse_float8,
    "numeric": parse_numeric,
    "text": _identity,
    "varchar": _identity,
    "bpchar": parse_bpchar,
    "uuid": parse_uuid,
    "date": parse_date,
    "time": parse_time,
    "timestamp": parse_timestamp,
    "timestamptz": parse_timestamptz,
    "interval": parse_interval,
}


@lru_cache(maxsize=1024)
def parser_for(type_name: str) -> Callable[[str], Any]:
    """The text-input function of a type; opaque types keep their text (remembered: hot paths
    parse one value at a time through :func:`parse_text`)."""
    if is_array(type_name):
        element = parser_for(element_type(type_name))
        return lambda text: parse_array(text, element)
    return SCALAR_PARSERS.get(type_name, _identity)


def parse_text(type_name: str, text: str) -> Any:
    """Parse ``text`` as a value of ``type_name``; raises ``ValueError`` when it does not parse.

    A ``jsonb`` literal is brought to the form Postgres outputs (column values already are).
    """
    try:
        if type_name == JSONB:
            return pgjson.canonical_jsonb(text)
        return parser_for(type_name)(text)
    except (NewerSyntax, pgtime.OtherSpelling):
        raise
    except (ValueError, TypeError, ArithmeticError):
        raise ValueError(f"invalid syntax for type {type_name}: {text}") from None


# ---------------------------------------------------------------------------------------------
# Arrays


def parse_array(text: str, element: Callable[[str], Any]) -> tuple[Any, ...]:
    """Parse a Postgres array literal (``{1,2}``, ``{"a b",NULL}``, ``{{1,2},{3,4}}``).

    Elements are converted with ``element``; unquoted ``NULL`` becomes ``None``. Dimension
    decorations (``[1:2]={...}``) are not supported.
    """
    bounds: tuple[int, ...] | None = None
    stripped = text.lstrip()
    if stripped.startswith("["):
        decoration, equals, rest = stripped.partition("=")
        match = _DECORATION.fullmatch(decoration.rstrip())
        if not equals or match is None:
            raise ValueError("malformed array literal")
        pairs = _BOUND_PAIR.findall(decoration)
        bounds = tuple(int(low) for low, _ in pairs)
        lengths = tuple(int(high) - int(low) + 1 for low, high in pairs)
        text = rest
    reader = _ArrayReader(text, element)
    reader.skip_space()
    value = reader.read_array()
    reader.skip_space()
    if reader.pos != len(text):
        raise ValueError("malformed array literal")
    _check_rectangular(value)
    if len(dimensions(value)) > _MAX_DIMENSIONS:
        raise ValueError("number of array dimensions exceeds the maximum allowed (6)")
    if bounds is None:
        return value
    if dimensions(value) != lengths:
        raise ValueError("malformed array literal")
    return with_bounds(value, bounds)


_MAX_DIMENSIONS: Final = 6
_BOUND_PAIR: Final = re.compile(r"\[\s*([+-]?\d+)\s*:\s*([+-]?\d+)\s*\]")
_DECORATION: Final = re.compile(r"(?:\[\s*[+-]?\d+\s*:\s*[+-]?\d+\s*\])+")


class _ArrayReader:
    def __init__(self, text: str, element: Callable[[str], Any]) -> None:
        self.text = text
        self.pos = 0
        self.element = element

    def fail(self) -> ValueError:
        return ValueError(f"malformed array literal: {self.text}")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def read_array(self) -> tuple[Any, ...]:
        if not self.text.startswith("{", self.pos):
            raise self.fail()
        self.pos += 1
        self.skip_space()
        items: list[Any] = []
        if self.text.startswith("}", self.pos):
            self.pos += 1
            return ()
        while True:
            self.skip_space()
            items.append(self.read_item())
            self.skip_space()
            if self.pos >= len(self.text):
                raise self.fail()
            char = self.text[self.pos]
            self.pos += 1
            if char == "}":
                return tuple(items)
            if char != ",":
                raise self.fail()

    def read_item(self) -> Any:
        if self.text.startswith("{", self.pos):
            return self.read_array()
        if self.text.startswith('"', self.pos):
            return self.element(self.read_quoted())
        raw, escaped = self.read_unquoted()
        if not escaped and raw.upper() == "NULL":
            return None
        return self.element(raw)

    def read_quoted(self) -> str:
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == "\\":
                if self.pos >= len(self.text):
                    break
                out.append(self.text[self.pos])
                self.pos += 1
            elif char == '"':
                return "".join(out)
            else:
                out.append(char)
        raise self.fail()

    def read_unquoted(self) -> tuple[str, bool]:
        out: list[str] = []
        escaped = False
        trailing = 0
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in ',}{"':
                break
            self.pos += 1
            if char == "\\":
                if self.pos >= len(self.text):
                    raise self.fail()
                out.append(self.text[self.pos])
                self.pos += 1
                escaped, trailing = True, 0
            else:
                out.append(char)
                trailing = trailing + 1 if char.isspace() else 0
        if self.pos < len(self.text) and self.text[self.pos] in '{"':
            raise self.fail()
        if not out:
            raise self.fail()
        return "".join(out[: len(out) - trailing]), escaped


def _check_rectangular(value: tuple[Any, ...]) -> None:
    nested = [isinstance(item, tuple) for item in value]
    if any(nested) and not all(nested):
        raise ValueError("multidimensional arrays must have sub-arrays with matching dimensions")
    if value and all(nested):
        if len({len(item) for item in value}) != 1 or any(len(item) == 0 for item in value):
            raise ValueError("multidimensional arrays must have matching dimensions")
        shapes = {_shape(item) for item in value}
        if len(shapes) != 1:
            raise ValueError("multidimensional arrays must have matching dimensions")
        for item in value:
            _check_rectangular(item)


def _shape(value: Any) -> tuple[int, ...]:
    if isinstance(value, tuple):
        return (len(value), *(_shape(value[0]) if value else ()))
    return ()


class BoundedArray(tuple[Any, ...]):
    """An array whose lower bounds are not all 1 (``[2:3]={7,8}``); ``bounds`` per dimension."""

    bounds: tuple[int, ...]

    def __new__(cls, items: Any, bounds: tuple[int, ...]) -> BoundedArray:
        array = super().__new__(cls, items)
        array.bounds = bounds
        return array


def dimensions(value: tuple[Any, ...]) -> tuple[int, ...]:
    """The length of each dimension (``()`` for an empty array)."""
    return _shape(value) if value else ()


def lower_bounds(value: tuple[Any, ...]) -> tuple[int, ...]:
    """The lower bound of each dimension (1 unless written otherwise)."""
    if isinstance(value, BoundedArray):
        return value.bounds
    return (1,) * len(dimensions(value))


def with_bounds(items: tuple[Any, ...], bounds: tuple[int, ...]) -> tuple[Any, ...]:
    """``items`` as an array with the given lower bounds."""
    if all(bound == 1 for bound in bounds):
        return tuple(items)
    return BoundedArray(items, bounds)


def array_shape(value: tuple[Any, ...]) -> tuple[Any, ...]:
    """What orders arrays with equal elements: dimension count, lengths, lower bounds."""
    dims = dimensions(value)
    return (len(dims), dims, lower_bounds(value))


def flatten(value: tuple[Any, ...]) -> list[Any]:
    """The elements of a (possibly multidimensional) array in storage order."""
    out: list[Any] = []
    for item in value:
        if isinstance(item, tuple):
            out.extend(flatten(item))
        else:
            out.append(item)
    return out


def format_array(value: tuple[Any, ...], element: Callable[[Any], str]) -> str:
    """Render an array as Postgres's ``array_out`` does (``[2:3]={7,8}`` for other bounds)."""
    if isinstance(value, BoundedArray):
        dims = dimensions(value)
        decoration = "".join(
            f"[{low}:{low + length - 1}]" for low, length in zip(value.bounds, dims, strict=True)
        )
        return decoration + "=" + format_array(tuple(value), element)
    parts: list[str] = []
    for item in value:
        if isinstance(item, tuple):
            parts.append(format_array(item, element))
        elif item is None:
            parts.append("NULL")
        else:
            parts.append(_quote_element(element(item)))
    return "{" + ",".join(parts) + "}"


_NEEDS_QUOTES: Final = re.compile(r'[{},"\\\s]')


def _quote_element(text: str) -> str:
    if text == "" or text.upper() == "NULL" or _NEEDS_QUOTES.search(text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


# ---------------------------------------------------------------------------------------------
# Text output


def format_float(value: float, digits: int = 15) -> str:
    """Render a float as Postgres's shortest-exact output (``digits`` 15, 6 for ``float4``)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    mantissa, exponent = _shortest_digits(value, digits == 6)
    sign = "-" if value < 0 else ""
    point = exponent  # decimal exponent of the first digit
    if point < -4 or point >= digits:
        tail = "." + mantissa[1:] if len(mantissa) > 1 else ""
        return f"{sign}{mantissa[0]}{tail}e{'-' if point < 0 else '+'}{abs(point):02d}"
    if point < 0:
        return f"{sign}0.{'0' * (-point - 1)}{mantissa}"
    whole = mantissa[: point + 1].ljust(point + 1, "0")
    fraction = mantissa[point + 1 :]
    return f"{sign}{whole}.{fraction}" if fraction else f"{sign}{whole}"


def _shortest_digits(value: float, single: bool) -> tuple[str, int]:
    if single:
        for precision in range(1, 10):
            text = f"{abs(value):.{precision - 1}e}"
            if to_float4(float(text)) == abs(value):
                break
    else:
        text = f"{Decimal(repr(abs(value))):e}"
    mantissa, _, exponent = text.partition("e")
    digits = mantissa.replace(".", "").rstrip("0") or "0"
    return digits, int(exponent)


def format_numeric(value: Decimal) -> str:
    """Render a numeric without exponent notation."""
    if value.is_nan():
        return "NaN"
    if value.is_infinite():
        return "Infinity" if value > 0 else "-Infinity"
    return format(value, "f")


def _format_fraction(micros: int) -> str:
    return f".{micros:06d}".rstrip("0") if micros else ""


def format_datetime(type_name: str, value: int | Infinity) -> str:
    """Render a date, timestamp or timestamptz (shown in UTC, as ``+00``)."""
    if isinstance(value, Infinity):
        return "infinity" if value.sign > 0 else "-infinity"
    if type_name == "date":
        return pgtime.format_date(value)
    return pgtime.format_timestamp(value, with_zone=type_name == "timestamptz")


def format_interval(value: Interval) -> str:
    """Render an interval as syncd's sessions do (``IntervalStyle=iso_8601``).

    Each field keeps its own sign: ``P1Y2M-3DT-4H-5M-6.5S``; zero is ``PT0S``.
    """
    years, months = _truncating_divmod(value.months, 12)
    hours, rest = _truncating_divmod(value.micros, 3_600_000_000)
    minutes, micros = _truncating_divmod(rest, 60_000_000)
    seconds, fraction = _truncating_divmod(micros, 1_000_000)
    if not (value.months or value.days or value.micros):
        return "PT0S"
    out = ["P"]
    for amount, unit in ((years, "Y"), (months, "M"), (value.days, "D")):
        if amount:
            out.append(f"{amount}{unit}")
    if value.micros:
        out.append("T")
        for amount, unit in ((hours, "H"), (minutes, "M")):
            if amount:
                out.append(f"{amount}{unit}")
        if seconds or fraction:
            sign = "-" if seconds < 0 or fraction < 0 else ""
            out.append(f"{sign}{abs(seconds)}{_format_fraction(abs(fraction))}S")
    return "".join(out)


def _truncating_divmod(value: int, divisor: int) -> tuple[int, int]:
    """C's ``/`` and ``%`` (rounding toward zero), as Postgres splits interval fields."""
    quotient = abs(value) // divisor * (1 if value >= 0 else -1)
    return quotient, value - quotient * divisor


def format_interval_postgres(value: Interval) -> str:
    """Render an interval in the ``postgres`` IntervalStyle (``1 year 2 mons 3 days 04:05:06``)."""
    parts: list[str] = []
    years, months = int(value.months / 12), value.months - int(value.months / 12) * 12
    for amount, unit in ((years, "year"), (months, "mon"), (value.days, "day")):
        if amount:
            parts.append(f"{amount} {unit}{'' if amount == 1 else 's'}")
    if value.micros or not parts:
        negative = value.micros < 0
        seconds, micros = divmod(abs(value.micros), 1_000_000)
        minutes, seconds = divmod(seconds, 60)
        hours, minutes = divmod(minutes, 60)
        sign = "-" if negative else ("+" if parts and _any_negative(value) else "")
        clock = f"{sign}{hours:02d}:{minutes:02d}:{seconds:02d}{_format_fraction(micros)}"
        parts.append(clock)
    return " ".join(parts)


def _any_negative(value: Interval) -> bool:
    return value.months < 0 or value.days < 0


def format_value(type_name: str, value: Any) -> str:
    """Render a value as Postgres's output function for ``type_name`` does (``bool``: ``t``)."""
    if is_array(type_name):
        element = element_type(type_name)
        return format_array(value, lambda item: format_value(element, item))
    if type_name == "bool":
        return "t" if value else "f"
    if type_name in ("float4", "float8"):
        return format_float(value, 6 if type_name == "float4" else 15)
    if type_name == "numeric":
        return format_numeric(value)
    if type_name in TIMESTAMPS:
        return format_datetime(type_name, value)
    if type_name == "time":
        return pgtime.format_time(value)
    if type_name == "interval":
        return format_interval(value)
    return str(value)


# ---------------------------------------------------------------------------------------------
# Conversions between types (implicit promotions and explicit casts)


def common_numeric(left: str, right: str) -> str:
    """The type Postgres compares or computes two numeric types in."""
    if left == right:
        return left
    if "float4" in (left, right) or "float8" in (left, right):
        return "float8"
    return left if NUMERIC_RANK[left] > NUMERIC_RANK[right] else right


def _round_half_even_int(value: float) -> int:
    if math.isnan(value) or math.isinf(value):
        raise _out_of_range("integer out of range")
    return round(value)


def _decimal_to_int(value: Decimal) -> int:
    if value.is_nan():
        raise EvaluationError("cannot convert NaN to integer", "feature_not_supported")
    if not value.is_finite():
        raise EvaluationError("cannot convert infinity to integer", "feature_not_supported")
    if value.adjusted() > 20:
        raise _out_of_range("integer out of range")
    return int(value.to_integral_value(rounding="ROUND_HALF_UP"))


def check_int(target: str, value: int) -> int:
    """``value`` if it fits ``target`` (an integer type), else :class:`EvaluationError`."""
    limit = _INT_RANGE[target]
    if not -limit <= value < limit:
        raise _out_of_range(f"{_INT_WORDS[target]} out of range")
    return value


def converter(source: str, target: str) -> Callable[[Any], Any] | None:
    """A function converting non-NULL values of ``source`` to ``target``, or None if no cast.

    Covers numeric promotions and casts, text-to-anything (input functions), anything-to-text
    (output functions; ``bool`` renders as ``true``/``false`` here as ``booltext`` does),
    date/timestamp promotions and the int4/bool casts.
    """
    if source == target:
        return _same
    if target == JSONB and (source in TEXTS or source == UNKNOWN):
        return pgjson.canonical_jsonb
    if source in TEXTS or source.startswith("opaque:") or source == UNKNOWN:
        if target in TEXTS:
            if target == "bpchar":
                return parse_bpchar
            return bpchar_to_text if source == "bpchar" else _same
        parse = parser_for(target)
        return lambda value: parse(value)
    if target in TEXTS:
        if source == "bool":
            return lambda value: "true" if value else "false"
        return lambda value: format_value(source, value)
    if source in NUMERIC_RANK and target in NUMERIC_RANK:
        return _numeric_converter(source, target)
    if (source, target) in (("int4", "bool"), ("bool", "int4")):
        return bool if target == "bool" else int
    if source in TIMESTAMPS and target in TIMESTAMPS:
        return _timestamp_converter(source, target)
    if source in ("timestamp", "timestamptz") and target == "time":
        return _time_of
    if is_array(source) and is_array(target):
        inner = converter(element_type(source), element_type(target))
        if inner is None:
            return None
        return lambda value: _map_array(value, inner)
    return None


def _time_of(value: int | Infinity) -> int | None:
    """``timestamp::time``: NULL for the infinities."""
    return None if isinstance(value, Infinity) else value % pgtime.USEC_PER_DAY


def _same(value: Any) -> Any:
    return value


def _map_array(value: tuple[Any, ...], func: Callable[[Any], Any]) -> tuple[Any, ...]:
    return tuple(
        _map_array(item, func)
        if isinstance(item, tuple)
        else (None if item is None else func(item))
        for item in value
    )


def _numeric_converter(source: str, target: str) -> Callable[[Any], Any]:
    if target in INTS:
        if source in INTS:
            return lambda value: check_int(target, value)
        if source == "numeric":
            return lambda value: check_int(target, _decimal_to_int(value))
        return lambda value: check_int(target, _round_half_even_int(value))
    if target == "numeric":
        if source in ("float4", "float8"):
            return lambda value: _float_to_numeric(value, 6 if source == "float4" else 15)
        return Decimal
    if target == "float4":
        if source == "float8":
            return float8_to_float4
        if source == "numeric":
            return lambda value: parse_float4(format_numeric(value))
        return lambda value: to_float4(float(value))
    if source == "numeric":
        return lambda value: parse_float8(format_numeric(value))
    return float


def _float_to_numeric(value: float, digits: int) -> Decimal:
    """``float::numeric``: ``digits`` significant digits (15 for float8, 6 for float4)."""
    if math.isnan(value):
        return Decimal("NaN")
    if math.isinf(value):
        return Decimal("Infinity") if value > 0 else Decimal("-Infinity")
    return normal_numeric(Decimal(f"{value:.{digits}g}"))


def _timestamp_converter(source: str, target: str) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if isinstance(value, Infinity):
            return value
        if source == "date":
            if target == "date":
                return value
            micros = value * pgtime.USEC_PER_DAY
            try:
                return pgtime.check_timestamp(micros)
            except EvaluationError:
                raise pgtime.out_of_range("date") from None
        if target == "date":
            return value // pgtime.USEC_PER_DAY
        return value

    return convert


def add_interval(value: int | Infinity, interval: Interval) -> int | Infinity:
    """``timestamp + interval``: months first, then days, then microseconds."""
    if isinstance(value, Infinity):
        return value
    return pgtime.add_interval(value, interval.months, interval.days, interval.micros)


def subtract_timestamps(left: int, right: int) -> Interval:
    """``timestamp - timestamp``: whole days plus the remaining time, as Postgres returns it."""
    micros = left - right
    days = abs(micros) // _USEC_PER_DAY * (1 if micros >= 0 else -1)
    return Interval(0, days, micros - days * _USEC_PER_DAY)
