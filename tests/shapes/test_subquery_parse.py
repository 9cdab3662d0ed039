"""Parsing and checking of ``IN (SELECT ...)`` sublinks in where clauses (shapes/subquery*.py)."""

from __future__ import annotations

import hashlib

import pytest

from shapes.errors import EvaluationError, InvalidRequest, WhereClauseError
from shapes.schema import Column
from shapes.subquery import Dependency, Position, SubqueryLimits
from shapes.subset import SubsetError, SubsetRequest, validate_subset
from shapes.where import Where, parse_where, subquery_tables


def _columns(*specs: tuple[str, str]) -> dict[str, Column]:
    return {name: Column(name, type_name) for name, type_name in specs}


OUTER = _columns(
    ("id", "int4"),
    ("parent_id", "int8"),
    ("user_id", "int4"),
    ("team_id", "int4"),
    ("name", "text"),
    ("flag", "bool"),
    ("value", "int4"),
    ("u", "uuid"),
    ("channelId", "int4"),
)
PARENT = _columns(("id", "int8"), ("value", "int4"), ("inc", "bool"), ("label", "varchar"))
MEMBERS = _columns(("user_id", "int8"), ("team_id", "int4"), ("channelId", "int4"))
GRAND = _columns(("id", "int4"), ("keep", "bool"))
TABLES = {
    ("public", "parent"): PARENT,
    ("public", "members"): MEMBERS,
    ("public", "grand"): GRAND,
    ("other", "Parent"): PARENT,
    ("public", "channel_members"): MEMBERS,
}


def parse(text: str, params: dict[str, str] | None = None, **kwargs: object) -> Where:
    return parse_where(text, OUTER, params, tables=TABLES, **kwargs)  # type: ignore[arg-type]


def error_of(text: str, params: dict[str, str] | None = None, **kwargs: object) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        parse(text, params, **kwargs)
    return caught.value


# -- subquery_tables ------------------------------------------------------------------------


def test_subquery_tables_names_every_inner_table_at_any_depth() -> None:
    text = (
        'parent_id IN (SELECT id FROM parent WHERE id IN (SELECT id FROM "Grand")) '
        "OR id IN (SELECT user_id FROM other.members) AND name = 'x'"
    )
    assert subquery_tables(text) == {
        ("public", "parent"),
        ("public", "Grand"),
        ("other", "members"),
    }


def test_subquery_tables_folds_unquoted_names_and_is_empty_without_sublinks() -> None:
    assert subquery_tables("id IN (SELECT id FROM PARENT)") == {("public", "parent")}
    assert subquery_tables("id = 1") == frozenset()


@pytest.mark.parametrize(
    ("text", "tables"),
    [
        ("id IN (sElEcT id FROM parent)", {("public", "parent")}),  # keywords in any case
        ("id IN (TABLE parent)", {("public", "parent")}),
        ("id IN (VALUES (1), (2))", set()),
        ('"select" = 1 OR "Values" = \'table\'', set()),  # the words, not as keywords
        ("n = 1 AND title LIKE 'x%'", set()),  # none of the words: not parsed at all
    ],
)
def test_subquery_tables_of_each_way_to_write_a_subquery(
    text: str, tables: set[tuple[str, str]]
) -> None:
    assert subquery_tables(text) == tables


def test_subquery_tables_raises_on_syntax_errors() -> None:
    with pytest.raises(WhereClauseError, match="syntax error"):
        subquery_tables("id IN (SELECT id FROM")


# -- accepted forms ---------------------------------------------------------------------------


def test_single_subquery_gives_one_dependency_one_position_and_real_sql() -> None:
    where = parse("parent_id IN (SELECT id FROM parent WHERE inc = true)")
    assert where.has_subqueries
    assert where.dependencies == (
        Dependency("public", "parent", ("id",), "(inc = TRUE)", ("int8",)),
    )
    assert where.positions == (Position(0, 0, False, ("parent_id",)),)
    assert where.disjunct_count == 1
    assert where.sql == "(parent_id IN (SELECT id FROM public.parent WHERE (inc = TRUE)))"
    assert where.columns == {"parent_id"}
    assert where.routing_dependency == (0, "parent_id")


