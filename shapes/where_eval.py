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
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, DivisionByZero
from typing import Any, Final

from shapes import pgtime, pgtypes, where_like
from shapes.errors import EvaluationError
from shapes.pgtypes import Infinity, Interval

Env = Sequence[Any]
Fn = Callable[[Env], Any]

EXACT: Final = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[DivisionByZero])
"""Exact decimal arithmetic (``inf - inf`` and the like give NaN, as in Postgres)."""
_NUMERIC_CONTEXT: Final = EXACT
_NUMERIC_WEIGHT_DIGITS: Final = 131_072  # digits before the point Postgres can store
_NUMERIC_SCALE_MAX: Final = 16_383  # digits after the point


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
        a, b = left(env), right(env)  # Postgres evaluates every argument, then checks NULLs
        if a is None or b is None:
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


def _element_cmp(a: Any, b: Any) -> int:
    """Three-way comparison of two array elements, NULL above everything (``array_cmp``)."""
    if a is None or b is None:
        return (a is None) - (b is None)
    ka, kb = _float_key(a), _float_key(b)
    return -1 if ka < kb else (1 if ka > kb else 0)


def array_cmp(a: tuple[Any, ...], b: tuple[Any, ...]) -> int:
    """Postgres's array ordering: elements in storage order, then the element count, then the
    number of dimensions, their lengths and lower bounds."""
    left, right = pgtypes.flatten(a), pgtypes.flatten(b)
    for x, y in zip(left, right, strict=False):
        result = _element_cmp(x, y)
        if result:
            return result
    if len(left) != len(right):
        return -1 if len(left) < len(right) else 1
    shape_a, shape_b = pgtypes.array_shape(a), pgtypes.array_shape(b)
    return -1 if shape_a < shape_b else (1 if shape_a > shape_b else 0)


def _array_compare(op: str) -> Callable[[Any, Any], bool]:
    test = _COMPARATORS[op]
    return lambda a, b: test(array_cmp(a, b), 0)


def comparator(op: str, type_name: str) -> Callable[[Any, Any], bool]:
    """The non-NULL comparison function of ``op`` for values of ``type_name``."""
    base = _COMPARATORS[op]
    if pgtypes.is_array(type_name):
        return _array_compare(op)
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
            for item in items:  # Postgres still evaluates the list (it may raise)
                item(env)
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
        value, elements = left(env), array(env)  # both evaluated, as Postgres does
        if elements is None:
            return None
        elements = pgtypes.flatten(elements)
        if not elements:
            return want_all
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


def _incompatible() -> EvaluationError:
    return EvaluationError("cannot concatenate incompatible arrays", "array_subscript_error")


def array_concat(left: tuple[Any, ...], right: tuple[Any, ...]) -> tuple[Any, ...]:
    """``anyarray || anyarray`` (``array_cat``): same dimensions, or one dimension less."""
    if not left:
        return right
    if not right:
        return left
    dims_left, dims_right = pgtypes.dimensions(left), pgtypes.dimensions(right)
    bounds_left, bounds_right = pgtypes.lower_bounds(left), pgtypes.lower_bounds(right)
    if len(dims_left) == len(dims_right):
        if dims_left[1:] != dims_right[1:] or bounds_left[1:] != bounds_right[1:]:
            raise _incompatible()
        return pgtypes.with_bounds(tuple(left) + tuple(right), bounds_left)
    if len(dims_left) == len(dims_right) + 1:
        if dims_left[1:] != dims_right or bounds_left[1:] != bounds_right:
            raise _incompatible()
        return pgtypes.with_bounds((*left, tuple(right)), bounds_left)
    if len(dims_right) == len(dims_left) + 1:
        if dims_right[1:] != dims_left or bounds_right[1:] != bounds_left:
            raise _incompatible()
        return pgtypes.with_bounds((tuple(left), *right), bounds_right)
    raise _incompatible()


def array_add(array: tuple[Any, ...], item: Any, append: bool) -> tuple[Any, ...]:
    """``array_append`` / ``array_prepend``: only for empty or one-dimensional arrays."""
    if any(isinstance(element, tuple) for element in array):
        raise EvaluationError("argument must be empty or one-dimensional array", "data_exception")
    if not array:
        return (item,)
    bounds = pgtypes.lower_bounds(array)
    return pgtypes.with_bounds((*array, item) if append else (item, *array), bounds)


# ---------------------------------------------------------------------------------------------
# LIKE


def like_constant(pattern: str, ignore_case: bool, escape: str, text: Fn) -> Fn | None:
    """``text LIKE pattern`` with a constant pattern compiled now, not at each row; None when
    compiling it raises (Postgres raises on the rows then: the generic form does)."""
    try:
        match = where_like.compile_pattern(pattern, escape, ignore_case).match
    except EvaluationError:
        return None

    def run(env: Env) -> bool | None:
        value = text(env)
        return None if value is None else match(value)

    return run


