"""Arithmetic and comparisons in where clauses, pinned to what Postgres computes.

Each expected value is Postgres's own (integer division truncates toward zero, ``%`` takes the
dividend's sign, numeric keeps its scale, float4 rounds every result to single precision,
``IS DISTINCT FROM`` treats NULL as a value, NaN equals NaN and sorts above every number), and
each error is one Postgres raises too (an ``EvalError``).
"""

from __future__ import annotations

import pytest

from shapes.errors import WhereClauseError
from shapes.schema import Column
from shapes.where import parse_where
from shapes.where_eval import NAN, EvalError

COLUMNS = {
    column.name: column
    for column in [
        Column("id", "int4", pk_index=0),
        Column("a", "int4"),
        Column("b", "int4"),
        Column("s", "int2"),
        Column("s2", "int2"),
        Column("big", "int8"),
        Column("n", "numeric"),
        Column("m", "numeric"),
        Column("f", "float8"),
        Column("g", "float8"),
        Column("r", "float4"),
        Column("q", "float4"),
        Column("d", "date"),
        Column("e", "date"),
        Column("ts", "timestamp"),
        Column("ts2", "timestamp"),
        Column("nums", "int4", dims=1),
        Column("floats", "float8", dims=1),
        Column("t", "text"),
    ]
}


def holds(clause: str, **row: str | None) -> bool:
    return parse_where(clause, COLUMNS).matches(row)


def fails(clause: str, **row: str | None) -> str:
    with pytest.raises(EvalError) as info:
        parse_where(clause, COLUMNS).matches(row)
    return str(info.value)


@pytest.mark.parametrize(
    ("a", "b", "quotient", "remainder"),
    [
        ("7", "2", 3, 1),
        ("-7", "2", -3, -1),
        ("7", "-2", -3, 1),
        ("-7", "-2", 3, -1),
        ("6", "3", 2, 0),
        ("-6", "3", -2, 0),
        ("1", "7", 0, 1),
        ("-1", "7", 0, -1),
    ],
)
def test_integer_division_truncates_and_modulo_takes_the_dividends_sign(
    a: str, b: str, quotient: int, remainder: int
) -> None:
    assert holds(f"a / b = {quotient}", a=a, b=b)
    assert holds(f"a % b = {remainder}", a=a, b=b)
    assert not holds(f"a / b = {quotient + 1}", a=a, b=b)
    assert not holds(f"a % b = {remainder + 1}", a=a, b=b)


@pytest.mark.parametrize("clause", ["a / b > 0", "a % b > 0", "n / m > 0", "n % m > 0"])
def test_division_by_zero(clause: str) -> None:
    assert fails(clause, a="5", b="0", n="5", m="0") == "division by zero"
    assert fails(clause, a="0", b="0", n="0", m="0") == "division by zero"


def test_float_division() -> None:
    assert fails("f / g > 0", f="1", g="0") == "division by zero"
    assert holds("f / g = 2.5", f="5", g="2")
    assert holds("f / g = -0.5", f="1", g="-2")


@pytest.mark.parametrize(
    ("clause", "row"),
    [
        ("a + b > 0", {"a": "2147483647", "b": "1"}),
        ("a - b > 0", {"a": "-2147483648", "b": "1"}),
        ("a * b > 0", {"a": "65536", "b": "32768"}),
        ("s + s2 > 0", {"s": "32767", "s2": "1"}),
        ("s * s2 > 0", {"s": "200", "s2": "200"}),
        ("big * big > 0", {"big": "9223372036854775807"}),
    ],
)
def test_integer_overflow_raises(clause: str, row: dict[str, str]) -> None:
    assert fails(clause, **row).endswith("out of range")


def test_integer_results_at_the_limits_do_not_overflow() -> None:
    assert holds("a + b = 2147483647", a="2147483646", b="1")
    assert holds("a - b = -2147483648", a="-2147483647", b="1")
    assert holds("s * s2 = 32767", s="32767", s2="1")
    assert holds("s - s2 = -32768", s="-32767", s2="1")
    assert holds("a * b = 6", a="2", b="3")
    assert holds("a - b = -1", a="2", b="3")


def test_numeric_arithmetic() -> None:
    assert holds("n / m = 3.5", n="7", m="2")
    assert holds("n % m = -1.5", n="-7.5", m="2")
    assert holds("n % m = 1.5", n="7.5", m="-2")
    assert holds("n + m = 0.3", n="0.1", m="0.2")
    assert holds("n * m = 0.02", n="0.1", m="0.2")
    assert holds("n - m = -0.1", n="0.1", m="0.2")
    assert holds("n / m BETWEEN 0.333333 AND 0.333334", n="1", m="3")


def test_float4_results_are_rounded_to_single_precision() -> None:
    # 0.1::float4 * 3::float4 is 0.3::float4 exactly, not the double 0.30000000447...
    assert holds("r * q = 0.3::float4", r="0.1", q="3")
    assert holds("r + q = 0.3::float4", r="0.1", q="0.2")
    assert holds("r - q = -0.1::float4", r="0.1", q="0.2")
    assert holds("r / q = 0.1::float4", r="0.3", q="3")


def test_unary_minus() -> None:
    assert holds("-a = -5", a="5")
    assert holds("-n = 1.5", n="-1.5")
    assert holds("-f < 0", f="2")
    assert holds("-r = -0.1::float4", r="0.1")