def test_clause_without_sublink_is_unchanged_when_tables_are_given() -> None:
    plain = parse_where("id = 1 AND name LIKE 'a%'", OUTER)
    with_tables = parse("id = 1 AND name LIKE 'a%'")
    assert with_tables == plain
    assert not with_tables.has_subqueries
    assert with_tables.dependencies == () and with_tables.positions == ()
    assert with_tables.disjunct_count == 0 and with_tables.tags({"id": "1"}, "p") == []
    assert with_tables.matches({"id": "1", "name": "ab"})
    assert with_tables.evaluate({"id": "1", "name": "ab"}, []) == (True, ())
    assert with_tables.views_sql("p") == "((id = (1)) AND (name LIKE 'a%%'))"


def test_or_with_a_predicate_gives_two_disjuncts() -> None:
    where = parse("parent_id IN (SELECT id FROM parent) OR flag = true")
    assert where.disjunct_count == 2
    assert where.positions == (
        Position(0, 0, False, ("parent_id",)),
        Position(1, None, False, ()),
    )
    assert where.routing_dependency is None
    h = hashlib.md5(b"pv:7").hexdigest()
    assert where.tags({"parent_id": "7", "flag": "f"}, "p") == [f"{h}/", "/1"]


def test_and_with_a_predicate_gives_one_disjunct_of_two_positions() -> None:
    where = parse("parent_id IN (SELECT id FROM parent) AND value > 3")
    assert where.disjunct_count == 1
    assert [p.dependency for p in where.positions] == [0, None]
    h = hashlib.md5(b"pv:7").hexdigest()
    assert where.tags({"parent_id": "7", "value": "1"}, "p") == [f"{h}/1"]


def test_not_in_and_not_around_the_sublink_are_negated_positions() -> None:
    for text in (
        "parent_id NOT IN (SELECT id FROM parent)",
        "NOT (parent_id IN (SELECT id FROM parent))",
        "NOT NOT NOT parent_id IN (SELECT id FROM parent)",
    ):
        where = parse(text)
        assert where.positions == (Position(0, 0, True, ("parent_id",)),), text
        assert where.routing_dependency is None


def test_not_is_pushed_to_the_leaves_by_de_morgan() -> None:
    where = parse("NOT (parent_id IN (SELECT id FROM parent) AND value = 1)")
    assert where.disjunct_count == 2
    assert [(p.disjunct, p.dependency, p.negated) for p in where.positions] == [
        (0, 0, True),
        (1, None, True),
    ]


def test_and_distributes_over_or() -> None:
    where = parse(
        "(parent_id IN (SELECT id FROM parent) OR flag) "
        "AND (id IN (SELECT team_id FROM members) OR value = 1)"
    )
    assert where.disjunct_count == 4
    assert [p.disjunct for p in where.positions] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [p.dependency for p in where.positions] == [0, 1, 0, None, None, 1, None, None]


def test_row_form_and_its_tag_text() -> None:
    where = parse("(user_id, team_id) IN (SELECT user_id, team_id FROM members)")
    assert where.dependencies[0].columns == ("user_id", "team_id")
    assert where.positions[0].columns == ("user_id", "team_id")
    assert where.sql == "((user_id, team_id) IN (SELECT user_id, team_id FROM public.members))"
    h = hashlib.md5(b"puser_id:v:2team_id:v:2").hexdigest()
    assert where.tags({"user_id": "2", "team_id": "2"}, "p") == [h]
    h_null = hashlib.md5(b"puser_id:v:2team_id:NULL").hexdigest()
    assert where.tags({"user_id": "2", "team_id": None}, "p") == [h_null]
    assert where.routing_dependency is None