def like(ignore_case: bool, escape: str = "\\") -> Callable[[str, str], bool]:
    """The non-NULL ``LIKE``/``ILIKE`` function (linear time, see :mod:`shapes.where_like`)."""

    def run(text: str, pattern: str) -> bool:
        return where_like.compile_pattern(pattern, escape, ignore_case).match(text)

    return run


# ---------------------------------------------------------------------------------------------
# Arithmetic


def _division_by_zero() -> EvaluationError:
    return EvaluationError("division by zero", "division_by_zero")


def _int_div(a: int, b: int) -> int:
    if b == 0:
        raise _division_by_zero()
    quotient = abs(a) // abs(b)
    return quotient if (a < 0) == (b < 0) else -quotient


def _int_mod(a: int, b: int) -> int:
    if b == 0:
        raise _division_by_zero()
    remainder = abs(a) % abs(b)
    return remainder if a >= 0 else -remainder


def _float_op(op: str, single: bool) -> Callable[[float, float], float]:
    """Float ``+ - * /`` with Postgres's overflow, underflow and division-by-zero errors."""
    narrow = pgtypes.to_float4 if single else float

    def run(a: float, b: float) -> float:
        inf_in = math.isinf(a) or math.isinf(b)
        if op == "+":
            return pgtypes.check_float(narrow(a + b), inf_in, True)
        if op == "-":
            return pgtypes.check_float(narrow(a - b), inf_in, True)
        if op == "*":
            return pgtypes.check_float(narrow(a * b), inf_in, a == 0.0 or b == 0.0)
        if b == 0.0 and not math.isnan(a):
            raise _division_by_zero()
        if math.isnan(b) or math.isnan(a):
            return math.nan
        if math.isinf(b):
            quotient = a / b if not math.isinf(a) else math.nan
        else:
            quotient = a / b
        return pgtypes.check_float(narrow(quotient), math.isinf(a), a == 0.0 or math.isinf(b))

    return run


def _numeric_scale_parts(value: Decimal) -> tuple[int, int]:
    """Weight (in base-10000 digits) and value of the first non-zero base-10000 digit."""
    if value.is_zero():
        return 0, 0
    weight = value.adjusted() // 4
    first = int(value.copy_abs().scaleb(-4 * weight, EXACT)) % 10000
    return weight, first


