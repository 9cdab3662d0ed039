"""Run-time building blocks of compiled ``where`` clauses: closures with Postgres semantics.

Layer: ``shapes`` (pure). A compiled expression is an :data:`Fn`: it takes the *environment*
(the parsed values of the referenced columns, by slot) and returns a Python value, ``None``
standing for SQL NULL. Boolean expressions return ``True``, ``False`` or ``None`` and combine
with SQL's three-valued logic. Failures that Postgres reports as run-time errors (division by
zero, out of range) raise :class:`EvalError`.

Text compares by code point, which is Postgres's ``C`` collation; ``lower``/``upper``/``ILIKE``
use Python's Unicode case mapping.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Hashable, Sequence
from datetime import date, datetime, timedelta
from decimal import Context, Decimal
from typing import Any, Final

from shapes import pgtypes, where_like
from shapes.errors import EvaluationError
from shapes.pgtypes import Infinity, Interval

Env = Sequence[Any]
Fn = Callable[[Env], Any]

_NUMERIC_CONTEXT: Final = Context(prec=1000)
_DIVISION_CONTEXT: Final = Context(prec=40)


EvalError = EvaluationError
"""Postgres would raise an error while evaluating the clause (e.g. division by zero)."""


class _NaN:
    """The single normalised form of every float and numeric NaN (Postgres: NaN = NaN)."""

    def __repr__(self) -> str:
        return "NaN"


NAN: Final = _NaN()


def hash_key(value: Any) -> Hashable:
    """A hashable form in which values equal in Postgres are equal (NaN folds to :data:`NAN`)."""
    if isinstance(value, float) and math.isnan(value):
        return NAN
    if isinstance(value, Decimal) and value.is_nan():
        return NAN
    if isinstance(value, tuple):
        return tuple(hash_key(item) for item in value)
    return value  # type: ignore[no-any-return]


def constant(value: Any) -> Fn:
    """An expression that always returns ``value``."""
    return lambda env: value


def slot(index: int) -> Fn:
    """An expression reading the ``index``-th referenced column."""
    return operator.itemgetter(index)


# ---------------------------------------------------------------------------------------------
# Strict application


def strict1(func: Callable[[Any], Any], arg: Fn) -> Fn:
    """``func(arg)``, NULL when the argument is NULL."""

    def run(env: Env) -> Any:
        value = arg(env)
        return None if value is None else func(value)

    return run


def strict2(func: Callable[[Any, Any], Any], left: Fn, right: Fn) -> Fn:
    """``func(left, right)``, NULL when either argument is NULL."""

    def run(env: Env) -> Any:
        a = left(env)
        if a is None:
            return None
        b = right(env)
        if b is None:
            return None
        return func(a, b)

    return run


# ---------------------------------------------------------------------------------------------
# Logic


def and_(args: Sequence[Fn]) -> Fn:
    """SQL ``AND``: false wins over NULL, NULL over true."""

    def run(env: Env) -> bool | None:
        result: bool | None = True
        for arg in args:
            value = arg(env)
            if value is False:
                return False
            if value is None:
                result = None
        return result

    return run


def or_(args: Sequence[Fn]) -> Fn:
    """SQL ``OR``: true wins over NULL, NULL over false."""

    def run(env: Env) -> bool | None:
        result: bool | None = False
        for arg in args:
            value = arg(env)
            if value is True:
                return True
            if value is None:
                result = None
        return result

    return run


def not_(arg: Fn) -> Fn:
    """SQL ``NOT``: NULL stays NULL."""
    return strict1(operator.not_, arg)


def bool_test(arg: Fn, expect: bool | None, negate: bool) -> Fn:
    """``IS [NOT] TRUE/FALSE/UNKNOWN``: never NULL."""

    def run(env: Env) -> bool:
        return (arg(env) is expect) != negate

    return run


def null_test(arg: Fn, negate: bool) -> Fn:
    """``IS [NOT] NULL``."""

    def run(env: Env) -> bool:
        return (arg(env) is None) != negate

    return run


# ---------------------------------------------------------------------------------------------
# Comparison


def _float_key(value: Any) -> Any:
    if value != value:  # NaN sorts above everything and equals itself in Postgres
        return (1, 0)
    return (0, value)


def _array_key(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_array_key(item) for item in value)
    if value is None:
        return (2,)
    return _float_key(value)


_COMPARATORS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "=": operator.eq,
    "<>": operator.ne,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
    "<=": operator.le,
    ">=": operator.ge,
}
COMPARISON_OPS: Final = frozenset(_COMPARATORS)


def comparator(op: str, type_name: str) -> Callable[[Any, Any], bool]:
    """The non-NULL comparison function of ``op`` for values of ``type_name``."""
    base = _COMPARATORS[op]
    if pgtypes.is_array(type_name):
        return lambda a, b: base(_array_key(a), _array_key(b))
    if type_name in ("float4", "float8", "numeric"):
        return lambda a, b: base(_float_key(a), _float_key(b))
    return base


def distinct(compare_eq: Callable[[Any, Any], bool], left: Fn, right: Fn, negate: bool) -> Fn:
    """``IS DISTINCT FROM`` (``negate``) or ``IS NOT DISTINCT FROM``: NULL equals NULL."""

    def run(env: Env) -> bool:
        a, b = left(env), right(env)
        if a is None or b is None:
            same = a is None and b is None
        else:
            same = compare_eq(a, b)
        return same != negate

    return run


def in_list(compare_eq: Callable[[Any, Any], bool], needle: Fn, items: Sequence[Fn]) -> Fn:
    """``x IN (a, b, ...)``: true on a match, else NULL if anything was NULL, else false."""

    def run(env: Env) -> bool | None:
        value = needle(env)
        if value is None:
            return None
        saw_null = False
        for item in items:
            candidate = item(env)
            if candidate is None:
                saw_null = True
            elif compare_eq(value, candidate):
                return True
        return None if saw_null else False

    return run


def quantified(func: Callable[[Any, Any], bool | None], left: Fn, array: Fn, want_all: bool) -> Fn:
    """``x op ANY(array)`` / ``x op ALL(array)`` with Postgres's NULL rules."""

    def run(env: Env) -> bool | None:
        elements = array(env)
        if elements is None:
            return None
        elements = pgtypes.flatten(elements)
        if not elements:
            return want_all
        value = left(env)
        if value is None:
            return None
        saw_null = False
        for element in elements:
            result = None if element is None else func(value, element)
            if result is None:
                saw_null = True
            elif result is not want_all:
                return result
        return None if saw_null else want_all

    return run


