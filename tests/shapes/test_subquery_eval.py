"""Subquery clauses decided as Postgres decides them, with Postgres itself as the oracle.

Hypothesis generates small tables (NULLs on both sides) and clauses that mix ``IN (SELECT ...)``
(single and row form, NOT IN, nested) with ordinary predicates under AND/OR/NOT. For every row:
``Where.evaluate`` against views computed by running the inner SELECTs equals Postgres's WHERE;
``position_sql`` equals the active conditions; ``views_sql``/``views_position_sql`` with
``view_params`` select and decide the same; tags of rows agree with move patterns of values.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.adapt import Loader

from shapes.errors import InvalidRequest
from shapes.schema import Column
from shapes.subquery import ValueKey
from shapes.where import Where, parse_where

SESSION = (
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, DMY'; SET extra_float_digits = 1; "
    "SET IntervalStyle = 'iso_8601'"
)


class _RawText(Loader):
    """Rows as the text Postgres outputs, as syncd receives them."""

    def load(self, data: Any) -> str:
        return bytes(data).decode("utf-8")


_TYPES = ("int2", "int4", "int8", "text", "varchar", "bpchar", "bool", "numeric", "uuid")
_TYPES_MORE = ("float4", "float8", "date", "timestamp", "timestamptz", "interval", "time")


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        connection.execute(SESSION)
        for name in _TYPES + _TYPES_MORE:
            connection.adapters.register_loader(name, _RawText)
        yield connection


def _rows(conn: psycopg.Connection[Any], query: str, params: Any = None) -> list[tuple[Any, ...]]:
    return conn.execute(query, params).fetchall()


def _views(conn: psycopg.Connection[Any], where: Where) -> list[set[ValueKey]]:
    views: list[set[ValueKey]] = []
    for index, dependency in enumerate(where.dependencies):
        columns = sql.SQL(", ").join(sql.Identifier(name) for name in dependency.columns)
        query = sql.SQL("SELECT {} FROM {}").format(
            columns, sql.Identifier(dependency.schema, dependency.table)
        )
        if dependency.where is not None:
            query = sql.Composed([query, sql.SQL(" WHERE " + dependency.where)])
        found = conn.execute(query).fetchall()
        inner = [dict(zip(dependency.columns, row, strict=True)) for row in found]
        views.append({where.dependency_value(index, row) for row in inner})
    return views


# -- generated clauses over generated tables -------------------------------------------------

OUTER = {
    name: Column(name, type_name)
    for name, type_name in [
        ("id", "int4"),
        ("a", "int4"),
        ("b", "int8"),
        ("s", "text"),
        ("flag", "bool"),
    ]
}
INNER_1 = {
    name: Column(name, type_name)
    for name, type_name in [("x", "int8"), ("y", "int4"), ("s", "varchar"), ("flag", "bool")]
}
INNER_2 = {name: Column(name, type_name) for name, type_name in [("x", "int4"), ("t", "text")]}
TABLES = {("public", "i1"): INNER_1, ("public", "i2"): INNER_2}
SCHEMA = """
CREATE TABLE o (id int4 PRIMARY KEY, a int4, b int8, s text, flag bool);
CREATE TABLE i1 (x int8, y int4, s varchar, flag bool);
CREATE TABLE i2 (x int4, t text);
"""
OUTER_COLUMNS = ("id", "a", "b", "s", "flag")

SUBQUERY_LEAVES = [
    "a IN (SELECT x FROM i1)",
    "a IN (SELECT x FROM i1 WHERE flag)",
    "b IN (SELECT y FROM i1 WHERE y > 1)",
    "a NOT IN (SELECT x FROM i2 WHERE t <> 'c')",
    "s IN (SELECT s FROM i1)",
    "s IN (SELECT t FROM i2 WHERE t LIKE '%a%' OR t IS NULL)",
    "(a, b) IN (SELECT y, x FROM i1)",
    "(a, s) IN (SELECT x, t FROM i2)",
    "b IN (SELECT x FROM i2 WHERE x IN (SELECT y FROM i1 WHERE flag))",
    "a IN (SELECT y FROM i1 WHERE y NOT IN (SELECT x FROM i2 WHERE t = 'a'))",
    "(b, s) NOT IN (SELECT y, s FROM i1 WHERE x <> $1)",
    "s IN (SELECT t FROM i2 WHERE x > $1)",
]
PREDICATE_LEAVES = ["a = 1", "flag", "s IS NULL", "b > 1", "a < b", "s LIKE 'a%'", "a <> $1"]
PARAMS = {"1": "1"}

small_int = st.one_of(st.none(), st.integers(0, 3))
small_text = st.one_of(st.none(), st.sampled_from(["a", "b", "c", "ab"]))
small_bool = st.one_of(st.none(), st.booleans())
leaf = st.one_of(st.sampled_from(SUBQUERY_LEAVES), st.sampled_from(PREDICATE_LEAVES))
clauses = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.tuples(inner, inner).map(lambda pair: f"({pair[0]} AND {pair[1]})"),
        st.tuples(inner, inner).map(lambda pair: f"({pair[0]} OR {pair[1]})"),
        inner.map(lambda clause: f"NOT ({clause})"),
        st.lists(inner, min_size=3, max_size=4).map(lambda items: " AND ".join(items)),
        st.lists(inner, min_size=3, max_size=4).map(lambda items: " OR ".join(items)),
    ),
    max_leaves=5,
)
tables = st.tuples(
    st.lists(st.tuples(small_int, small_int, small_text, small_bool), max_size=7),
    st.lists(st.tuples(small_int, small_int, small_text, small_bool), max_size=6),
    st.lists(st.tuples(small_int, small_text), max_size=6),
)


def _fill(conn: psycopg.Connection[Any], data: Any) -> None:
    outer, inner_1, inner_2 = data
    conn.execute(SCHEMA)
    with conn.cursor() as cur:
        if outer:
            rows = [(i, *row) for i, row in enumerate(outer)]
            cur.executemany("INSERT INTO o VALUES (%s, %s, %s, %s, %s)", rows)
        if inner_1:
            cur.executemany("INSERT INTO i1 VALUES (%s, %s, %s, %s)", inner_1)
        if inner_2:
            cur.executemany("INSERT INTO i2 VALUES (%s, %s)", inner_2)


def _ids(rows: Sequence[tuple[Any, ...]]) -> set[str]:
    return {row[0] for row in rows}


def _has_null(value: ValueKey | None) -> bool:
    return value is None or isinstance(value, tuple) and None in value


def _bools(texts: Sequence[Any]) -> tuple[bool, ...]:
    return tuple(text == "t" for text in texts)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
@given(clause=clauses, data=tables)
def test_evaluate_positions_and_view_sql_agree_with_postgres(
    conn: psycopg.Connection[Any], clause: str, data: Any
) -> None:
    try:
        where = parse_where(clause, OUTER, PARAMS, tables=TABLES)
    except InvalidRequest as error:
        assert "polarity" in error.message, error.message
        reject()
    with conn.transaction(force_rollback=True):
        _fill(conn, data)
        views = _views(conn, where)
        rows = _rows(conn, "SELECT id, a, b, s, flag FROM o")
        meta = {
            row[0]: where.evaluate(dict(zip(OUTER_COLUMNS, row, strict=True)), views)
            for row in rows
        }
        included = {key for key, value in meta.items() if value.included}
        as_written = clause.replace("$1", "'1'")  # an untyped literal, typed as $1 is
        assert _ids(_rows(conn, f"SELECT id FROM o WHERE {as_written}")) == included
        assert _ids(_rows(conn, f"SELECT id FROM o WHERE {where.sql}")) == included
        params = where.view_params("v", views)
        assert _ids(_rows(conn, f"SELECT id FROM o WHERE {where.views_sql('v')}", params)) == (
            included
        )
        if where.has_subqueries:
            _check_positions(conn, where, meta, params)
            _check_tags(where, rows, views)


def _check_positions(
    conn: psycopg.Connection[Any], where: Where, meta: dict[str, Any], params: dict[str, Any]
) -> None:
    real = ", ".join(where.position_sql)
    for row in _rows(conn, f"SELECT id, {real} FROM o"):
        assert _bools(row[1:]) == meta[row[0]].active_conditions, row
    over_views = ", ".join(where.views_position_sql("v"))
    for row in _rows(conn, f"SELECT id, {over_views} FROM o", params):
        assert _bools(row[1:]) == meta[row[0]].active_conditions, row
    for value in meta.values():  # included is exactly "some disjunct has all positions true"
        groups: dict[int, list[bool]] = {}
        for ok, position in zip(value.active_conditions, where.positions, strict=True):
            groups.setdefault(position.disjunct, []).append(ok)
        assert value.included == any(all(group) for group in groups.values())


def _check_tags(where: Where, rows: Sequence[tuple[Any, ...]], views: list[set[ValueKey]]) -> None:
    for row in rows:
        record = dict(zip(OUTER_COLUMNS, row, strict=True))
        tags = where.tags(record, "stack/handle")
        assert len(tags) == where.disjunct_count
        for index, position in enumerate(where.positions):
            slot = tags[position.disjunct].split("/")[index]
            if position.dependency is None:
                assert slot == "1"
                continue
            patterns = {
                pattern["value"]
                for pattern in where.patterns(
                    position.dependency, views[position.dependency], "stack/handle"
                )
                if pattern["pos"] == index
            }
            value = where.outer_value(position.dependency, record)
            member = value in views[position.dependency] and not _has_null(value)
            assert (slot in patterns) == member, (record, index)


# -- type pairs: outer and inner values Postgres finds equal give equal tags and patterns ------

TYPE_PAIRS = [
    ("int4", "int8", ["0", "1", "-7", "2147483647", "NULL"], ["1", "-7", "2147483647", "5"]),
    ("int8", "int2", ["0", "3", "-3", "9000000000"], ["3", "0", "-3"]),
    ("text", "varchar", ["'a'", "'b '", "''", "'ü'", "NULL"], ["'a'", "'b '", "'b'", "''"]),
    ("bpchar(3)", "bpchar(5)", ["'a'", "'ab'", "NULL"], ["'a  '", "'ab'", "'c'"]),
    (
        "uuid",
        "uuid",
        ["'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'", "'00000000-0000-0000-0000-000000000000'"],
        ["'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "'{00000000000000000000000000000001}'"],
    ),
    ("bool", "bool", ["true", "false", "NULL"], ["'t'", "'yes'", "NULL"]),
    ("numeric(10,2)", "numeric", ["1.5", "2", "0", "-0.5", "NULL"], ["1.50", "2.000", "-0.0", "7"]),
    ("numeric", "float8", ["0.1", "1.5", "'NaN'", "1e300"], ["0.1", "1.5", "'NaN'", "3"]),
    ("float4", "float8", ["0.5", "0.1", "'-0'"], ["0.5", "0.1", "0"]),
    (
        "date",
        "timestamptz",
        ["'2024-02-29'", "'infinity'"],
        ["'2024-02-29 00:00+00'", "'infinity'"],
    ),
    ("interval", "interval", ["'1 mon'", "'1 day'"], ["'30 days'", "'24 hours'", "'P1D'"]),
    ("time", "time", ["'10:00'", "'23:59:59.5'"], ["'10:00:00.000'", "'23:59:59.50'"]),
]


def _pair_id(pair: tuple[str, str, list[str], list[str]]) -> str:
    return f"{pair[0]}-{pair[1]}"


@pytest.mark.parametrize("pair", TYPE_PAIRS, ids=_pair_id)
def test_tags_and_patterns_agree_across_type_pairs(
    conn: psycopg.Connection[Any], pair: tuple[str, str, list[str], list[str]]
) -> None:
    outer_type, inner_type, outer_values, inner_values = pair
    with conn.transaction(force_rollback=True):
        conn.execute(f"CREATE TABLE o (id int4 PRIMARY KEY, c {outer_type})")
        conn.execute(f"CREATE TABLE i (c {inner_type})")
        for number, value in enumerate(outer_values):
            conn.execute(f"INSERT INTO o VALUES ({number}, {value})")
        for value in inner_values:
            conn.execute(f"INSERT INTO i VALUES ({value})")
        outer = {"id": Column("id", "int4"), "c": Column("c", outer_type.split("(")[0])}
        inner = {"c": Column("c", inner_type.split("(")[0])}
        for text in ("c IN (SELECT c FROM i)", "NOT c IN (SELECT c FROM i)"):
            where = parse_where(text, outer, tables={("public", "i"): inner})
            views = _views(conn, where)
            rows = _rows(conn, "SELECT id, c FROM o")
            found = _ids(_rows(conn, f"SELECT id FROM o WHERE {where.sql}"))
            params = where.view_params("v", views)
            assert _ids(_rows(conn, f"SELECT id FROM o WHERE {where.views_sql('v')}", params)) == (
                found
            )
            patterns = {p["value"] for p in where.patterns(0, views[0], "prefix")}
            for row in rows:
                record = {"id": row[0], "c": row[1]}
                meta = where.evaluate(record, views)
                assert meta.included == (row[0] in found), record
                plan = where._plan
                assert plan is not None
                # The shortcut for a lone ``c IN (...)`` and the general evaluation agree.
                assert meta == plan._evaluate_clause(record, views), record
                held = where.outer_value(0, record)
                member = held in views[0] and not _has_null(held)
                assert (where.tags(record, "prefix")[0] in patterns) == member, record
            for key in views[0]:
                assert where.value_from_texts(0, where.value_texts(0, key)) == key