def _dscale(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def _numeric_div(a: Decimal, b: Decimal) -> Decimal:
    """``numeric / numeric`` with the result scale Postgres chooses (``select_div_scale``)."""
    if a.is_nan() or b.is_nan():
        return Decimal("NaN")
    if b.is_zero():
        raise _division_by_zero()
    if a.is_infinite():
        return Decimal("NaN") if b.is_infinite() else (a if b > 0 else -a)
    if b.is_infinite():
        return Decimal(0)
    weight1, first1 = _numeric_scale_parts(a)
    weight2, first2 = _numeric_scale_parts(b)
    quotient_weight = weight1 - weight2 - (1 if first1 <= first2 else 0)
    scale = max(16 - quotient_weight * 4, _dscale(a), _dscale(b), 0)
    scale = min(scale, 1000)
    # exact: quotient = round_half_up(|a| / |b| * 10^scale), in integer Decimal arithmetic
    num, den = a.copy_abs().scaleb(scale, EXACT), b.copy_abs()
    quotient, remainder = EXACT.divmod(num, den)
    if EXACT.compare(EXACT.multiply(remainder, 2), den) >= 0:
        quotient = EXACT.add(quotient, 1)
    result = quotient.scaleb(-scale, EXACT)
    negative = a.is_signed() != b.is_signed() and not result.is_zero()
    return result.copy_negate() if negative else result


def _numeric_mod(a: Decimal, b: Decimal) -> Decimal:
    if a.is_nan() or b.is_nan():
        return Decimal("NaN")
    if b.is_zero():
        raise _division_by_zero()
    if a.is_infinite():
        return Decimal("NaN")
    if b.is_infinite():
        return a
    return _NUMERIC_CONTEXT.remainder(a, b)


def _numeric(func: Callable[[Decimal, Decimal], Decimal]) -> Callable[[Decimal, Decimal], Decimal]:
    def run(a: Decimal, b: Decimal) -> Decimal:
        if (
            a.is_finite()
            and b.is_finite()
            and max(a.adjusted(), b.adjusted()) > 2 * (_NUMERIC_WEIGHT_DIGITS)
        ):
            raise _numeric_overflow()  # not a value Postgres can hold: never compute it
        result = pgtypes.normal_numeric(func(a, b))
        if result.is_finite() and not result.is_zero():
            if result.adjusted() >= _NUMERIC_WEIGHT_DIGITS or _dscale(result) > _NUMERIC_SCALE_MAX:
                raise _numeric_overflow()
        return result

    return run


def _numeric_overflow() -> EvaluationError:
    return EvaluationError("value overflows numeric format", "numeric_value_out_of_range")


def _checked(type_name: str, func: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    if type_name in pgtypes.INTS:

        def checked(a: Any, b: Any) -> Any:
            return pgtypes.check_int(type_name, func(a, b))

        return checked
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
            "+": _numeric(_NUMERIC_CONTEXT.add),
            "-": _numeric(_NUMERIC_CONTEXT.subtract),
            "*": _numeric(_NUMERIC_CONTEXT.multiply),
            "/": _numeric(_numeric_div),
            "%": _numeric(_numeric_mod),
        }
    elif op in "+-*/":
        return _float_op(op, type_name == "float4")
    else:
        return None
    func = table.get(op)
    return None if func is None else _checked(type_name, func)


def negate_value(type_name: str) -> Callable[[Any], Any]:
    """Unary minus (the integer minimum has no negation)."""
    if type_name in pgtypes.INTS:
        return lambda value: pgtypes.check_int(type_name, -value)
    if type_name == "numeric":
        return lambda value: pgtypes.normal_numeric(value.copy_negate())
    return operator.neg


def date_plus_days(value: int | Infinity, days: int) -> int | Infinity:
    """``date + int4``."""
    if isinstance(value, Infinity):
        return value
    return pgtime.check_date(value + days)


def date_minus_date(left: int | Infinity, right: int | Infinity) -> int:
    """``date - date``: a number of days."""
    if isinstance(left, Infinity) or isinstance(right, Infinity):
        raise EvaluationError("cannot subtract infinite dates", "datetime_value_out_of_range")
    return left - right


def timestamp_plus(value: int | Infinity, interval: Interval) -> int | Infinity:
    """``timestamp[tz] + interval``."""
    return pgtypes.add_interval(value, interval)


def timestamp_minus(left: int | Infinity, right: int | Infinity) -> Interval:
    """``timestamp[tz] - timestamp[tz]``."""
    if isinstance(left, Infinity) or isinstance(right, Infinity):
        raise EvaluationError("cannot subtract infinite timestamps", "datetime_value_out_of_range")
    return pgtypes.subtract_timestamps(left, right)


class ParsedRow(dict[str, "str | None"]):
    """A row's column texts (as a plain ``dict``) that also keeps the values :func:`row_env`
    parses from them, so that every shape a change is tested against parses each of its values
    once. Fill it before the first :func:`row_env` and never change it after."""

    __slots__ = ("envs", "parsed")

    parsed: dict[tuple[str, Callable[[str], Any]], Any]
    """Per slot ``(column, parser)``: the parsed value, or ``_UNPARSABLE``. Made on first use."""
    envs: dict[tuple[tuple[str, Callable[[str], Any]], ...], list[Any]]
    """Per tuple of slots: the environment built from them, shared by every clause that reads
    the same columns the same way (clauses only read it). Made on first use: a row that no
    clause reads costs no more than a dict."""


_UNPARSABLE: Final = object()


def row_env(slots: Sequence[tuple[str, Callable[[str], Any]]], row: Any) -> list[Any]:
    """The environment of a row: each slot's column text parsed (``None`` for NULL or a
    missing column). A :class:`ParsedRow` parses each slot once for all callers.

    Raises:
        EvaluationError: a value does not parse as its column's type (the message names the
            column, never the value).
    """
    if type(row) is ParsedRow:
        return _remembered_env(slots, row)
    env: list[Any] = []
    for name, parse in slots:
        text = row.get(name)
        if text is None:
            env.append(None)
            continue
        try:
            env.append(parse(text))
        except (ValueError, TypeError, ArithmeticError, RecursionError):
            raise _unparsable(name) from None
    return env


def _remembered_env(slots: Sequence[tuple[str, Callable[[str], Any]]], row: ParsedRow) -> list[Any]:
    if type(slots) is not tuple:
        return _parsed_env(slots, row)
    try:
        envs = row.envs
    except AttributeError:
        envs = row.envs = {}
    env = envs.get(slots)
    if env is None:
        env = envs[slots] = _parsed_env(slots, row)
    return env


def _parsed_env(slots: Sequence[tuple[str, Callable[[str], Any]]], row: ParsedRow) -> list[Any]:
    try:
        parsed = row.parsed
    except AttributeError:
        parsed = row.parsed = {}
    env: list[Any] = []
    for slot in slots:
        value = parsed.get(slot, _UNPARSABLE)
        if value is _UNPARSABLE:
            if slot in parsed:
                raise _unparsable(slot[0])
            text = row.get(slot[0])
            try:
                value = None if text is None else slot[1](text)
            except (ValueError, TypeError, ArithmeticError, RecursionError):
                parsed[slot] = _UNPARSABLE
                raise _unparsable(slot[0]) from None
            parsed[slot] = value
        env.append(value)
    return env


def _unparsable(column: str) -> EvaluationError:
    return EvaluationError(
        f"column {column} has a value that does not parse as its type",
        "invalid_text_representation",
    )
