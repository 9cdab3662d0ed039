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
from shapes.errors import EvaluationError
from shapes.where_eval import array_concat, numeric_op


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
