"""Edge cases of where-clause arithmetic and array concatenation, pinned to Postgres's results.

These call the evaluator's operator functions directly. Each expectation is what Postgres returns
for the same operands: numeric division's result scale (``select_div_scale``) and rounding,
float overflow, underflow and infinity handling, and ``array_cat``'s dimension and bound rules.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import pytest

from shapes import pgtypes
from shapes.errors import EvaluationError, InvalidRequest
from shapes.offset import LogOffset, parse_offset
from shapes.pgtypes import Infinity
from shapes.schema import Column
from shapes.where import parse_where
from shapes.where_eval import (
    array_add,
    array_cmp,
    array_concat,
    date_minus_date,
    negate_value,
    numeric_op,
    timestamp_minus,
)


def numeric_div(a: str, b: str) -> Decimal:
    divide = numeric_op("/", "numeric")
    assert divide is not None
    result: Decimal = divide(Decimal(a), Decimal(b))
    return result


@pytest.mark.parametrize(
    ("a", "b", "text"),
    [
        ("1", "3", "0.33333333333333333333"),
        ("2", "3", "0.66666666666666666667"),
        ("-1", "3", "-0.33333333333333333333"),
        ("1", "-3", "-0.33333333333333333333"),
        ("-1", "-3", "0.33333333333333333333"),
        ("7", "2", "3.5000000000000000"),
        ("2", "2", "1.00000000000000000000"),
        ("1", "30000", "0.000033333333333333333333"),
        ("10000", "3", "3333.3333333333333333"),
        ("1.0000000000000000000000000", "3", "0.3333333333333333333333333"),
        ("1", "3.0000000000000000000000000", "0.3333333333333333333333333"),
        ("123456789012345678901234567", "1", "123456789012345678901234567"),
        ("12345678901234567890123456789", "1", "12345678901234567890123456789"),
        ("1000000000000000000000000", "1", "1000000000000000000000000"),
        # an exact tie at the last digit rounds away from zero
        ("1", "33554432", "0.000000029802322387695313"),
        ("-1", "33554432", "-0.000000029802322387695313"),
        ("0", "-5", "0.00000000000000000000"),
    ],
)
def test_numeric_division_scale_and_rounding(a: str, b: str, text: str) -> None:
    assert format(numeric_div(a, b), "f") == text


def test_numeric_division_scale_is_capped_at_1000() -> None:
    dividend = "1." + "0" * 1001
    assert format(numeric_div(dividend, "1"), "f") == "1." + "0" * 1000


@pytest.mark.parametrize(
    ("a", "b", "text"),
    [
        ("NaN", "1", "NaN"),
        ("1", "NaN", "NaN"),
        ("NaN", "NaN", "NaN"),
        ("Infinity", "Infinity", "NaN"),
        ("Infinity", "-Infinity", "NaN"),
        ("Infinity", "2", "Infinity"),
        ("Infinity", "0.5", "Infinity"),
        ("Infinity", "-2", "-Infinity"),
        ("-Infinity", "2", "-Infinity"),
        ("-Infinity", "-0.5", "Infinity"),
        ("1", "Infinity", "0"),
        ("-1", "-Infinity", "0"),
    ],
)
def test_numeric_division_special_values(a: str, b: str, text: str) -> None:
    assert format(numeric_div(a, b), "f") == text


def float_op(op: str, a: float, b: float, type_name: str = "float8") -> float:
    func = numeric_op(op, type_name)
    assert func is not None
    result: float = func(a, b)
    return result


INF = math.inf


@pytest.mark.parametrize(
    ("op", "a", "b", "expected"),
    [
        ("+", 0.1, 0.2, 0.30000000000000004),
        ("+", 1.0, 1e-10, 1.0000000001),
        ("+", INF, 1.0, INF),
        ("+", 1.0, -INF, -INF),
        ("+", 1.0, -1.0, 0.0),
        ("-", INF, 1.0, INF),
        ("-", 1.0, INF, -INF),
        ("-", 1.0, 1.0, 0.0),
        ("*", INF, 2.0, INF),
        ("*", 2.0, -INF, -INF),
        ("*", 0.0, 5.0, 0.0),
        ("*", 5.0, 0.0, 0.0),
        ("*", 1.0, 0.0, 0.0),
        ("/", INF, 2.0, INF),
        ("/", 0.0, 2.0, 0.0),
        ("/", 1.0, INF, 0.0),
        ("/", -1.0, INF, -0.0),
        ("/", 1.0, 2.0, 0.5),
    ],
)
def test_float8_operations(op: str, a: float, b: float, expected: float) -> None:
    assert float_op(op, a, b) == expected


@pytest.mark.parametrize(
    ("op", "a", "b"),
    [("/", INF, INF), ("/", -INF, INF), ("/", INF, math.nan), ("/", math.nan, 1.0)],
)
def test_float8_division_giving_nan(op: str, a: float, b: float) -> None:
    assert math.isnan(float_op(op, a, b))


@pytest.mark.parametrize(
    ("op", "a", "b", "message"),
    [
        ("+", 1e308, 1e308, "overflow"),
        ("-", -1e308, 1e308, "overflow"),
        ("*", 1e200, 1e200, "overflow"),
        ("*", 1e-200, 1e-200, "underflow"),
        ("/", 1e300, 1e-300, "overflow"),
        ("/", 1e-300, 1e300, "underflow"),
        ("/", 1.0, 0.0, "division by zero"),
    ],
)
def test_float8_range_errors(op: str, a: float, b: float, message: str) -> None:
    with pytest.raises(EvaluationError, match=message):
        float_op(op, a, b)


def bounded(items: tuple[Any, ...], *bounds: int) -> tuple[Any, ...]:
    return pgtypes.BoundedArray(items, bounds)


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        (((1, 2),), ((3, 4),), ((1, 2), (3, 4))),
        (((1, 2),), (3, 4), ((1, 2), (3, 4))),
        ((1, 2), ((3, 4),), ((1, 2), (3, 4))),
        (((1, 2), (3, 4)), (5, 6), ((1, 2), (3, 4), (5, 6))),
        ((1, 2), ((3, 4), (5, 6)), ((1, 2), (3, 4), (5, 6))),
    ],
)
def test_array_concat_dimensions(left: Any, right: Any, expected: Any) -> None:
    result = array_concat(left, right)
    assert result == expected
    assert pgtypes.lower_bounds(result) == pgtypes.lower_bounds(expected)


def test_array_concat_keeps_the_left_lower_bound() -> None:
    # '[0:1]={1,2}'::int[] || '{3}' = '[0:2]={1,2,3}'
    result = array_concat(bounded((1, 2), 0), (3,))
    assert result == (1, 2, 3)
    assert pgtypes.lower_bounds(result) == (0,)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (((1, 2),), ((3,),)),
        (((1, 2),), bounded(((3, 4),), 1, 0)),
        (((1, 2),), (3,)),
        (((1, 2),), bounded((3, 4), 0)),
        ((3,), ((1, 2),)),
        (bounded((3, 4), 0), ((1, 2),)),
        ((((1,),),), (2,)),
        ((2,), (((1,),),)),
    ],
)
def test_array_concat_incompatible(left: Any, right: Any) -> None:
    with pytest.raises(EvaluationError, match="cannot concatenate incompatible arrays"):
        array_concat(left, right)


def test_concatenation_error_is_postgres_s() -> None:
    with pytest.raises(EvaluationError) as info:
        array_concat(((1, 2),), (3,))
    assert info.value.message == "cannot concatenate incompatible arrays"
    assert info.value.condition == "array_subscript_error"


def test_append_to_a_multidimensional_array_fails() -> None:
    with pytest.raises(EvaluationError) as info:
        array_add(((1, 2),), 3, append=True)
    assert info.value.message == "argument must be empty or one-dimensional array"
    assert info.value.condition == "data_exception"


@pytest.mark.parametrize("append", [True, False])
def test_append_keeps_the_lower_bound(append: bool) -> None:
    # array_append('[0:1]={1,2}', 3) = '[0:2]={1,2,3}'; array_prepend keeps the bound too
    result = array_add(bounded((1, 2), 0), 3, append)
    assert result == ((1, 2, 3) if append else (3, 1, 2))
    assert pgtypes.lower_bounds(result) == (0,)


@pytest.mark.parametrize(("type_name", "a"), [("int4", 1), ("numeric", Decimal(1))])
def test_division_by_zero_condition(type_name: str, a: Any) -> None:
    for op in "/%":
        func = numeric_op(op, type_name)
        assert func is not None
        with pytest.raises(EvaluationError) as info:
            func(a, a - a)
        assert info.value.message == "division by zero"
        assert info.value.condition == "division_by_zero"


def numeric(op: str, a: str, b: str) -> Decimal:
    func = numeric_op(op, "numeric")
    assert func is not None
    result: Decimal = func(Decimal(a), Decimal(b))
    return result


def test_numeric_overflow() -> None:
    with pytest.raises(EvaluationError) as info:
        numeric("*", "1e131071", "10")
    assert info.value.message == "value overflows numeric format"
    assert info.value.condition == "numeric_value_out_of_range"


def test_numeric_limits_are_reachable() -> None:
    assert numeric("*", "1e131070", "10") == Decimal("1e131071")
    assert numeric("+", "1e-16383", "0") == Decimal("1e-16383")
    assert format(numeric("+", "0.5", "-0.5"), "f") == "0.0"


@pytest.mark.parametrize(
    ("a", "b", "text"),
    [
        ("NaN", "1", "NaN"),
        ("1", "NaN", "NaN"),
        ("Infinity", "2", "NaN"),
        ("-Infinity", "2", "NaN"),
        ("5", "Infinity", "5"),
        ("-5.5", "-Infinity", "-5.5"),
        ("7.5", "2", "1.5"),
        ("-7.5", "2", "-1.5"),
    ],
)
def test_numeric_modulo(a: str, b: str, text: str) -> None:
    assert str(numeric("%", a, b)) == text


def test_numeric_negation() -> None:
    negate = negate_value("numeric")
    assert str(negate(Decimal("0"))) == "0"
    long = "12345678901234567890123456789012345"
    assert str(negate(Decimal(long))) == "-" + long


def test_no_such_operator() -> None:
    assert numeric_op("^", "int4") is None
    assert numeric_op("^", "numeric") is None
    assert numeric_op("%", "float8") is None
    assert numeric_op("X", "float8") is None


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        ((1,), (2,), -1),
        ((2,), (1,), 1),
        ((1, 2), (1, 2), 0),
        ((1,), (1, 2), -1),
        ((1, 2), (1,), 1),
        ((1, None), (1, 2), 1),
        ((1, 2), (1, None), -1),
        ((math.nan,), (1.0,), 1),
        ((1.0,), (math.nan,), -1),
        ((1, 2), ((1, 2),), -1),
        (((1, 2),), (1, 2), 1),
        (bounded((1,), 0), (1,), -1),
        ((1,), bounded((1,), 0), 1),
    ],
)
def test_array_cmp(left: Any, right: Any, expected: int) -> None:
    assert array_cmp(left, right) == expected


def test_offset_length_limit() -> None:
    longest = "0_" + "0" * 61 + "5"
    assert len(longest) == 64
    assert parse_offset(longest) == LogOffset(0, 5)
    with pytest.raises(InvalidRequest):
        parse_offset("0_" + "0" * 62 + "5")


def test_numeric_division_scale_reads_the_exact_leading_digit() -> None:
    # 29 nines: the leading base-10000 digit is 9, not the 10 a 28-digit rounding would give
    assert format(numeric_div("9" * 29, "9e40"), "f") == "0." + "0" * 11 + "1" * 21


def test_nan_operand_wins_over_a_zero_divisor() -> None:
    assert numeric_div("NaN", "0").is_nan()
    assert numeric("%", "NaN", "0").is_nan()


@pytest.mark.parametrize(
    ("func", "message"),
    [
        (date_minus_date, "cannot subtract infinite dates"),
        (timestamp_minus, "cannot subtract infinite timestamps"),
    ],
)
def test_subtracting_infinity_is_out_of_range(func: Any, message: str) -> None:
    for left, right in [(Infinity(1), 0), (0, Infinity(-1))]:
        with pytest.raises(EvaluationError) as info:
            func(left, right)
        assert info.value.message == message
        assert info.value.condition == "datetime_value_out_of_range"


def test_null_in_list_of_columns_is_null() -> None:
    columns = {"a": Column("a", "int4", pk_index=0), "b": Column("b", "int4")}
    where = parse_where("a IN (b, 2)", columns)
    assert where.matches({"a": None, "b": "1"}) is False
    assert parse_where("a NOT IN (b, 2)", columns).matches({"a": None, "b": "1"}) is False
