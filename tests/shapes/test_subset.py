"""Validation of subset snapshot parameters (``docs/protocol.md``, "Subset snapshots")."""

from __future__ import annotations

import pytest

from shapes.schema import Column
from shapes.subset import (
    SubsetError,
    SubsetRequest,
    parse_order_by,
    subset_from_body,
    subset_from_query,
    validate_subset,
)

COLUMNS = {
    "id": Column("id", "int4", pk_index=0, not_null=True, category="N"),
    "n": Column("n", "int4", category="N"),
    "title": Column("title", "text", category="S"),
}


def subset_errors(call: object) -> dict[str, object]:
    with pytest.raises(SubsetError) as info:
        assert callable(call)
        call()
    return info.value.errors()


def test_query_form_with_json_params() -> None:
    request = subset_from_query(
        {
            "table": "items",
            "subset__where": "n > $1 AND title = $2",
            "subset__params": '{"1": 5, "2": "x"}',
            "subset__limit": "10",
            "subset__offset": "0",
            "subset__order_by": '"n" DESC',
            "subset__where_expr": "{}",
        }
    )
    assert request == SubsetRequest(
        "n > $1 AND title = $2", {"1": "5", "2": "x"}, 10, 0, '"n" DESC'
    )
    subset = validate_subset(request, COLUMNS)
    assert subset.order_by_sql == '"n" DESC'
    assert subset.where is not None
    assert subset.where.matches({"n": "6", "title": "x"})


def test_nested_query_form_and_absence() -> None:
    assert subset_from_query({"subset[where]": "n = 1"}) == SubsetRequest(where="n = 1")
    assert subset_from_query({"table": "items", "offset": "-1"}) is None


def test_body_forms() -> None:
    body = {"where": "id = $1", "params": {"1": 3, "2": None, "3": True}, "order_by": "id"}
    request = subset_from_body(body)
    assert request is not None
    assert request.params == {"1": "3", "2": "", "3": "true"}
    assert subset_from_body({"subset": {"limit": 2, "order_by": "id"}}) == SubsetRequest(
        limit=2, order_by="id"
    )
    assert subset_from_body({}) is None


def test_limit_needs_order_by() -> None:
    errors = subset_errors(lambda: validate_subset(SubsetRequest(limit=5), COLUMNS))
    assert errors == {
        "subset": {"order_by": ["order_by is required when limit or offset is present"]}
    }


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"subset__limit": "0", "subset__order_by": "id"}, "limit"),
        ({"subset__limit": "x", "subset__order_by": "id"}, "limit"),
        ({"subset__offset": "-1", "subset__order_by": "id"}, "offset"),
        ({"subset__params": "[1]"}, "params"),
        ({"subset__params": "{"}, "params"),
    ],
)
def test_bad_query_values(query: dict[str, str], field: str) -> None:
    errors = subset_errors(lambda: subset_from_query(query))
    assert list(errors["subset"]) == [field]  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("id IN (SELECT 1)", "Subqueries are not allowed in subsets"),
        ("nope = 1", "unknown reference nope"),
    ],
)
def test_subset_where_errors_are_nested(where: str, message: str) -> None:
    errors = subset_errors(lambda: validate_subset(SubsetRequest(where=where), COLUMNS))
    [reported] = errors["subset"]["where"]  # type: ignore[index]
    assert message in reported


@pytest.mark.parametrize(
    ("text", "sql"),
    [
        ("id", '"id"'),
        (
            '"n" DESC NULLS FIRST, title ASC NULLS LAST',
            '"n" DESC NULLS FIRST, "title" ASC NULLS LAST',
        ),
    ],
)
def test_order_by_is_rebuilt_from_column_references(text: str, sql: str) -> None:
    assert parse_order_by(text, COLUMNS) == sql


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lower(title)", "FuncCall expressions are not allowed in ORDER BY clauses"),
        ("id::text", "TypeCast expressions are not allowed in ORDER BY clauses"),
        ("$1", "parameter $1 is not supported in ORDER BY clauses"),
        ("nope", "unknown reference nope; the table's columns are: id, n, title"),
        ("id; DROP TABLE items", 'unescaped ";" causing statement split'),
        ("id LIMIT 1", "malformed query ending with SQL clauses"),
    ],
)
def test_order_by_rejects_everything_else(text: str, message: str) -> None:
    errors = subset_errors(lambda: parse_order_by(text, COLUMNS))
    assert errors == {"subset": {"order_by": [message]}}
