"""Tests of where-clause parsing, checking, SQL output and evaluation (shapes/where.py)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shapes import pgtypes
from shapes.errors import InvalidRequest, WhereClauseError
from shapes.schema import Column
from shapes.where import (
    Where,
    _check_standalone,
    normalise_value,
    parse_where,
    subquery_tables,
)
from shapes.where_eval import NAN, EvalError, ParsedRow, row_env

COLUMNS = {
    column.name: column
    for column in [
        Column("id", "int4", pk_index=0),
        Column("big", "int8"),
        Column("small", "int2"),
        Column("name", "text"),
        Column("code", "bpchar"),
        Column("title", "varchar"),
        Column("flag", "bool"),
        Column("n", "numeric"),
        Column("f", "float8"),
        Column("r", "float4"),
        Column("u", "uuid"),
        Column("d", "date"),
        Column("t", "time"),
        Column("ts", "timestamp"),
        Column("tz", "timestamptz"),
        Column("iv", "interval"),
        Column("tags", "text", dims=1),
        Column("nums", "int4", dims=1),
        Column("status", "mood", category="E"),
        Column("doc", "jsonb"),
        Column("Col Name", "text"),
        Column("dom", "positive_int", base_type_name="int4"),
    ]
}


def where(text: str, params: dict[str, str] | None = None) -> Where:
    return parse_where(text, COLUMNS, params)


def error(text: str, params: dict[str, str] | None = None) -> str:
    with pytest.raises(WhereClauseError) as info:
        where(text, params)
    assert info.value.field == "where"
    return info.value.message


def check(text: str, row: dict[str, str | None]) -> bool:
    return where(text).matches(row)


# --- syntax and structure -----------------------------------------------------------------------


def test_syntax_error_location_matches_reference() -> None:
    assert error("1 x 1") == 'At location 17: syntax error at or near "x"'


def test_syntax_error_at_end_of_input() -> None:
    assert error("id =") == "At location 19: syntax error at end of input"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1=1; DROP TABLE x", 'unescaped ";" causing statement split'),
        ("true UNION SELECT 1", "malformed query ending with SQL clauses"),
        ("true GROUP BY 1", "malformed query ending with SQL clauses"),
        ("true ORDER BY 1", "malformed query ending with SQL clauses"),
        ("true LIMIT 1", "malformed query ending with SQL clauses"),
        ("true FOR UPDATE", "malformed query ending with SQL clauses"),
    ],
)
def test_rejects_extra_statements_and_clauses(text: str, message: str) -> None:
    assert error(text) == message


def test_rejects_from_clause() -> None:
    assert error("1=1 FROM x").startswith("At location 19: syntax error")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("f(1)", "At location 0: unknown or unsupported function f/1"),
        ("pg_sleep(1) IS NULL", "At location 0: unknown or unsupported function pg_sleep/1"),
        ("now() > tz", "At location 0: unknown or unsupported function now/0"),
        ("random() > 0.5", "At location 0: unknown or unsupported function random/0"),
        (
            "CASE WHEN flag THEN true END",
            "At location 0: CaseExpr is not supported in this context",
        ),
        ("count(*) > 1", "At location 0: aggregation is not supported in this context"),
        ("id + 1", "At location 3: WHERE clause must return a boolean"),
        ("name", "At location 0: WHERE clause must return a boolean"),
        ("id = 'abc'", "At location 0: invalid syntax for type int4: abc"),
        ("id IN (SELECT id FROM t)", "At location 3: subqueries are not supported"),
        ("EXISTS (SELECT 1)", "At location 0: subqueries are not supported"),
        ("id::regclass IS NULL", "At location 4: unsupported type regclass"),
        ("status = 'happy'", "At location 7: Could not select an operator overload"),
        ("doc = '{}'", "At location 4: Could not select an operator overload"),
        ("name ~ 'a'", "At location 5: unknown or unsupported operator ~"),
    ],
)
def test_semantic_errors(text: str, message: str) -> None:
    assert error(text) == message


KNOWN = (
    "; the table's columns are: id, big, small, name, code, title, flag, n, f, r, u, d, t, ts, "
    'tz, iv, tags, nums, status, doc, "Col Name", dom'
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x = 1", "At location 0: unknown reference x"),
        ("id = 1 AND nope", "At location 11: unknown reference nope"),
        ("t.id = 1", "At location 0: unknown reference t.id"),
    ],
)
def test_an_unknown_column_lists_the_tables_columns(text: str, message: str) -> None:
    assert error(text) == message + KNOWN


def test_a_long_column_list_is_cut_short() -> None:
    many = {f"c{i}": Column(f"c{i}", "int4") for i in range(60)}
    with pytest.raises(WhereClauseError) as info:
        parse_where("nope = 1", many)
    assert info.value.message.endswith(", c49 and 10 more")


def test_semantic_error_location_counts_bytes() -> None:
    assert error("name = 'é' AND nope") == "At location 16: unknown reference nope" + KNOWN


def test_clause_length_limit() -> None:
    clause = "id = 1 OR " * 6600 + "id = 2"
    assert len(clause) > 65536
    assert "too long" in error(clause)


def test_sql_is_deparsed_not_copied() -> None:
    w = where("  id   =  1   and   /* c */ lower(name) like 'a%'  ")
    assert w.sql == "((id = (1)) AND (pg_catalog.lower(name) LIKE 'a%'))"
    assert w.columns == frozenset({"id", "name"})


def test_sql_quotes_identifiers_and_strings() -> None:
    w = where("\"Col Name\" = 'it''s'")
    assert w.sql == "(\"Col Name\" = 'it''s')"
    assert w.matches({"Col Name": "it's"})


def test_equal_clauses_are_equal() -> None:
    assert where("id=1") == where("id = 1")
    assert hash(where("id=1")) == hash(where("id = 1"))


# --- params -----------------------------------------------------------------------------------


def test_params_substituted_as_typed_literals() -> None:
    w = where("id = $1 AND name = $2", {"1": "5", "2": "o'k"})
    assert w.sql == "((id = CAST('5' AS int4)) AND (name = CAST('o''k' AS text)))"
    assert w.matches({"id": "5", "name": "o'k"})
    assert not w.matches({"id": "6", "name": "o'k"})


def test_param_any_takes_array_type() -> None:
    w = where("id = ANY($1)", {"1": "{1,2}"})
    assert w.sql == "(id = ANY (CAST('{1,2}' AS int4[])))"
    assert w.matches({"id": "2"})
    assert not w.matches({"id": "3"})
    quoted = where("name = ANY($1)", {"1": '{"a b",c}'})
    assert quoted.matches({"name": "a b"})


def test_param_errors() -> None:
    assert error("id = $1", {"1": "abc"}) == "At location 5: invalid syntax for type int4: abc"
    assert error("id = $2", {"1": "1"}) == "At location 5: parameter $2 was not provided"
    assert error("id = $1") == "At location 5: parameter $1 was not provided"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"a": "1"}, "Parameters can only use numbers as keys"),
        ({"-1": "1"}, "Parameters can only use numbers as keys"),
        ({"2": "1"}, "Parameters must be numbered sequentially, starting from 1"),
        ({"1": "1", "3": "1"}, "Parameters must be numbered sequentially, starting from 1"),
        ({"0": "1"}, "Parameters must be numbered sequentially, starting from 1"),
    ],
)
def test_param_key_rules(params: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        where("id = 1", params)
    assert not isinstance(info.value, WhereClauseError)
    assert info.value.field == "params"
    assert info.value.message == message


def test_param_cannot_inject_sql() -> None:
    w = where("name = $1", {"1": "x'; DROP TABLE users; --"})
    assert w.sql == "(name = CAST('x''; DROP TABLE users; --' AS text))"
    assert w.matches({"name": "x'; DROP TABLE users; --"})


# --- evaluation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "row", "expected"),
    [
        ("id = 1", {"id": "1"}, True),
        ("id = 1", {"id": "2"}, False),
        ("id = 1", {"id": None}, False),
        ("id <> 1", {"id": None}, False),
        ("NOT (id = 1)", {"id": None}, False),
        ("id = 1 OR true", {"id": None}, True),
        ("id = 1 AND false", {"id": None}, False),
        ("(id = 1 AND true) IS UNKNOWN", {"id": None}, True),
        ("(id = 1) IS NOT TRUE", {"id": None}, True),
        ("(id = 1) IS FALSE", {"id": None}, False),
        ("(id = 1) IS NOT FALSE", {"id": "1"}, True),
        ("id IS NULL", {"id": None}, True),
        ("id IS NOT NULL", {"id": None}, False),
        ("id IS DISTINCT FROM NULL", {"id": None}, False),
        ("id IS NOT DISTINCT FROM NULL", {"id": None}, True),
        ("id IS DISTINCT FROM 2", {"id": "1"}, True),
        ("id IN (1, 2, 3)", {"id": "2"}, True),
        ("id IN (1, NULL)", {"id": "1"}, True),
        ("(id IN (1, NULL)) IS NULL", {"id": "2"}, True),
        ("id NOT IN (1, NULL)", {"id": "2"}, False),
        ("id NOT IN (1, 3)", {"id": "2"}, True),
        ("id BETWEEN 1 AND 3", {"id": "3"}, True),
        ("id BETWEEN 3 AND 1", {"id": "2"}, False),
        ("id BETWEEN SYMMETRIC 3 AND 1", {"id": "2"}, True),
        ("id NOT BETWEEN 1 AND 3", {"id": "4"}, True),
        ("id NOT BETWEEN SYMMETRIC 3 AND 1", {"id": "2"}, False),
        ("id / 2 = 3", {"id": "7"}, True),
        ("id / 2 = -3", {"id": "-7"}, True),
        ("id % 3 = -1", {"id": "-7"}, True),
        ("id * 2 + 1 = 15", {"id": "7"}, True),
        ("-id = -7", {"id": "7"}, True),
        ("id / 2.0 = 3.5", {"id": "7"}, True),
        ("n = 1.10", {"n": "1.1"}, True),
        ("n / 3 > 0.333", {"n": "1"}, True),
        ("big = 9007199254740993", {"big": "9007199254740993"}, True),
        ("small < id", {"small": "1", "id": "2"}, True),
        ("id = '05'", {"id": "5"}, True),
        ("f = 'NaN'", {"f": "NaN"}, True),
        ("f > 1e308", {"f": "NaN"}, True),
        ("f = 0.1", {"f": "0.1"}, True),
        ("r = 0.1", {"r": "0.1"}, False),
        ("r = '0.1'", {"r": "0.1"}, True),
        ("f = 'Infinity'", {"f": "Infinity"}, True),
        ("name = 'abc'", {"name": "abc"}, True),
        ("name < 'b'", {"name": "B"}, True),
        ("name > 'Z'", {"name": "a"}, True),
        ("name || '!' = 'hi!'", {"name": "hi"}, True),
        ("name || id = 'x1'", {"name": "x", "id": "1"}, True),
        ("(name || 'x') IS NULL", {"name": None}, True),
        ("name LIKE 'a%'", {"name": "abc"}, True),
        ("name LIKE 'a_c'", {"name": "abc"}, True),
        ("name LIKE 'a_c'", {"name": "abbc"}, False),
        ("name LIKE 'a\\%'", {"name": "a%"}, True),
        ("name LIKE 'a\\%'", {"name": "ab"}, False),
        ("name LIKE 'a!%' ESCAPE '!'", {"name": "a%"}, True),
        ("name NOT LIKE 'a%'", {"name": "b"}, True),
        ("name ILIKE 'A%'", {"name": "abc"}, True),
        ("name NOT ILIKE 'A%'", {"name": "abc"}, False),
        ("name LIKE '%.%'", {"name": "a\nb.c"}, True),
        ("like(name, 'a%')", {"name": "abc"}, True),
        ("lower(name) = 'abc'", {"name": "ABC"}, True),
        ("upper(name) = 'ABC'", {"name": "abc"}, True),
        ("concat(name, id, flag, NULL) = 'x1t'", {"name": "x", "id": "1", "flag": "t"}, True),
        ("concat(name) = ''", {"name": None}, True),
        ("coalesce(name, 'z') = 'z'", {"name": None}, True),
        ("coalesce(id, 5) = 5", {"id": None}, True),
        ("greatest(id, 3, NULL) = 3", {"id": "1"}, True),
        ("least(id, 3) = 1", {"id": "1"}, True),
        ("greatest(NULL::int4, NULL) IS NULL", {}, True),
        ("code = 'ab'", {"code": "ab   "}, True),
        ("code = 'ab  '", {"code": "ab"}, True),
        ("title = 'x'", {"title": "x"}, True),
        ("flag", {"flag": "t"}, True),
        ("flag", {"flag": "f"}, False),
        ("NOT flag", {"flag": "f"}, True),
        ("flag = true", {"flag": "t"}, True),
        ("flag IS TRUE", {"flag": None}, False),
        ("flag IS NOT FALSE", {"flag": None}, True),
        (
            "u = 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'",
            {"u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
            True,
        ),
        (
            "u::text = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
            {"u": "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"},
            True,
        ),
        ("d = '2024-02-29'", {"d": "2024-02-29"}, True),
        ("d > '2024-01-01'", {"d": "2024-02-29"}, True),
        ("d < 'infinity'", {"d": "2024-02-29"}, True),
        ("d > '-infinity'", {"d": "-infinity"}, False),
        ("d + 1 = '2024-03-01'", {"d": "2024-02-29"}, True),
        ("d - 1 = '2024-02-28'", {"d": "2024-02-29"}, True),
        ("d - '2024-01-01'::date = 59", {"d": "2024-02-29"}, True),
        ("d = '2024-02-29 00:00:00'::timestamp", {"d": "2024-02-29"}, True),
        ("d + interval '1 month' = '2024-03-29'", {"d": "2024-02-29"}, True),
        ("t > '12:00'", {"t": "12:00:00.5"}, True),
        ("ts = '2024-01-01 10:00:00'", {"ts": "2024-01-01 10:00:00"}, True),
        ("ts + interval '1 day' > '2024-01-02'", {"ts": "2024-01-01 10:00:00"}, True),
        ("ts + '1 mon' = '2024-02-29 10:00'", {"ts": "2024-01-31 10:00:00"}, True),
        ("ts - '10:00:00'::interval = '2024-01-01'", {"ts": "2024-01-01 10:00:00"}, True),
        ("tz = '2024-01-01 12:00:00+02'", {"tz": "2024-01-01 10:00:00+00"}, True),
        ("tz > '2024-01-01'", {"tz": "2024-01-01 00:00:00.000001+00"}, True),
        ("iv = '1 day'", {"iv": "24:00:00"}, True),
        ("iv = '1 mon'", {"iv": "30 days"}, True),
        ("iv > '1 hour'", {"iv": "01:00:01"}, True),
        ("iv = '-1 days +02:00:00'", {"iv": "-22:00:00"}, True),
        ("tags = '{a,b}'", {"tags": "{a,b}"}, True),
        ("tags <> '{a,b}'", {"tags": "{b,a}"}, True),
        ("tags @> '{a}'", {"tags": "{a,b}"}, True),
        ("tags @> '{a,c}'", {"tags": "{a,b}"}, False),
        ("tags <@ '{a,b,c}'", {"tags": "{a,b}"}, True),
        ("tags && '{c,b}'", {"tags": "{a,b}"}, True),
        ("tags && '{c}'", {"tags": "{a,b}"}, False),
        ("tags @> '{NULL}'", {"tags": "{a,NULL}"}, False),
        ("tags = '{a,NULL}'", {"tags": "{a,NULL}"}, True),
        ("'a' = ANY(tags)", {"tags": "{a,b}"}, True),
        ("'z' = ANY(tags)", {"tags": "{a,NULL}"}, False),
        ("('z' = ANY(tags)) IS NULL", {"tags": "{a,NULL}"}, True),
        ("'a' = ALL(tags)", {"tags": "{a,a}"}, True),
        ("'a' = ALL(tags)", {"tags": "{}"}, True),
        ("'a' = ANY(tags)", {"tags": "{}"}, False),
        ("(NULL = ANY(tags)) IS NULL", {"tags": "{a}"}, True),
        ("NULL = ANY(tags)", {"tags": "{}"}, False),
        ("id = ANY('{1,2}')", {"id": "2"}, True),
        ("id > ALL('{1,2}')", {"id": "3"}, True),
        ("id = ANY(ARRAY[1, 2])", {"id": "1"}, True),
        ("id = ANY(nums)", {"id": "2", "nums": "{{1,2},{3,4}}"}, True),
        ("name LIKE ANY('{a%,b%}')", {"name": "bob"}, True),
        ("nums || 5 = '{1,5}'", {"nums": "{1}"}, True),
        ("5 || nums = '{5,1}'", {"nums": "{1}"}, True),
        ("nums || '{2,3}' = '{1,2,3}'", {"nums": "{1}"}, True),
        ("status::text = 'happy'", {"status": "happy"}, True),
        ("status::text IN ('sad', 'ok')", {"status": "happy"}, False),
        ("status IS NULL", {"status": None}, True),
        ("doc::text = '{}'", {"doc": "{}"}, True),
        ("dom = 3", {"dom": "3"}, True),
        ("id::text = '7'", {"id": "7"}, True),
        ("flag::text = 'true'", {"flag": "t"}, True),
        ("f::int4 = 2", {"f": "2.5"}, True),
        ("f::int4 = 4", {"f": "3.5"}, True),
        ("n::int4 = 3", {"n": "2.5"}, True),
        ("n::numeric(5,1) = 2.6", {"n": "2.55"}, True),
        ("name::varchar(2) = 'ab'", {"name": "abc"}, True),
        ("int4(name) = 7", {"name": "7"}, True),
        ("'7'::int4 = id", {"id": "7"}, True),
        ("true", {}, True),
        ("'t'", {}, True),
        ("NULL", {}, False),
        ("1 = 1", {}, True),
        ("id = NULL", {"id": "1"}, False),
    ],
)
def test_evaluation(text: str, row: dict[str, str | None], expected: bool) -> None:
    assert check(text, row) is expected


def test_missing_column_is_null() -> None:
    assert check("id IS NULL", {})


def test_division_by_zero_is_an_evaluation_error() -> None:
    w = where("id / big = 1")
    with pytest.raises(EvalError):
        w.matches({"id": "1", "big": "0"})
    assert error("1 / 0 = 1") == "At location 2: division by zero"
    # the planner never folds what an AND, OR or COALESCE has already decided
    assert where("false AND 1 / 0 = 1").matches({}) is False
    assert where("true OR 1 / 0 = 1").matches({}) is True
    assert where("coalesce(1, 1 / 0) = 1").matches({}) is True
    assert where("id = 0 AND false AND 1 / 0 = 1").matches({"id": "1"}) is False
    assert error("1 / 0 = 1 AND false") == "At location 2: division by zero"


def test_unparseable_row_value_raises_value_error() -> None:
    with pytest.raises(ValueError, match="id") as info:
        where("id = 1").matches({"id": "x-secret"})
    assert "secret" not in str(info.value)  # row data never reaches the message


def test_matches_parses_each_referenced_column_once() -> None:
    calls: list[str] = []

    class Row(dict[str, str | None]):
        def get(self, key: str, default: object = None) -> str | None:
            calls.append(key)
            return super().get(key)

    assert where("id > 1 AND id < 3 AND id <> 5").matches(Row(id="2", name="x"))
    assert calls == ["id"]


# --- index conditions ------------------------------------------------------------------------


def test_index_conditions() -> None:
    w = where("id = 5 AND name IN ('a', 'b') AND 'x' = title AND big = ANY('{1,2}') AND n > 1")
    assert w.index_conditions() == (
        ("id", frozenset({5})),
        ("name", frozenset({"a", "b"})),
        ("title", frozenset({"x"})),
        ("big", frozenset({1, 2})),
    )


@pytest.mark.parametrize(
    "text",
    [
        "id = 5 OR name = 'a'",
        "NOT id = 5",
        "id NOT IN (1, 2)",
        "id > 5",
        "id + 0 = 5",
        "id = ALL('{1}')",
        "lower(name) = 'a'",
    ],
)
def test_no_index_conditions(text: str) -> None:
    assert where(text).index_conditions() == ()


def test_index_condition_values_match_normalise_value() -> None:
    cases = [
        ("id = '0005'", "id", "5"),
        (
            "u = '{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}'",
            "u",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        ),
        ("tz = '2024-01-01 12:00+02'", "tz", "2024-01-01 10:00:00+00"),
        ("code = 'ab '", "code", "ab    "),
        ("status::text = 'ok'", "status", "ok"),
        ("n = 1.50", "n", "1.5"),
        ("big = 5", "big", "5"),
        ("iv = '1 day'", "iv", "24:00:00"),
        ("flag", "flag", "t"),
        ("f = 'NaN'", "f", "NaN"),
        ("nums = '{1,2}'", "nums", "{1,2}"),
    ]
    for text, column, value in cases:
        ((indexed, values),) = where(text).index_conditions()
        assert indexed == column
        assert normalise_value(COLUMNS[column], value) in values, text


def test_null_equality_indexes_nothing() -> None:
    assert where("id = NULL").index_conditions() == (("id", frozenset()),)


def test_normalise_value() -> None:
    assert normalise_value(COLUMNS["id"], " 05") == 5
    assert normalise_value(COLUMNS["name"], "Ab ") == "Ab "
    assert normalise_value(COLUMNS["f"], "NaN") is NAN
    with pytest.raises(ValueError):
        normalise_value(COLUMNS["id"], "abc")


# --- types ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("{}", ()),
        ("{1,2,3}", ("1", "2", "3")),
        ('{"a,b","c\\"d",NULL,"NULL"}', ("a,b", 'c"d', None, "NULL")),
        ("{ a , b }", ("a", "b")),
        ("{{1,2},{3,4}}", (("1", "2"), ("3", "4"))),
        ('{""}', ("",)),
        ("{a\\,b}", ("a,b",)),
    ],
)
def test_parse_array(text: str, value: tuple[object, ...]) -> None:
    assert pgtypes.parse_array(text, str) == value


@pytest.mark.parametrize(
    "text", ["", "{", "{1,2", "{1,,2}", "{{1},2}", "{{1,2},{3}}", "1,2", "{a}x"]
)
def test_parse_array_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        pgtypes.parse_array(text, str)


elements = st.one_of(st.none(), st.text(alphabet=st.characters(exclude_categories=["Cs"])))


@given(st.lists(elements, max_size=8))
def test_array_literal_round_trip(items: list[str | None]) -> None:
    value = tuple(items)
    text = pgtypes.format_array(value, str)
    assert pgtypes.parse_array(text, str) == value


@given(st.lists(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=2, max_size=2), max_size=4))
def test_int_array_round_trip(rows: list[list[int]]) -> None:
    value = tuple(tuple(row) for row in rows)
    text = pgtypes.format_value("int4[]", value)
    assert pgtypes.parse_text("int4[]", text) == value


@given(st.floats(allow_nan=False))
def test_float_output_round_trips(value: float) -> None:
    assert pgtypes.parse_float8(pgtypes.format_float(value)) == value


def test_float_output_like_postgres() -> None:
    assert pgtypes.format_float(1e15) == "1e+15"
    assert pgtypes.format_float(123456789012345.0) == "123456789012345"
    assert pgtypes.format_float(0.0001) == "0.0001"
    assert pgtypes.format_float(0.00001) == "1e-05"
    assert pgtypes.format_float(pgtypes.to_float4(0.1), 6) == "0.1"
    assert pgtypes.format_float(pgtypes.to_float4(1e6), 6) == "1e+06"


@pytest.mark.parametrize(
    ("text", "months", "days", "micros"),
    [
        ("1 year 2 mons 3 days 04:05:06.5", 14, 3, 14_706_500_000),
        ("-1 days +02:00:00", 0, -1, 7_200_000_000),
        ("2 hours ago", 0, 0, -7_200_000_000),
        ("1.5 months", 1, 15, 0),
        ("@ 3 weeks", 0, 21, 0),
        ("00:00:00", 0, 0, 0),
    ],
)
def test_parse_interval(text: str, months: int, days: int, micros: int) -> None:
    value = pgtypes.parse_interval(text)
    assert (value.months, value.days, value.micros) == (months, days, micros)
    assert pgtypes.parse_interval(pgtypes.format_interval(value)).key() == value.key()


@given(
    st.integers(-1000, 1000),
    st.integers(-1000, 1000),
    st.integers(-(10**12), 10**12),
)
def test_interval_output_round_trips(months: int, days: int, micros: int) -> None:
    value = pgtypes.Interval(months, days, micros)
    parsed = pgtypes.parse_interval(pgtypes.format_interval(value))
    assert (parsed.months, parsed.days, parsed.micros) == (months, days, micros)


def test_scalar_parsing() -> None:
    assert pgtypes.parse_bool(" YES ") is True
    assert pgtypes.parse_bool("of") is False
    with pytest.raises(ValueError):
        pgtypes.parse_bool("o")
    with pytest.raises(pgtypes.NewerSyntax):  # only Postgres 16+ reads these
        pgtypes.parse_text("int4", "0x1F")
    with pytest.raises(pgtypes.NewerSyntax):
        pgtypes.parse_text("int8", "1_000")
    with pytest.raises(ValueError, match="invalid syntax for type int2: 40000"):
        pgtypes.parse_text("int2", "40000")
    assert pgtypes.parse_text("numeric", "1.50") == Decimal("1.50")
    assert pgtypes.parse_text("timestamptz", "2024-01-01 10:00:00+05:30") == pgtypes.parse_text(
        "timestamptz", "2024-01-01 04:30:00"
    )
    assert pgtypes.parse_text("timestamp", "2024-01-01 10:00:00+05") == pgtypes.parse_text(
        "timestamp", "2024-01-01 10:00:00"
    )
    epoch = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    moment = dt.datetime(2024, 1, 1, 4, 30, tzinfo=dt.UTC)
    assert pgtypes.parse_text("timestamptz", "2024-01-01 04:30:00+00") == (moment - epoch) // (
        dt.timedelta(microseconds=1)
    )


# --- three-valued logic properties ------------------------------------------------------------

maybe_int = st.one_of(st.none(), st.integers(-5, 5).map(str))
predicates = st.sampled_from(
    [
        "id > 0",
        "id = big",
        "id IN (1, NULL)",
        "id BETWEEN big AND 3",
        "flag",
        "flag AND id > 0",
        "flag OR id < 0",
        "id = ANY('{1,2,NULL}')",
        "id IS DISTINCT FROM big",
        "coalesce(id, big) > 0",
    ]
)
maybe_bool = st.sampled_from([None, "t", "f"])


@given(predicates, maybe_int, maybe_int, maybe_bool)
def test_not_is_three_valued(predicate: str, a: str | None, b: str | None, c: str | None) -> None:
    row = {"id": a, "big": b, "flag": c}
    p = where(predicate).matches(row)
    not_p = where(f"NOT ({predicate})").matches(row)
    unknown = where(f"({predicate}) IS UNKNOWN").matches(row)
    assert [p, not_p, unknown].count(True) == 1


@given(predicates, predicates, maybe_int, maybe_int, maybe_bool)
def test_de_morgan(p: str, q: str, a: str | None, b: str | None, c: str | None) -> None:
    row = {"id": a, "big": b, "flag": c}
    left = where(f"NOT (({p}) AND ({q}))").matches(row)
    right = where(f"NOT ({p}) OR NOT ({q})").matches(row)
    assert left == right


@given(predicates, maybe_int, maybe_int, maybe_bool)
def test_sql_round_trip_preserves_meaning(
    predicate: str, a: str | None, b: str | None, c: str | None
) -> None:
    row = {"id": a, "big": b, "flag": c}
    first = where(predicate)
    assert where(first.sql).sql == first.sql
    assert where(first.sql).matches(row) == first.matches(row)


# -- one parse per row for every shape (ParsedRow) -------------------------------------------------

SHARED_CLAUSES = [
    "id > 3",
    "id % 2 = 0 AND n > 1.5",
    "n * 2 < 10 OR name ILIKE '%a%'",
    "ts >= '2024-01-02 00:00:00' AND id < 100",
    "nums @> ARRAY[1] OR big = 7",
    "f > 0.5 AND small < 3",
    "name LIKE 'b%' OR n IS NULL",
    "10 / id > 1",
]
TEXTS = st.one_of(
    st.none(),
    st.sampled_from(["0", "1", "2", "7", "12", "1.5", "-3", "abc", "{1,2}", "{}", "NaN", "x"]),
    st.sampled_from(["2024-01-01 10:00:00", "2024-03-01 00:00:00", "infinity", "oops"]),
)


def decide(clause: Where, row: dict[str, str | None]) -> object:
    try:
        return clause.matches(row)
    except EvalError as error:
        return ("error", str(error))


@given(
    st.lists(
        st.fixed_dictionaries(
            dict.fromkeys(("id", "big", "small", "n", "f", "name", "ts", "nums"), TEXTS)
        ),
        min_size=1,
        max_size=5,
    )
)
def test_a_parsed_row_shared_by_every_clause_decides_as_a_plain_row(
    rows: list[dict[str, str | None]],
) -> None:
    clauses = [where(text) for text in SHARED_CLAUSES]
    for row in rows:
        shared = ParsedRow(row)  # one per change, tested against every shape
        for clause in clauses:
            assert decide(clause, shared) == decide(clause, dict(row)), clause.sql
        assert shared == row  # the texts themselves are untouched


def test_a_parsed_row_parses_each_value_once() -> None:
    calls: list[str] = []

    def parse(text: str) -> int:
        calls.append(text)
        if text == "bad":
            raise ValueError(text)
        return int(text)

    slots = (("a", parse), ("b", parse))
    row = ParsedRow({"a": "1", "b": "bad"})
    assert row_env(slots[:1], row) == [1]
    assert row_env(slots[:1], row) == [1]
    for _ in range(2):
        with pytest.raises(EvalError, match="column b has a value that does not parse"):
            row_env(slots, row)
    assert calls == ["1", "bad"]
    assert row_env(slots[:1], {"a": "1"}) == [1]  # a plain dict parses every time
    assert calls == ["1", "bad", "1"]


@pytest.mark.parametrize(
    "deparsed",
    [
        "true) UNION (SELECT 1",  # a second query
        "true GROUP BY 1",  # a clause after the where
        "true; SELECT 1",  # two statements
        "(id = 1",  # does not parse
        "",  # no clause at all
    ],
)
def test_a_deparsed_clause_that_does_not_stand_alone_is_refused(deparsed: str) -> None:
    with pytest.raises(WhereClauseError):
        _check_standalone(deparsed)


def test_a_deparsed_clause_that_stands_alone_passes() -> None:
    _check_standalone("((id = (1)) AND (title ~~ 'a%'::text))")


def test_subquery_tables_of_clauses_with_and_without_sublinks() -> None:
    assert subquery_tables("id = 1 AND title = 'select'") == frozenset()
    assert subquery_tables("id IN (SELECT item FROM other.picks)") == {("other", "picks")}
    assert subquery_tables("id = 1") == frozenset()