def test_quoted_identifiers_are_requoted() -> None:
    where = parse('"channelId" IN (SELECT "channelId" FROM public.channel_members)')
    assert where.sql == '("channelId" IN (SELECT "channelId" FROM public.channel_members))'
    schema_quoted = parse('parent_id IN (SELECT id FROM other."Parent")')
    assert schema_quoted.dependencies[0].schema == "other"
    assert schema_quoted.dependencies[0].table == "Parent"
    assert 'FROM other."Parent"' in schema_quoted.sql


def test_qualified_and_aliased_inner_columns_are_plain_columns() -> None:
    assert parse("parent_id IN (SELECT parent.id FROM parent)").dependencies[0].columns == ("id",)
    assert parse("parent_id IN (SELECT p.id FROM parent p)").dependencies[0].columns == ("id",)


def test_equal_inner_selects_are_one_dependency() -> None:
    where = parse(
        "parent_id IN (SELECT id FROM parent WHERE inc) OR "
        "(value = 1 AND parent_id IN (SELECT id FROM parent WHERE inc))"
    )
    assert len(where.dependencies) == 1
    assert [p.dependency for p in where.positions] == [0, None, 0]


def test_projected_columns_distinguish_dependencies() -> None:
    where = parse("id IN (SELECT value FROM parent) OR id IN (SELECT id FROM parent)")
    assert [d.columns for d in where.dependencies] == [("value",), ("id",)]


def test_params_are_numbered_across_the_whole_clause_and_substituted_everywhere() -> None:
    where = parse(
        "value IN (SELECT value FROM parent WHERE value > $2) AND value > $1",
        {"1": "5", "2": "10"},
    )
    assert where.dependencies[0].where == "(value > CAST('10' AS int4))"
    assert where.sql.endswith("AND (value > CAST('5' AS int4)))")
    error = error_of(
        "value IN (SELECT value FROM parent WHERE value > $3) AND value > $1", {"1": "5", "3": "10"}
    )
    assert error.field == "params"
    assert error.message == "Parameters must be numbered sequentially, starting from 1"


def test_inner_where_text_stands_on_its_own() -> None:
    where = parse("parent_id IN (SELECT id FROM parent WHERE label LIKE $1)", {"1": "a%"})
    inner = where.dependencies[0]
    assert inner.where is not None
    again = parse_where(inner.where, PARENT, tables=TABLES)
    assert again.sql == inner.where


def test_nesting_three_levels() -> None:
    where = parse(
        "parent_id IN (SELECT id FROM parent WHERE value IN "
        "(SELECT id FROM grand WHERE id IN (SELECT team_id FROM members WHERE team_id > 1)))"
    )
    assert len(where.dependencies) == 1
    inner = where.dependencies[0].where
    assert inner == (
        "(value IN (SELECT id FROM public.grand WHERE (id IN "
        "(SELECT team_id FROM public.members WHERE (team_id > (1))))))"
    )
    second = parse_where(inner, PARENT, tables=TABLES)
    assert second.dependencies[0].table == "grand"
    third = parse_where(second.dependencies[0].where or "", GRAND, tables=TABLES)
    assert third.dependencies[0] == Dependency(
        "public", "members", ("team_id",), "(team_id > (1))", ("int8",)
    )


def test_index_conditions_never_come_from_inside_a_subquery() -> None:
    where = parse("parent_id IN (SELECT id FROM parent WHERE id = 1) AND name = 'a'")
    assert where.index_conditions() == (("name", frozenset({"a"})),)


def test_matches_refuses_a_subquery_clause() -> None:
    with pytest.raises(TypeError):
        parse("parent_id IN (SELECT id FROM parent)").matches({"parent_id": "1"})