def test_is_distinct_from_treats_null_as_a_value() -> None:
    for clause, null_null, null_one, one_one, one_two in [
        ("a IS DISTINCT FROM b", False, True, False, True),
        ("a IS NOT DISTINCT FROM b", True, False, True, False),
    ]:
        assert holds(clause) is null_null
        assert holds(clause, a=None, b="1") is null_one
        assert holds(clause, a="1", b=None) is null_one
        assert holds(clause, a="1", b="1") is one_one
        assert holds(clause, a="1", b="2") is one_two


def test_nan_equals_nan_and_sorts_above_every_number() -> None:
    assert holds("f = g", f="NaN", g="NaN")
    assert holds("f > g", f="NaN", g="Infinity")
    assert holds("g < f", f="NaN", g="1")
    assert not holds("f IS DISTINCT FROM g", f="NaN", g="NaN")
    assert holds("n = m", n="NaN", m="NaN")
    assert holds("n > m", n="NaN", m="1e100")
    assert holds("f IN (1, 'NaN')", f="NaN")
    assert repr(NAN) == "NaN"


def test_date_and_timestamp_arithmetic() -> None:
    assert holds("d - e = 31", d="2024-02-01", e="2024-01-01")
    assert holds("e - d = -31", d="2024-02-01", e="2024-01-01")
    assert holds("d + 29 = '2024-02-29'", d="2024-01-31")
    assert holds("d - 1 = '2023-12-31'", d="2024-01-01")
    assert fails("d - e > 0", d="infinity", e="2024-01-01") == "cannot subtract infinite dates"
    assert fails("d - e > 0", d="2024-01-01", e="-infinity") == "cannot subtract infinite dates"
    assert fails("d + 1 > '2000-01-01'", d="9999-12-31") == "date out of range"
    assert holds("d + 1 = 'infinity'", d="infinity")
    assert holds("ts - ts2 = '1 day 01:00:00'", ts="2024-01-02 01:00", ts2="2024-01-01")
    assert holds("ts + '1 hour' = '2024-01-01 01:00'", ts="2024-01-01")
    assert holds("ts + '1 month' = '2024-02-29'", ts="2024-01-29")
    infinite = "cannot subtract infinite timestamps"
    assert fails("ts - ts2 > '0 days'", ts="infinity", ts2="2024-01-01") == infinite
    assert fails("ts - ts2 > '0 days'", ts="2024-01-01", ts2="-infinity") == infinite
    too_far = "ts + '100000 years' > '2000-01-01'"
    assert fails(too_far, ts="2000-01-01") == "timestamp out of range"


def test_arrays_compare_element_by_element() -> None:
    assert holds("nums < '{1,3}'", nums="{1,2,9}")
    assert holds("nums > '{1,2}'", nums="{1,2,0}")
    assert holds("nums = '{1,2}'", nums="{1,2}")
    assert not holds("nums = '{1,2}'", nums="{2,1}")
    assert holds("nums IS DISTINCT FROM '{1,NULL}'", nums="{1,2}")
    assert holds("nums IS NOT DISTINCT FROM '{1,NULL}'", nums="{1,NULL}")
    assert holds("2 = ANY(nums)", nums="{1,2}")
    assert not holds("3 = ANY(nums)", nums="{1,2}")
    assert holds("3 <> ALL(nums)", nums="{1,2}")


def test_array_elements_order_numbers_then_nan_then_null() -> None:
    assert holds("floats < '{NaN}'", floats="{1e308}")
    assert holds("floats < '{NULL}'", floats="{NaN}")
    assert holds("floats > '{NaN}'", floats="{NULL}")
    assert holds("floats = '{NaN}'", floats="{NaN}")
    assert holds("floats = '{NULL}'", floats="{NULL}")


def test_like_any_escapes_with_backslash() -> None:
    clause = r"""t LIKE ANY('{"50\\%",x_z}')"""
    assert holds(clause, t="50%")
    assert not holds(clause, t="50x")
    assert holds(clause, t="xyz")


def test_unary_minus_keeps_the_operand_type() -> None:
    assert holds("-n = 0.1", n="-0.1")
    assert holds("-big = -123456789", big="123456789")
    assert holds("-f = 0.1", f="-0.1")


def test_in_list_reads_columns_of_the_row() -> None:
    assert holds("a IN (b, 7)", a="5", b="5")
    assert not holds("a IN (b, 7)", a="5", b="6")
    assert holds("a IN (b, 7) IS UNKNOWN", a="5", b=None)


def test_no_modulo_for_floats() -> None:
    for clause in ["f % g > 0", "r % q > 0"]:
        with pytest.raises(WhereClauseError):
            parse_where(clause, COLUMNS)


def test_float4_nan_compares_as_postgres() -> None:
    assert holds("r = q", r="NaN", q="NaN")
    assert holds("r > q", r="NaN", q="Infinity")
    assert not holds("r < q", r="NaN", q="1")


def test_array_index_conditions_keep_their_elements() -> None:
    [condition] = parse_where("nums = '{1,2}'", COLUMNS).index_conditions()
    assert (1, 2) in condition[1]
    [condition] = parse_where("floats = '{NaN,1}'", COLUMNS).index_conditions()
    assert (NAN, 1.0) in condition[1]
