"""The column references of a client's clause, as the shape routes check them."""

from __future__ import annotations

import pytest

from shapes.errors import WhereClauseError
from shapes.where import ColumnReference, column_references


def test_every_spelling_of_a_column_is_found_with_its_text() -> None:
    clause = (
        '"é" = \'é\' AND U&"\\0073ecret" = 2 AND t.b = 1 AND SECRET::int = 1'
        ' AND lower("Secret") = owner AND x IN (SELECT y)'
    )
    assert column_references(clause) == (
        ColumnReference("é", '"é"'),
        ColumnReference("secret", 'U&"\\0073ecret"'),
        ColumnReference("b", "t.b"),
        ColumnReference("secret", "SECRET"),
        ColumnReference("Secret", '"Secret"'),
        ColumnReference("owner", "owner"),
        ColumnReference("x", "x"),
        ColumnReference("y", "y"),
    )
    assert column_references("1 = 1 -- owner") == ()


def test_order_by_references() -> None:
    found = column_references("a DESC, lower(b), c NULLS FIRST", order_by=True)
    assert [r.name for r in found] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("text", "order_by"),
    [("1=1) OR (1=1", False), ("a; SELECT 1", True), ("a LIMIT 1", True), ("'x", False)],
)
def test_what_is_not_one_clause_is_refused(text: str, order_by: bool) -> None:
    with pytest.raises(WhereClauseError):
        column_references(text, order_by=order_by)