def test_views_sql_uses_array_params_and_escapes_percent_signs() -> None:
    where = parse(
        "(parent_id IN (SELECT id FROM parent) AND name LIKE 'a%') "
        "OR (user_id, team_id) NOT IN (SELECT user_id, team_id FROM members)"
    )
    assert where.views_sql("q") == (
        "(((parent_id = ANY(%(q0_0)s::pg_catalog.int8[])) AND (name LIKE 'a%%')) OR "
        "(NOT ((user_id, team_id) IN (SELECT * FROM unnest(%(q1_0)s::pg_catalog.int8[], "
        "%(q1_1)s::pg_catalog.int8[])))))"
    )
    assert where.views_position_sql("q") == (
        "COALESCE(((parent_id = ANY(%(q0_0)s::pg_catalog.int8[])))::boolean, false)",
        "COALESCE(((name LIKE 'a%%'))::boolean, false)",
        "COALESCE((NOT ((user_id, team_id) IN (SELECT * FROM unnest("
        "%(q1_0)s::pg_catalog.int8[], %(q1_1)s::pg_catalog.int8[]))))::boolean, false)",
    )
    assert where.position_sql[1] == "COALESCE(((name LIKE 'a%'))::boolean, false)"


def test_view_params_and_value_texts_round_trip() -> None:
    where = parse("(user_id, team_id) IN (SELECT user_id, team_id FROM members)")
    views = [{(1, 2), (3, None)}]
    params = where.view_params("p", views)
    assert sorted(zip(params["p0_0"], params["p0_1"], strict=True), key=str) == [
        ("1", "2"),
        ("3", None),
    ]
    for value in views[0]:
        assert where.value_from_texts(0, where.value_texts(0, value)) == value


# -- rejections -------------------------------------------------------------------------------

KIND = "only `value IN (SELECT ...)` sublinks are supported right now"


@pytest.mark.parametrize(
    "text",
    [
        "EXISTS (SELECT id FROM parent)",
        "parent_id = ANY(SELECT id FROM parent)",
        "parent_id = (SELECT id FROM parent)",
        "parent_id > ALL (SELECT id FROM parent)",
        "parent_id <> ALL (SELECT id FROM parent)",
    ],
)
def test_other_sublink_kinds_are_refused(text: str) -> None:
    error = error_of(text)
    assert (error.field, error.message) == ("where", KIND)


def test_inner_select_errors_win_over_the_sublink_kind() -> None:
    error = error_of("EXISTS (SELECT 1 FROM parent)")
    assert error.message == "At location 30: Expected a plain column reference"


@pytest.mark.parametrize(
    "text",
    [
        "lower(name) IN (SELECT label FROM parent)",
        "(id + 1) IN (SELECT id FROM parent)",
        "(id, 1) IN (SELECT id, value FROM parent)",
    ],
)
def test_left_side_must_be_columns(text: str) -> None:
    assert error_of(text).message == (
        "currently, left side of `IN (SELECT ...)` can only be a column reference or a list of "
        "column references"
    )


def test_type_mismatch_is_refused_and_int_widths_are_fine() -> None:
    assert error_of("name IN (SELECT id FROM parent)").message == (
        "left side of `IN (SELECT ...)` has type text but subquery returns int8[]"
    )
    assert error_of("(id, name) IN (SELECT id, value FROM parent)").message == (
        "left side of `IN (SELECT ...)` has type record(int4, text) but subquery returns "
        "record(int8, int4)[]"
    )
    assert "has type" in error_of("(id, value) IN (SELECT id FROM parent)").message
    assert parse("id IN (SELECT id FROM parent)").has_subqueries  # int4 against int8


