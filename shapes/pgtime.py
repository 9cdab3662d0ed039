"""Dates, times and timestamps as Postgres stores them, over its whole range.

Layer: ``shapes`` (pure). Values are integers, as in Postgres: a ``date`` is the number of days
since 2000-01-01, a ``timestamp``/``timestamptz`` the number of microseconds since 2000-01-01
00:00 UTC, a ``time`` the microseconds since midnight (``24:00:00`` included). ``±infinity``
dates and timestamps are :class:`shapes.pgtypes.Infinity`. So BC dates, years past 9999 and
``24:00:00`` are ordinary values, and comparisons and arithmetic are integer operations.

Calendar conversions are Postgres's own Julian-day algorithms (``date2j``/``j2date``), years
astronomical inside (year 0 is 1 BC). Text input is the ISO 8601 form Postgres outputs with
``DateStyle=ISO`` (``2024-02-29``, ``0044-03-15 BC``, ``2024-02-29 12:00:00.5+02``); other input
spellings raise ``ValueError`` (a clause with such a literal is refused). ``timestamptz`` text
without a zone is UTC, syncd's session time zone.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Final

from shapes.errors import EvaluationError

USEC_PER_DAY: Final = 86_400_000_000
_EPOCH_JDATE: Final = 2_451_545  # 2000-01-01
_DATE_END_JULIAN: Final = 2_147_483_494  # first day past the date range
_TIMESTAMP_END_JULIAN: Final = 109_203_528  # 294277-01-01, first day past the timestamp range
_DAYS_IN_MONTH: Final = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

_DATE: Final = r"(\d{4,})-(\d{1,2})-(\d{1,2})"
_CLOCK: Final = r"(\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?"
_ZONE: Final = r"(Z|UTC|[+-]\d{1,2}(?::?\d{2}(?::?\d{2})?)?)"
_DATE_RE: Final = re.compile(rf"\s*{_DATE}(?:\s+(BC|AD))?\s*", re.IGNORECASE)
_TIMESTAMP_RE: Final = re.compile(
    rf"\s*{_DATE}(?:[ T]{_CLOCK})?\s*{_ZONE}?(?:\s+(BC|AD))?\s*", re.IGNORECASE
)
_TIME_RE: Final = re.compile(rf"\s*{_CLOCK}\s*")


class OtherSpelling(ValueError):
    """Date/time input in a form other than ISO 8601 (Postgres may read it; syncd does not)."""


def out_of_range(what: str) -> EvaluationError:
    """The error Postgres raises for a date or timestamp outside its range."""
    return EvaluationError(f"{what} out of range", "datetime_value_out_of_range")


# ---------------------------------------------------------------------------------------------
# Calendar


def is_leap(year: int) -> bool:
    """Gregorian leap year (astronomical numbering)."""
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def days_in_month(year: int, month: int) -> int:
    """Days of a month (astronomical year)."""
    return 29 if month == 2 and is_leap(year) else _DAYS_IN_MONTH[month - 1]


def date2j(year: int, month: int, day: int) -> int:
    """Julian day number of a date (astronomical year), as Postgres computes it."""
    if month > 2:
        month += 1
        year += 4800
    else:
        month += 13
        year += 4799
    century = year // 100
    julian = year * 365 - 32167
    julian += year // 4 - century + century // 4
    return julian + 7834 * month // 256 + day


def j2date(julian_day: int) -> tuple[int, int, int]:
    """Year (astronomical), month and day of a Julian day number."""
    julian = julian_day + 32044
    quad = julian // 146097
    extra = (julian - quad * 146097) * 4 + 3
    julian += 60 + quad * 3 + extra // 146097
    quad = julian // 1461
    julian -= quad * 1461
    year = julian * 4 // 1461
    julian = ((julian + 305) % 365 if year != 0 else (julian + 306) % 366) + 123
    year += quad * 4
    quad = julian * 2141 // 65536
    day = julian - 7834 * quad // 256
    month = (quad + 10) % 12 + 1
    return year - 4800, month, day


def make_date(year: int, month: int, day: int) -> int:
    """Days since 2000-01-01 of a valid date (astronomical year), else ``ValueError``."""
    if not (1 <= month <= 12 and 1 <= day <= days_in_month(year, month)):
        raise ValueError("date/time field value out of range")
    julian = date2j(year, month, day)
    if not 0 <= julian < _DATE_END_JULIAN:
        raise out_of_range("date")
    return julian - _EPOCH_JDATE


def check_date(days: int) -> int:
    """``days`` if inside the ``date`` range, else the Postgres error."""
    if not 0 <= days + _EPOCH_JDATE < _DATE_END_JULIAN:
        raise out_of_range("date")
    return days


def check_timestamp(micros: int) -> int:
    """``micros`` if inside the ``timestamp`` range, else the Postgres error."""
    if not 0 <= micros // USEC_PER_DAY + _EPOCH_JDATE < _TIMESTAMP_END_JULIAN:
        raise out_of_range("timestamp")
    return micros


def _year(digits: str, era: str | None) -> int:
    year = int(digits)
    if year == 0:
        raise ValueError("date/time field value out of range")
    return 1 - year if era is not None and era.upper() == "BC" else year


def _fraction_micros(fraction: str | None) -> int:
    if not fraction:
        return 0
    scaled = Decimal("0." + fraction).scaleb(6)
    return int(scaled.to_integral_value(rounding="ROUND_HALF_EVEN"))


def _clock(hour: str | None, minute: str | None, second: str | None, fraction: str | None) -> int:
    if hour is None or minute is None:
        return 0
    h, m, s = int(hour), int(minute), int(second or 0)
    micros = ((h * 60 + m) * 60 + s) * 1_000_000 + _fraction_micros(fraction)
    if m > 59 or s > 60 or h > 24 or micros > USEC_PER_DAY:
        raise ValueError("date/time field value out of range")
    return micros


def _zone_seconds(zone: str | None) -> int:
    if zone is None or zone.upper() in ("Z", "UTC"):
        return 0
    sign = -1 if zone[0] == "-" else 1
    digits = zone[1:].replace(":", "")
    hours = int(digits[:2]) if len(digits) != 1 and len(digits) != 3 else int(digits[:1])
    rest = digits[2:] if len(digits) != 1 and len(digits) != 3 else digits[1:]
    minutes = int(rest[:2] or 0)
    seconds = int(rest[2:4] or 0)
    return sign * (hours * 3600 + minutes * 60 + seconds)


# ---------------------------------------------------------------------------------------------
# Text input


def parse_date(text: str) -> int:
    """``YYYY-MM-DD[ BC]`` to days since 2000-01-01."""
    match = _DATE_RE.fullmatch(text)
    if match is None:
        raise OtherSpelling("date literals must be written in ISO 8601 form")
    year, month, day, era = match.groups()
    return make_date(_year(year, era), int(month), int(day))


def parse_timestamp(text: str, with_zone: bool) -> int:
    """``YYYY-MM-DD[ HH:MM[:SS[.f]]][zone][ BC]`` to microseconds since 2000-01-01 UTC.

    Without ``with_zone`` (``timestamp``), a zone in the text is ignored, as Postgres does.
    """
    match = _TIMESTAMP_RE.fullmatch(text)
    if match is None:
        raise OtherSpelling("timestamp literals must be written in ISO 8601 form")
    year, month, day, hour, minute, second, fraction, zone, era = match.groups()
    days = make_date(_year(year, era), int(month), int(day))
    micros = days * USEC_PER_DAY + _clock(hour, minute, second, fraction)
    if with_zone:
        micros -= _zone_seconds(zone) * 1_000_000
    return check_timestamp(micros)


def parse_time(text: str) -> int:
    """``HH:MM[:SS[.ffffff]]`` to microseconds since midnight (``24:00:00`` allowed)."""
    match = _TIME_RE.fullmatch(text)
    if match is None:
        raise OtherSpelling("time literals must be written in ISO 8601 form")
    return _clock(*match.groups())


# ---------------------------------------------------------------------------------------------
# Text output


def _fraction(micros: int) -> str:
    return f".{micros:06d}".rstrip("0") if micros else ""


def format_time(micros: int) -> str:
    """``HH:MM:SS[.ffffff]`` with trailing zeros trimmed."""
    seconds, fraction = divmod(micros, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return f"{hour:02d}:{minute:02d}:{second:02d}{_fraction(fraction)}"


def _date_parts(days: int) -> tuple[str, bool]:
    year, month, day = j2date(days + _EPOCH_JDATE)
    bc = year <= 0
    return f"{(1 - year) if bc else year:04d}-{month:02d}-{day:02d}", bc


def format_date(days: int) -> str:
    """``YYYY-MM-DD`` (``DateStyle=ISO``), `` BC`` appended before year 1."""
    text, bc = _date_parts(days)
    return text + " BC" if bc else text


def format_timestamp(micros: int, with_zone: bool) -> str:
    """``YYYY-MM-DD HH:MM:SS[.ffffff]`` (``+00`` for timestamptz in UTC), then `` BC``."""
    days, clock = divmod(micros, USEC_PER_DAY)
    text, bc = _date_parts(days)
    text = f"{text} {format_time(clock)}" + ("+00" if with_zone else "")
    return text + " BC" if bc else text


# ---------------------------------------------------------------------------------------------
# Arithmetic


def add_months(micros: int, months: int) -> int:
    """Calendar months added to a timestamp, the day clamped to the month's end."""
    days, clock = divmod(micros, USEC_PER_DAY)
    year, month, day = j2date(days + _EPOCH_JDATE)
    year, month_index = divmod(year * 12 + month - 1 + months, 12)
    month = month_index + 1
    day = min(day, days_in_month(year, month))
    julian = date2j(year, month, day)
    return check_timestamp((julian - _EPOCH_JDATE) * USEC_PER_DAY + clock)


def add_interval(micros: int, months: int, days: int, time_micros: int) -> int:
    """``timestamp + interval``: months, then days, then time (``timestamp_pl_interval``)."""
    if months:
        micros = add_months(micros, months)
    if days:
        micros = check_timestamp(micros + days * USEC_PER_DAY)
    return check_timestamp(micros + time_micros)