def greatest(compare_gt: Callable[[Any, Any], bool], args: Sequence[Fn]) -> Fn:
    """``GREATEST``/``LEAST`` (pass ``>`` or ``<``): NULL arguments are ignored."""

    def run(env: Env) -> Any:
        best = None
        for arg in args:
            value = arg(env)
            if value is not None and (best is None or compare_gt(value, best)):
                best = value
        return best

    return run


def coalesce(args: Sequence[Fn]) -> Fn:
    """``COALESCE``: the first non-NULL argument, evaluated lazily."""

    def run(env: Env) -> Any:
        for arg in args:
            value = arg(env)
            if value is not None:
                return value
        return None

    return run


# ---------------------------------------------------------------------------------------------
# Arrays


def _element_set(value: tuple[Any, ...]) -> set[Hashable]:
    return {hash_key(item) for item in pgtypes.flatten(value) if item is not None}


def array_contains(outer: tuple[Any, ...], inner: tuple[Any, ...]) -> bool:
    """``outer @> inner``: a NULL element of ``inner`` is never contained."""
    elements = pgtypes.flatten(inner)
    if any(item is None for item in elements):
        return False
    have = _element_set(outer)
    return all(hash_key(item) in have for item in elements)


def array_overlaps(left: tuple[Any, ...], right: tuple[Any, ...]) -> bool:
    """``left && right``: some non-NULL element in common."""
    return not _element_set(left).isdisjoint(_element_set(right))