@pytest.mark.parametrize(
    "inner",
    [
        "SELECT DISTINCT id FROM parent",
        "SELECT id FROM parent GROUP BY id",
        "SELECT id FROM parent GROUP BY id HAVING count(*) > 1",
        "SELECT id FROM parent ORDER BY id",
        "SELECT id FROM parent LIMIT 1",
        "SELECT id FROM parent OFFSET 1",
        "SELECT id FROM parent FOR UPDATE",
        "WITH x AS (SELECT 1) SELECT id FROM parent",
        "SELECT id FROM parent UNION SELECT id FROM grand",
        "SELECT id FROM parent WINDOW w AS (ORDER BY id)",
    ],
)
def test_inner_select_must_have_no_clauses(inner: str) -> None:
    error = error_of(f"parent_id IN ({inner})")
    assert (error.field, error.message) == (
        "where",
        "SELECT statement must not contain any clauses",
    )


@pytest.mark.parametrize(
    "inner",
    [
        "SELECT id + 1 FROM parent",
        "SELECT * FROM parent",
        "SELECT lower(label) FROM parent",
        "SELECT x.id FROM parent",
        "SELECT id::int4 FROM parent",
        "SELECT FROM parent",
    ],
)
def test_inner_select_items_must_be_plain_columns(inner: str) -> None:
    assert error_of(f"parent_id IN ({inner})").message.endswith(
        ": Expected a plain column reference"
    )


@pytest.mark.parametrize(
    "inner",
    [
        "SELECT id FROM parent, grand",
        "SELECT id FROM parent JOIN grand USING (id)",
        "SELECT id FROM (SELECT id FROM parent) s",
        "SELECT id",
        "SELECT id FROM ONLY parent",
        "SELECT id FROM parent AS p(a)",
        "SELECT id FROM db.public.parent",
        "SELECT id FROM parent TABLESAMPLE SYSTEM (1)",
    ],
)
def test_inner_from_must_be_one_table(inner: str) -> None:
    assert error_of(f"parent_id IN ({inner})").message == "Expected a single table reference"


def test_unknown_inner_table_is_a_table_error() -> None:
    error = error_of('parent_id IN (SELECT id FROM Nope."Missing")')
    assert error.field == "table"
    assert error.message == (
        'Table "nope"."Missing" does not exist. If the table name contains capitals or special '
        "characters you must quote it."
    )


def test_unknown_inner_column_is_a_columns_error() -> None:
    error = error_of("(parent_id, id) IN (SELECT id, nope FROM parent)")
    assert (error.field, error.message) == (
        "columns",
        "The following columns are not found on the table: nope",
    )


def test_correlated_references_are_unknown() -> None:
    error = error_of("parent_id IN (SELECT id FROM parent WHERE value = name)")
    assert "unknown reference name; the table's columns are: " in error.message


def test_unknown_outer_column_is_unknown() -> None:
    message = error_of("nope IN (SELECT id FROM parent)").message
    assert "unknown reference nope; the table's columns are: " in message


def test_both_polarities_of_one_dependency_are_refused() -> None:
    error = error_of(
        "parent_id IN (SELECT id FROM parent) OR NOT parent_id IN (SELECT id FROM parent)"
    )
    assert error.message == (
        "a subquery dependency cannot be used with both positive and negative polarity in the "
        "same filter"
    )


def test_more_than_100_disjuncts_are_refused() -> None:
    factor = "(parent_id IN (SELECT id FROM parent) OR value = {n})"
    text = " AND ".join(factor.format(n=n) for n in range(7))  # 2^7 = 128
    assert error_of(text).message == (
        "WHERE clause too complex for DNF decomposition (128 disjuncts exceeds limit of 100)"
    )
    six = " AND ".join(factor.format(n=n) for n in range(6))
    assert parse(six).disjunct_count == 64


def test_sublink_outside_and_or_not_is_refused() -> None:
    message = error_of("(parent_id IN (SELECT id FROM parent)) IS TRUE").message
    assert message.endswith("`IN (SELECT ...)` can only be combined with AND, OR and NOT")


def test_without_tables_sublinks_are_not_supported() -> None:
    with pytest.raises(WhereClauseError, match="subqueries are not supported"):
        parse_where("parent_id IN (SELECT id FROM parent)", OUTER)


