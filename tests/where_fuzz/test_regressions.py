"""Every mismatch the where fuzzer found, pinned: syncd decides each row as Postgres does.

Each case is a clause (with parameters) and one row (column -> SQL literal); the row's values
reach syncd as the text Postgres outputs under syncd's session settings, and the clause is
decided by syncd, by Postgres as written, and by Postgres running syncd's snapshot SQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.where_fuzz import fuzzer

CASES: list[tuple[str, str, dict[str, str], dict[str, str]]] = [
    # char(n) keeps its padding for LIKE and output, drops it for text
    ("bpchar_like_sees_padding", "c LIKE 'a %'", {}, {"c": "'a'"}),
    ("bpchar_ilike_sees_padding", "c ILIKE 'ab  '", {}, {"c": "'ab'"}),
    ("bpchar_like_any", "c LIKE ANY(ta)", {}, {"c": "'A'", "ta": "'{A}'"}),
    ("bpchar_concat_output", "concat(c, f8) LIKE $1", {"1": "ab  "}, {"c": "'ab'"}),
    ("bpchar_to_text_trims", "(c)::text = 'ab'", {}, {"c": "'ab'"}),
    ("bpchar_concat_operator_trims", "(c || 'x') = 'abx'", {}, {"c": "'ab'"}),
    # the C collation changes ASCII letters only
    ("lower_is_ascii_only", "t = lower(t)", {}, {"t": "'ÀÉß'"}),
    ("ilike_is_ascii_only", "t ILIKE 'àéß'", {}, {"t": "'ÀÉß'"}),
    # intervals arrive in IntervalStyle iso_8601 and ::text renders that style
    ("interval_column_parses", "iv = '1 day'", {}, {"iv": "'1 day'"}),
    (
        "interval_mixed_signs",
        "iv = '1 year 2 mons -3 days -04:05:06.5'",
        {},
        {"iv": "'P1Y2M-3DT-4H-5M-6.5S'"},
    ),
    (
        "interval_text",
        "(iv)::text = 'P1Y2M3DT4H5M6.789S'",
        {},
        {"iv": "'1 year 2 mons 3 days 04:05:06.789'"},
    ),
    ("interval_zero_text", "(iv)::text = 'PT0S'", {}, {"iv": "'0'"}),
    ("interval_fractional_years", "iv = '1.05 years'", {}, {"iv": "'13 mons'"}),
    # the snapshot SQL keeps the clause's tree
    (
        "snapshot_between_of_comparison",
        "(f4 <> f8) BETWEEN false AND b",
        {},
        {"f4": "1", "f8": "2", "b": "true"},
    ),
    (
        "snapshot_nested_not_between",
        "(NOT ts BETWEEN ts AND ts) NOT BETWEEN false AND b",
        {},
        {"ts": "'2000-01-01'", "b": "false"},
    ),
    ("snapshot_is_true_of_comparison", "(i4 < 1) IS TRUE", {}, {"i4": "0"}),
    ("snapshot_bare_parameter", "$1", {"1": "true"}, {}),
    ("snapshot_numeric_literal_scale", "(n * 1.5e3)::text = '3000.0'", {}, {"n": "2"}),
    # literals typed as Postgres types them
    ("negative_int4_literal", "i4 = -2147483648 / 7", {}, {"i4": "-306783378"}),
    (
        "negative_int8_literal",
        "(-9223372036854775808 / i8) = 1",
        {},
        {"i8": "-9223372036854775808"},
    ),
    # overflow and underflow raise
    ("negate_int_minimum", "-i4 = 1", {}, {"i4": "-2147483648"}),
    ("int2_negate_minimum", "-i2 BETWEEN i8 AND i4", {}, {"i2": "-32768", "i4": "1", "i8": "5"}),
    ("int_division_overflow", "i4 / -1 = 0", {}, {"i4": "-2147483648"}),
    ("float8_overflow", "f8 * 10 > 0", {}, {"f8": "1e308"}),
    ("float8_underflow", "f8 * f8 = 0", {}, {"f8": "1e-300"}),
    ("float4_overflow", "f4 * 10 > 0", {}, {"f4": "3.4e38"}),
    ("float8_to_float4_underflow", "(f8)::float4 = 0", {}, {"f8": "1e-300"}),
    ("numeric_to_float8_overflow", "(n)::float8 > 0", {}, {"n": "1e400"}),
    ("numeric_nan_to_int", "(n)::int4 = 0", {}, {"n": "'NaN'"}),
    # float -> numeric digits, numeric zero, numeric arithmetic
    ("float8_to_numeric_15_digits", "(f8)::numeric = 0.3", {}, {"f8": "0.30000000000000004"}),
    ("float4_to_numeric_6_digits", "(f4)::numeric = 0.1", {}, {"f4": "0.1"}),
    ("float4_to_numeric_rounds", "(f4)::numeric = 123457000", {}, {"f4": "123456789.123"}),
    ("numeric_no_negative_zero", "(n)::text = '0.0'", {}, {"n": "-0.0"}),
    ("numeric_negation_of_zero", "(-n)::text = '0'", {}, {"n": "0"}),
    ("numeric_division_scale", "(n / 3)::text = '0.50000000000000000000'", {}, {"n": "1.5"}),
    ("numeric_division_rounds_half_up", "(n / 3)::text = '0.66666666666666666667'", {}, {"n": "2"}),
    ("numeric_infinity_minus_infinity", "n - n > 0", {}, {"n": "'Infinity'"}),
    ("numeric_infinity_division", "n / n > 0", {}, {"n": "'Infinity'"}),
    ("numeric_nan_division_by_zero", "n / 0 > 0", {}, {"n": "'NaN'"}),
    ("numeric_exponent_literal_scale", "(n * 1e3)::text = '2000'", {}, {"n": "2"}),
    ("numeric_huge_exact", "n + 1 > n", {}, {"n": "1e100000"}),
    ("numeric_huge_division", "(n / 7)::text LIKE '142857142857%'", {}, {"n": "1e100000"}),
    ("numeric_huge_overflow", "n * n > n", {}, {"n": "1e100000"}),
    # arrays
    ("array_more_than_six_dimensions", "ia = '{{{{{{{1}}}}}}}'", {}, {"ia": "'{1}'"}),
    ("array_compare_other_dimensions", "ia < '{7}'", {}, {"ia": "'{{1,2},{3,4}}'"}),
    ("array_compare_nested_literal", "ia < '{{1}}'", {}, {"ia": "'{1,2}'"}),
    ("array_explicit_bounds_equal", "ia = '{7,8}'", {}, {"ia": "'[2:3]={7,8}'"}),
    ("array_explicit_bounds_text", "(ia)::text = '[2:3]={7,8}'", {}, {"ia": "'[2:3]={7,8}'"}),
    ("array_explicit_bounds_any", "8 = ANY(ia)", {}, {"ia": "'[2:3]={7,8}'"}),
    ("array_concat_incompatible", "(ia || ARRAY[1]) = ia", {}, {"ia": "'{{1,2},{3,4}}'"}),
    ("array_append_to_2d", "(ia || 5) = ia", {}, {"ia": "'{{1,2},{3,4}}'"}),
    ("array_concat_bounds_mismatch", "(ia || ARRAY[[1,2]]) = ia", {}, {"ia": "'[2:3]={7,8}'"}),
    (
        "array_prepend_keeps_bounds",
        "(0 || ia)::text = '[2:4]={0,7,8}'",
        {},
        {"ia": "'[2:3]={7,8}'"},
    ),
    # every argument of a strict operator is evaluated before NULL is returned
    ("strict_operator_evaluates_both_sides", "(n = 1) = (1 / i4 = 1)", {}, {"i4": "0"}),
    (
        "any_evaluates_left_of_empty_array",
        "(i8 / i2) = ANY(ia)",
        {},
        {"i2": "0", "i8": "1", "ia": "'{}'"},
    ),
    # timestamps
    ("infinite_timestamp_to_time", "(ts)::time IS NULL", {}, {"ts": "'infinity'"}),
    # dates and timestamps over Postgres's whole range
    ("date_bc", "d < '0001-01-01'", {}, {"d": "'0044-03-15 BC'"}),
    ("date_bc_text", "(d)::text = '0044-03-15 BC'", {}, {"d": "'0044-03-15 BC'"}),
    ("date_past_9999", "d > '9999-12-31'", {}, {"d": "'12000-01-01'"}),
    ("date_past_9999_plus_days", "(d + i4) IN (d)", {}, {"d": "'12000-01-01'", "i4": "-1"}),
    ("timestamp_bc", "ts < '0001-01-01 00:00'", {}, {"ts": "'0044-03-15 10:00 BC'"}),
    (
        "timestamp_bc_plus_interval",
        "(ts + iv)::text LIKE '%BC'",
        {},
        {"ts": "'0044-03-15 10:00 BC'", "iv": "'1 mon'"},
    ),
    (
        "timestamptz_bc_text",
        "(tz)::text = '0044-03-15 10:00:00+00 BC'",
        {},
        {"tz": "'0044-03-15 10:00+00 BC'"},
    ),
    ("time_24_00", "tm > '23:59:59.999999'", {}, {"tm": "'24:00:00'"}),
    ("time_24_00_literal", "'24:00:00'::time > tm", {}, {"tm": "'12:00'"}),
    ("date_plus_int_out_of_range", "(d + 2147483647) > d", {}, {"d": "'2000-01-01'"}),
    (
        "timestamp_month_end_clamp",
        "(ts + '1 mon'::interval)::text = '2000-02-29 08:00:00'",
        {},
        {"ts": "'2000-01-31 08:00'"},
    ),
    # types chosen as Postgres chooses them
    ("greatest_keeps_first_string_type", "greatest(c, t) = c", {}, {"c": "'ab'", "t": "'ab  '"}),
    (
        "between_parameter_typed_by_low_bound",
        "$1 NOT BETWEEN u AND 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
        {"1": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
        {"u": "'00000000-0000-0000-0000-000000000000'"},
    ),
    (
        "between_literal_typed_per_comparison",
        "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11' BETWEEN SYMMETRIC"
        " 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11' AND u",
        {},
        {"u": "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"},
    ),
    ("varchar_compared_as_bpchar", "vc = c", {}, {"vc": "'ab  '", "c": "'ab'"}),
    ("text_compared_as_text", "t = c", {}, {"t": "'ab  '", "c": "'ab'"}),
    ("in_list_column_item_compared_alone", "'ab  ' IN (c, t)", {}, {"c": "'ab'", "t": "''"}),
    (
        "varchar_parameter_typed_text",
        "NOT $1 NOT BETWEEN vc AND c",
        {"1": "ab  "},
        {"vc": "'AB'", "c": "'ab'"},
    ),
    (
        "numeric_negation_exact",
        "least(n, n) = -(-(n))",
        {},
        {"n": "123456789012345678901234567890.123"},
    ),
    # the jsonb cast, rendered as jsonb prints
    ("jsonb_cast_accepted", "j::jsonb IS NOT NULL", {}, {"j": "'{}'"}),
    (
        "jsonb_literal_canonical",
        '(\'{"b": 1, "a": [1e2, -0], "b": 2}\'::jsonb)::text = (j)::text',
        {},
        {"j": '\'{"a": [100, 0], "b": 2}\''},
    ),
    ("jsonb_cast_of_text_error", "(t)::jsonb IS NULL", {}, {"t": "'not json'"}),
    # LIKE: a dangling escape raises only where Postgres's matcher reaches it
    ("like_dangling_escape_reached", "t LIKE 'a\\'", {}, {"t": "'ab'"}),
    ("like_dangling_escape_not_reached", "t LIKE 'a\\'", {}, {"t": "'b'"}),
    ("like_empty_escape", "t LIKE 'a\\b' ESCAPE ''", {}, {"t": "E'a\\\\b'"}),
    # clauses Postgres refuses are refused
    ("refuse_varchar_zero", "'x'::varchar(0) = t", {}, {}),
    ("refuse_ilike_function", "ilike(t, 'a%')", {}, {}),
    ("refuse_date_minus_int8", "(ts)::date > (d - i8)", {}, {}),
    ("refuse_mixed_array_types", "ia && ARRAY[i8, 2]", {}, {}),
]


@pytest.fixture(scope="module")
def fuzz_conn(pg_server: Any) -> Iterator[psycopg.Connection[Any]]:
    name = "where_fuzz_regressions"
    with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.execute(f"CREATE DATABASE {name}")
    dsn = psycopg.conninfo.make_conninfo(pg_server.dsn, dbname=name)
    with fuzzer.open_connection(dsn) as conn:
        fuzzer.create_table(conn, 0, 0)
        yield conn
    with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name}")


@pytest.mark.parametrize(
    ("clause", "params", "row"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_decides_as_postgres(
    fuzz_conn: psycopg.Connection[Any], clause: str, params: dict[str, str], row: dict[str, str]
) -> None:
    fuzz_conn.execute(f"TRUNCATE {fuzzer.TABLE}")
    names = ["id", *row]
    values = ["2", *(f"({value})::{fuzzer.sql_type(name)}" for name, value in row.items())]
    fuzz_conn.execute(
        f"INSERT INTO {fuzzer.TABLE} ({', '.join(names)}) VALUES ({', '.join(values)})"
    )
    rows = fuzzer.read_rows(fuzz_conn)
    report = fuzzer.Report()
    fuzzer.check_clause(fuzz_conn, clause, params, rows, report)
    assert report.mismatches == 0, report.summary()