def array_concat(left: tuple[Any, ...], right: tuple[Any, ...]) -> tuple[Any, ...]:
    """``anyarray || anyarray`` for arrays of the same dimensionality."""
    return left + right


# ---------------------------------------------------------------------------------------------
# LIKE


def like(ignore_case: bool, escape: str = "\\") -> Callable[[str, str], bool]:
    """The non-NULL ``LIKE``/``ILIKE`` function (linear time, see :mod:`shapes.where_like`)."""

    def run(text: str, pattern: str) -> bool:
        return where_like.compile_pattern(pattern, escape, ignore_case).match(text)

    return run


# ---------------------------------------------------------------------------------------------
# Arithmetic


def _int_div(a: int, b: int) -> int:
    if b == 0:
        raise EvalError("division by zero")
    quotient = abs(a) // abs(b)
    return quotient if (a < 0) == (b < 0) else -quotient


def _int_mod(a: int, b: int) -> int:
    if b == 0:
        raise EvalError("division by zero")
    remainder = abs(a) % abs(b)
    return remainder if a >= 0 else -remainder


def _float_div(a: float, b: float) -> float:
    if b == 0:
        raise EvalError("division by zero")
    return a / b


def _numeric_div(a: Decimal, b: Decimal) -> Decimal:
    if b == 0:
        raise EvalError("division by zero")
    return _DIVISION_CONTEXT.divide(a, b)


def _numeric_mod(a: Decimal, b: Decimal) -> Decimal:
    if b == 0:
        raise EvalError("division by zero")
    return _NUMERIC_CONTEXT.remainder(a, b)


def _checked(type_name: str, func: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    if type_name in pgtypes.INTS:

        def checked(a: Any, b: Any) -> Any:
            result = func(a, b)
            try:
                return pgtypes.check_int(type_name, result)
            except ValueError:
                raise EvalError(f"{type_name} out of range") from None

        return checked
    if type_name == "float4":
        return lambda a, b: pgtypes.to_float4(func(a, b))
    return func


def numeric_op(op: str, type_name: str) -> Callable[[Any, Any], Any] | None:
    """``+ - * / %`` on two values of the numeric type ``type_name`` (None: no such operator)."""
    if type_name in pgtypes.INTS:
        table: dict[str, Callable[[Any, Any], Any]] = {
            "+": operator.add,
            "-": operator.sub,
            "*": operator.mul,
            "/": _int_div,
            "%": _int_mod,
        }
    elif type_name == "numeric":
        table = {
            "+": _NUMERIC_CONTEXT.add,
            "-": _NUMERIC_CONTEXT.subtract,
            "*": _NUMERIC_CONTEXT.multiply,
            "/": _numeric_div,
            "%": _numeric_mod,
        }
    else:
        table = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": _float_div}
    func = table.get(op)
    return None if func is None else _checked(type_name, func)


def negate_value(type_name: str) -> Callable[[Any], Any]:
    """Unary minus."""
    if type_name == "float4":
        return lambda value: pgtypes.to_float4(-value)
    return operator.neg


def date_plus_days(value: date | Infinity, days: int) -> date | Infinity:
    """``date + int4``."""
    if isinstance(value, Infinity):
        return value
    try:
        return value + timedelta(days=days)
    except OverflowError:
        raise EvalError("date out of range") from None


def date_minus_date(left: date | Infinity, right: date | Infinity) -> int:
    """``date - date``: a number of days."""
    if isinstance(left, Infinity) or isinstance(right, Infinity):
        raise EvalError("cannot subtract infinite dates")
    return (left - right).days


def timestamp_plus(value: datetime | Infinity, interval: Interval) -> datetime | Infinity:
    """``timestamp[tz] + interval``."""
    try:
        return pgtypes.add_interval(value, interval)
    except ValueError as error:
        raise EvalError(str(error)) from None


def timestamp_minus(left: datetime | Infinity, right: datetime | Infinity) -> Interval:
    """``timestamp[tz] - timestamp[tz]``."""
    if isinstance(left, Infinity) or isinstance(right, Infinity):
        raise EvalError("cannot subtract infinite timestamps")
    return pgtypes.subtract_timestamps(left, right)
