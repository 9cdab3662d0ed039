"""Names and string constants are written as pglast's own printer writes them (the oracle),
without its per-call cost."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from pglast import ast
from pglast.keywords import RESERVED_KEYWORDS, TYPE_FUNC_NAME_KEYWORDS
from pglast.stream import RawStream

from shapes import where_sql

names = st.one_of(
    st.text(min_size=1, max_size=12),
    st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True),
    st.sampled_from(sorted(RESERVED_KEYWORDS | TYPE_FUNC_NAME_KEYWORDS)),
    st.sampled_from(["id", "Id", "ID", 'a"b', "a b", "9lives", "é", "user", "order", ""]),
)


@given(st.lists(names, min_size=1, max_size=3))
def test_names_are_quoted_as_pglast_quotes_them(parts: list[str]) -> None:
    column = ast.ColumnRef(fields=tuple(ast.String(sval=part) for part in parts))
    expected = RawStream()(column)
    assert where_sql.quote_name(*parts) == expected
    assert where_sql.deparse(column) == expected


@given(st.text(max_size=20))
def test_string_constants_are_written_as_pglast_writes_them(text: str) -> None:
    constant = ast.A_Const(val=ast.String(sval=text))
    assert where_sql.deparse(constant) == RawStream()(constant)


def test_the_common_clause_is_written_without_pglast_printer() -> None:
    column = ast.ColumnRef(fields=(ast.String(sval="owner"),))
    clause = ast.A_Expr(
        kind=0,
        name=(ast.String(sval="="),),
        lexpr=column,
        rexpr=ast.A_Const(val=ast.String(sval="it's")),
    )
    assert where_sql.deparse(clause) == "(owner = 'it''s')"
    assert not hasattr(column, "ancestors")  # pglast's printer links the nodes it prints