def test_subsets_refuse_sublinks() -> None:
    request = SubsetRequest(where="parent_id IN (SELECT id FROM parent)")
    with pytest.raises(SubsetError) as caught:
        validate_subset(request, OUTER)
    assert caught.value.message == "Subqueries are not allowed in subsets"


# -- limits -----------------------------------------------------------------------------------


def _nested(levels: int) -> str:
    text = "id IN (SELECT id FROM grand)"
    for _ in range(levels - 1):
        text = f"id IN (SELECT id FROM grand WHERE {text})"
    return text


def test_depth_limit() -> None:
    grand_only = {("public", "grand"): GRAND}
    assert parse_where(_nested(4), GRAND, tables=grand_only).has_subqueries
    with pytest.raises(WhereClauseError) as caught:
        parse_where(_nested(5), GRAND, tables=grand_only)
    assert caught.value.message == (
        "subqueries nested deeper than 4 levels (limit max_subquery_depth=4)"
    )
    with pytest.raises(WhereClauseError, match="max_subquery_depth=2"):
        parse_where(_nested(3), GRAND, tables=grand_only, limits=SubqueryLimits(max_depth=2))


def test_count_limit() -> None:
    text = " OR ".join(f"value IN (SELECT value FROM parent WHERE id = {n})" for n in range(17))
    assert error_of(text).message == "more than 16 subqueries (limit max_subqueries=16)"
    sixteen = " OR ".join(f"value IN (SELECT value FROM parent WHERE id = {n})" for n in range(16))
    assert len(parse(sixteen).dependencies) == 16
    with pytest.raises(WhereClauseError, match="max_subqueries=2"):
        parse(
            "value IN (SELECT value FROM parent WHERE value IN (SELECT id FROM grand)) "
            "OR id IN (SELECT id FROM grand)",
            limits=SubqueryLimits(max_subqueries=2),
        )


def test_percent_in_a_quoted_column_name_is_escaped_in_views_sql() -> None:
    columns = {"a%b": Column("a%b", "int4")}
    where = parse_where('"a%b" IN (SELECT id FROM parent)', columns, tables=TABLES)
    assert where.views_sql("p") == '("a%%b" = ANY(%(p0_0)s::pg_catalog.int8[]))'
    assert where.position_sql == (
        'COALESCE((("a%b" IN (SELECT id FROM public.parent)))::boolean, false)',
    )


def test_one_select_compared_in_two_key_types_is_two_dependencies() -> None:
    columns = {"i": Column("i", "int4"), "n": Column("n", "numeric"), "f": Column("f", "float8")}
    text = "i IN (SELECT id FROM parent) OR n IN (SELECT id FROM parent)"
    where = parse_where(text, columns, tables=TABLES)
    assert [d.key_types for d in where.dependencies] == [("int8",), ("numeric",)]
    floats = parse_where("f IN (SELECT id FROM parent)", columns, tables=TABLES)
    assert floats.dependencies[0].key_types == ("float8",)
    assert floats.dependencies[0] != where.dependencies[0]  # their value sets differ in form


def test_unsupported_value_types_are_refused() -> None:
    columns = {"arr": Column("arr", "int4", dims=1)}
    inner = {("public", "t"): {"arr": Column("arr", "int4", dims=1)}}
    with pytest.raises(WhereClauseError, match="refused"):
        parse_where("arr IN (SELECT arr FROM t)", columns, tables=inner)


def test_evaluate_raises_where_postgres_raises_and_on_unparsable_values() -> None:
    where = parse("(10 / value > 1) OR parent_id IN (SELECT id FROM parent)")
    views = [{1}]
    assert where.evaluate({"value": "5", "parent_id": "1"}, views) == (True, (True, True))
    with pytest.raises(EvaluationError, match="division by zero"):
        where.evaluate({"value": "0", "parent_id": "1"}, views)
    with pytest.raises(EvaluationError, match="does not parse"):
        where.evaluate({"value": "1", "parent_id": "x"}, views)


