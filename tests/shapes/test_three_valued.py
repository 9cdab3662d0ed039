"""Three-valued logic, strictly: NULL (unknown) is told apart from FALSE.

``Where.matches`` folds NULL and FALSE into "no", so each clause's truth value is read back
through ``IS TRUE`` / ``IS FALSE`` / ``IS UNKNOWN`` (exactly one holds) and compared with an
oracle written here in plain Python, as ``bool | None``, for the clause itself, its negation,
and conjunctions and disjunctions of two clauses (Kleene's truth tables, as in Postgres).
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st

from shapes.schema import Column
from shapes.where import parse_where

Truth = bool | None
Row = dict[str, str | None]

COLUMNS = {
    column.name: column
    for column in [
        Column("id", "int4", pk_index=0),
        Column("big", "int8"),
        Column("flag", "bool"),
    ]
}


def _int(row: Row, name: str) -> int | None:
    text = row.get(name)
    return None if text is None else int(text)


def _flag(row: Row) -> Truth:
    text = row.get("flag")
    return None if text is None else text == "t"


def _compare(a: int | None, b: int | None, op: Callable[[int, int], bool]) -> Truth:
    return None if a is None or b is None else op(a, b)


def kleene_not(p: Truth) -> Truth:
    return None if p is None else not p


def kleene_and(p: Truth, q: Truth) -> Truth:
    if p is False or q is False:
        return False
    if p is None or q is None:
        return None
    return True


def kleene_or(p: Truth, q: Truth) -> Truth:
    if p is True or q is True:
        return True
    if p is None or q is None:
        return None
    return False


def _in_with_null(value: int | None, members: tuple[int, ...]) -> Truth:
    """``value IN (members..., NULL)``: true if found, else unknown."""
    if value is None:
        return None
    return True if value in members else None


ORACLES: dict[str, Callable[[Row], Truth]] = {
    "id > 0": lambda r: _compare(_int(r, "id"), 0, int.__gt__),
    "id = big": lambda r: _compare(_int(r, "id"), _int(r, "big"), int.__eq__),
    "id <> big": lambda r: _compare(_int(r, "id"), _int(r, "big"), int.__ne__),
    "id IN (1, NULL)": lambda r: _in_with_null(_int(r, "id"), (1,)),
    "id = ANY('{1,2,NULL}')": lambda r: _in_with_null(_int(r, "id"), (1, 2)),
    "id NOT IN (1, 2)": lambda r: kleene_not(
        kleene_or(_compare(_int(r, "id"), 1, int.__eq__), _compare(_int(r, "id"), 2, int.__eq__))
    ),
    "id BETWEEN big AND 3": lambda r: kleene_and(
        _compare(_int(r, "id"), _int(r, "big"), int.__ge__),
        _compare(_int(r, "id"), 3, int.__le__),
    ),
    "flag": _flag,
    "NOT flag": lambda r: kleene_not(_flag(r)),
    "flag AND id > 0": lambda r: kleene_and(_flag(r), _compare(_int(r, "id"), 0, int.__gt__)),
    "flag OR id < 0": lambda r: kleene_or(_flag(r), _compare(_int(r, "id"), 0, int.__lt__)),
    "flag IS NOT TRUE": lambda r: _flag(r) is not True,
    "id IS NULL": lambda r: r.get("id") is None,
    "id IS DISTINCT FROM big": lambda r: _int(r, "id") != _int(r, "big"),
    "coalesce(id, big) > 0": lambda r: _compare(
        _int(r, "id") if r.get("id") is not None else _int(r, "big"), 0, int.__gt__
    ),
    "NULL::bool": lambda r: None,
    "id > NULL": lambda r: None,
}

predicates = st.sampled_from(sorted(ORACLES))
maybe_int = st.one_of(st.none(), st.integers(-5, 5).map(str))
maybe_bool = st.sampled_from([None, "t", "f"])
rows = st.fixed_dictionaries({"id": maybe_int, "big": maybe_int, "flag": maybe_bool})


def truth(clause: str, row: Row) -> Truth:
    """The clause's three-valued result, read through ``IS TRUE/FALSE/UNKNOWN``."""
    is_true = parse_where(f"({clause}) IS TRUE", COLUMNS).matches(row)
    is_false = parse_where(f"({clause}) IS FALSE", COLUMNS).matches(row)
    is_unknown = parse_where(f"({clause}) IS UNKNOWN", COLUMNS).matches(row)
    assert [is_true, is_false, is_unknown].count(True) == 1, (clause, row)
    value: Truth = True if is_true else False if is_false else None
    assert parse_where(clause, COLUMNS).matches(row) is (value is True)
    return value


@given(predicates, rows)
def test_each_clause_against_its_oracle(p: str, row: Row) -> None:
    assert truth(p, row) is ORACLES[p](row)


@given(predicates, rows)
def test_not_maps_unknown_to_unknown(p: str, row: Row) -> None:
    assert truth(f"NOT ({p})", row) is kleene_not(ORACLES[p](row))


@given(predicates, predicates, rows)
def test_and_or_follow_kleene(p: str, q: str, row: Row) -> None:
    a, b = ORACLES[p](row), ORACLES[q](row)
    assert truth(f"({p}) AND ({q})", row) is kleene_and(a, b)
    assert truth(f"({p}) OR ({q})", row) is kleene_or(a, b)


@given(predicates, predicates, rows)
def test_de_morgan_keeps_unknown(p: str, q: str, row: Row) -> None:
    left = truth(f"NOT (({p}) AND ({q}))", row)
    assert left is truth(f"NOT ({p}) OR NOT ({q})", row)
    assert left is kleene_not(kleene_and(ORACLES[p](row), ORACLES[q](row)))


def test_truth_tables() -> None:
    """The full tables over TRUE, FALSE and NULL literals."""
    values: dict[str, Truth] = {"true": True, "false": False, "NULL::bool": None}
    for a_text, a in values.items():
        assert truth(f"NOT {a_text}", {}) is kleene_not(a)
        for b_text, b in values.items():
            assert truth(f"{a_text} AND {b_text}", {}) is kleene_and(a, b)
            assert truth(f"{a_text} OR {b_text}", {}) is kleene_or(a, b)
            assert truth(f"{a_text} IS DISTINCT FROM {b_text}", {}) is (a is not b)
            assert truth(f"{a_text} IS NOT DISTINCT FROM {b_text}", {}) is (a is b)
