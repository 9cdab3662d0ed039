"""Move patterns select exactly the rows whose active condition a value's move flips.

``evaluate`` is held to Postgres by test_subquery_eval; here the patterns are held to
``evaluate``: when a value enters or leaves a dependency's view, the rows whose position turns
on or off are exactly those whose tag slot is among the value's patterns (plus, for a value
entering a ``NOT IN`` view, its NULL patterns).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from shapes.schema import Column
from shapes.subquery import ValueKey
from shapes.where import Where, parse_where

OUTER = {name: Column(name, "int4") for name in ("a", "b")}
INNER = {("public", "t"): {name: Column(name, "int8") for name in ("x", "y")}}
PREFIX = "stack/handle"

part = st.one_of(st.none(), st.integers(0, 2))
single_values = part
pair_values = st.tuples(part, part)


def _where(text: str) -> Where:
    return parse_where(text, OUTER, tables=INNER)


SINGLE = (_where("a IN (SELECT x FROM t)"), _where("a NOT IN (SELECT x FROM t)"))
PAIR = (_where("(a, b) IN (SELECT x, y FROM t)"), _where("(a, b) NOT IN (SELECT x, y FROM t)"))


def _row(value: Any, width: int) -> dict[str, str | None]:
    parts = (value,) if width == 1 else value
    return {
        name: None if part is None else str(part)
        for name, part in zip(("a", "b"), parts, strict=False)
    }


def _has_null(value: ValueKey | None) -> bool:
    return value is None or isinstance(value, tuple) and None in value


def _slots(patterns: list[dict[str, object]]) -> set[object]:
    return {pattern["value"] for pattern in patterns}


def _check(where: Where, width: int, rows: list[Any], view: set[Any], moved: Any) -> None:
    if _has_null(moved) or moved in view:
        return
    entered = view | {moved}
    negated = where.positions[0].negated
    hit = _slots(where.patterns(0, [moved], PREFIX))
    null_hit = _slots(where.null_patterns(0, [moved], PREFIX))
    for value in rows:
        row = _row(value, width)
        (slot,) = where.tags(row, PREFIX)
        before = where.evaluate(row, [view]).active_conditions[0]
        after = where.evaluate(row, [entered]).active_conditions[0]
        if negated:  # entering turns positions off: the patterns and the NULL patterns
            if before:
                assert (not after) == (slot in hit or slot in null_hit), (value, view, moved)
        else:  # entering turns positions on, leaving (entered -> view) turns them off
            assert (after and not before) == (slot in hit), (value, view, moved)
            assert slot not in null_hit or not after


@given(st.lists(single_values, max_size=6), st.sets(single_values, max_size=3), single_values)
def test_single_column_moves(rows: list[Any], view: set[Any], moved: Any) -> None:
    for where in SINGLE:
        _check(where, 1, rows, view, moved)


@given(st.lists(pair_values, max_size=6), st.sets(pair_values, max_size=3), pair_values)
def test_row_form_moves(rows: list[Any], view: set[Any], moved: Any) -> None:
    for where in PAIR:
        _check(where, 2, rows, view, moved)


def test_null_patterns_are_the_masked_values() -> None:
    where = PAIR[1]
    slots = _slots(where.null_patterns(0, [(1, 2)], PREFIX))
    expected = {
        where.tags({"a": a, "b": b}, PREFIX)[0] for a, b in [("1", None), (None, "2"), (None, None)]
    }
    assert slots == expected
    assert where.null_patterns(0, [(1, None)], PREFIX) == []
    single = SINGLE[1]
    (null_slot,) = _slots(single.null_patterns(0, [5, 6], PREFIX))
    assert null_slot == single.tags({"a": None}, PREFIX)[0]