def test_outer_and_dependency_values_normalise_and_refuse_unparsable_text() -> None:
    where = parse("(user_id, team_id) IN (SELECT user_id, team_id FROM members) AND u IS NULL")
    assert where.outer_value(0, {"user_id": "2", "team_id": None}) == (2, None)
    assert where.dependency_value(0, {"user_id": "2", "team_id": "3"}) == (2, 3)
    with pytest.raises(ValueError):
        where.outer_value(0, {"user_id": "two", "team_id": "1"})
    single = parse("name IN (SELECT label FROM parent)")
    assert single.dependency_value(0, {"label": None}) is None
    assert single.outer_value(0, {"name": "x"}) == "x"
    assert single.value_texts(0, "x") == ("x",)
    with pytest.raises(IndexError):
        parse("id = 1").outer_value(0, {"id": "1"})


def test_sql_three_valued_membership() -> None:
    where = parse("parent_id NOT IN (SELECT id FROM parent)")
    row = {"parent_id": "1"}
    assert where.evaluate(row, [{2, None}]) == (False, (False,))  # NOT NULL is NULL
    assert where.evaluate(row, [{2}]) == (True, (True,))
    assert where.evaluate({"parent_id": None}, [set()]) == (True, (True,))  # NULL IN () is FALSE
    assert where.evaluate({"parent_id": None}, [{2}]) == (False, (False,))
    pair = parse("(user_id, team_id) NOT IN (SELECT user_id, team_id FROM members)")
    assert pair.evaluate({"user_id": "1", "team_id": "2"}, [{(1, None)}]).included is False
    assert pair.evaluate({"user_id": "1", "team_id": "2"}, [{(3, None)}]).included is True
    assert pair.evaluate({"user_id": "1", "team_id": None}, [{(3, 2)}]).included is True
    assert pair.evaluate({"user_id": "1", "team_id": None}, [{(1, 5)}]).included is False


def test_predicates_beside_sublinks_are_one_leaf_per_operator() -> None:
    where = parse("value = 1 AND parent_id IN (SELECT id FROM parent) AND flag AND name = 'x'")
    assert [p.dependency for p in where.positions] == [None, 0]
    assert where.position_sql[0] == (
        "COALESCE((((value = (1)) AND flag AND (name = 'x')))::boolean, false)"
    )
    either = parse("NOT (value = 1 OR parent_id IN (SELECT id FROM parent) OR flag)")
    assert [(p.disjunct, p.dependency, p.negated) for p in either.positions] == [
        (0, None, True),
        (0, 0, True),
    ]
    row = {"value": "2", "parent_id": "3", "flag": "f"}
    assert either.evaluate(row, [{4}]) == (True, (True, True))
    assert either.evaluate({**row, "flag": None}, [{4}]) == (False, (False, True))


def test_patterns_leave_out_values_with_null_parts() -> None:
    single = parse(
        "parent_id IN (SELECT id FROM parent) OR parent_id IN (SELECT value FROM parent)"
    )
    h = hashlib.md5(b"pv:1").hexdigest()
    assert single.patterns(0, [1, None], "p") == [{"pos": 0, "value": h}]
    pair = parse("(user_id, team_id) IN (SELECT user_id, team_id FROM members)")
    assert pair.patterns(0, [(1, None), (None, None)], "p") == []
    assert len(pair.patterns(0, [(1, 2)], "p")) == 1


def test_a_raising_position_the_clause_never_reaches_is_just_not_true() -> None:
    where = parse("parent_id IN (SELECT id FROM parent) OR 10 / value > 1")
    row = {"value": "0", "parent_id": "1"}
    assert where.evaluate(row, [{1}]) == (True, (True, False))  # OR stops at the sublink
    with pytest.raises(EvaluationError, match="division by zero"):
        where.evaluate(row, [{2}])
