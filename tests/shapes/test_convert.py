"""Row changes become shape log entries by the protocol's rules (``docs/protocol.md``)."""

from __future__ import annotations

import decimal
from collections.abc import Callable

import pytest

from shapes.convert import (
    Entry,
    ShapeView,
    WhereEvaluationFailed,
    convert_delete,
    convert_insert,
    convert_update,
    insert_parts,
)
from shapes.messages import Row, relation_key_prefix, row_key


class Above:
    """``n > limit``, evaluated on text values."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def matches(self, row: Row) -> bool:
        value = row.get("n")
        return value is not None and int(value) > self.limit


def view(
    *, where: Above | None = None, full: bool = False, selected: tuple[str, ...] | None = None
):
    return ShapeView(
        relation=("public", "items"),
        key_prefix=relation_key_prefix("public", "items"),
        key_columns=("id",),
        selected=selected,
        where=where,
        replica_full=full,
    )


def test_keys_quote_and_escape() -> None:
    prefix = relation_key_prefix('we"ird', "t/x")
    assert prefix == '"we""ird"."t/x"'
    assert row_key(prefix, {"a": "1/2", "b": None}, ("a", "b")) == '"we""ird"."t/x"/"1//2"/_'


def test_insert_respects_where_and_columns() -> None:
    row = {"id": "1", "n": "5", "title": "x"}
    assert convert_insert(view(where=Above(10)), row) == []
    [entry] = convert_insert(view(selected=("id", "n")), row)
    assert entry.operation == "insert"
    assert entry.key == '"public"."items"/"1"'
    assert entry.value == {"id": "1", "n": "5"}


def test_update_sends_key_and_changed_columns_by_default() -> None:
    old = {"id": "1", "n": "5", "title": "x"}
    new = {"id": "1", "n": "6", "title": "x"}
    [entry] = convert_update(view(), old, new)
    assert (entry.operation, entry.value, entry.old_value) == (
        "update",
        {"id": "1", "n": "6"},
        None,
    )


def test_update_with_replica_full_sends_row_and_old_values() -> None:
    old = {"id": "1", "n": "5", "title": "x"}
    new = {"id": "1", "n": "6", "title": "x"}
    [entry] = convert_update(view(full=True), old, new)
    assert entry.value == new
    assert entry.old_value == {"n": "5"}


def test_update_of_unselected_column_is_dropped() -> None:
    old = {"id": "1", "n": "5", "title": "x"}
    new = {"id": "1", "n": "5", "title": "y"}
    assert convert_update(view(selected=("id", "n")), old, new) == []


def test_moves_in_and_out_of_the_where_clause() -> None:
    shape = view(where=Above(10))
    low = {"id": "1", "n": "5"}
    high = {"id": "1", "n": "50"}
    [moved_in] = convert_update(shape, low, high)
    assert (moved_in.operation, moved_in.value) == ("insert", high)
    [moved_out] = convert_update(shape, high, low)
    assert (moved_out.operation, moved_out.value) == ("delete", {"id": "1"})
    assert convert_update(shape, low, {"id": "1", "n": "6"}) == []


def test_primary_key_change_becomes_delete_then_insert() -> None:
    old = {"id": "1", "n": "5"}
    new = {"id": "2", "n": "5"}
    delete, insert = convert_update(view(), old, new)
    assert (delete.operation, delete.key, delete.split) == ("delete", '"public"."items"/"1"', 0)
    assert delete.headers == {"key_change_to": '"public"."items"/"2"'}
    assert (insert.operation, insert.key, insert.split) == ("insert", '"public"."items"/"2"', 1)
    assert insert.headers == {"key_change_from": '"public"."items"/"1"'}


def test_delete_carries_key_or_full_row() -> None:
    old = {"id": "1", "n": "50", "title": "x"}
    [entry] = convert_delete(view(), old, True)
    assert entry.value == {"id": "1"}
    [entry] = convert_delete(view(full=True), old, True)
    assert entry.value == old
    assert convert_delete(view(where=Above(100)), old, True) == []


# --- the full output of each operation and replica mode -------------------------------------

KEY1 = '"public"."items"/"1"'
KEY2 = '"public"."items"/"2"'
OLD = {"id": "1", "n": "5", "title": "x", "note": "a"}


def test_insert_full_output() -> None:
    row = {"id": "1", "n": "50", "title": "x"}
    for full in (False, True):
        assert convert_insert(view(full=full), row) == [Entry("insert", KEY1, row)]
        assert convert_insert(view(full=full, selected=("id", "title")), row) == [
            Entry("insert", KEY1, {"id": "1", "title": "x"})
        ]
        assert convert_insert(view(full=full, where=Above(10)), row) == [Entry("insert", KEY1, row)]
        assert convert_insert(view(full=full, where=Above(50)), row) == []


def test_update_full_output_default_replica() -> None:
    new = dict(OLD, n="6", title="y")
    assert convert_update(view(), OLD, new) == [
        Entry("update", KEY1, {"id": "1", "n": "6", "title": "y"})
    ]
    assert convert_update(view(selected=("id", "n", "note")), OLD, new) == [
        Entry("update", KEY1, {"id": "1", "n": "6"})
    ]


def test_update_full_output_full_replica() -> None:
    new = dict(OLD, n="6", title="y")
    assert convert_update(view(full=True), OLD, new) == [
        Entry("update", KEY1, new, old_value={"n": "5", "title": "x"})
    ]
    assert convert_update(view(full=True, selected=("id", "n", "note")), OLD, new) == [
        Entry("update", KEY1, {"id": "1", "n": "6", "note": "a"}, old_value={"n": "5"})
    ]


def test_update_without_old_row_sends_the_whole_new_row() -> None:
    """Postgres sent no old row (replica identity DEFAULT): the new row is all there is."""
    new = dict(OLD, n="6")
    for full in (False, True):
        assert convert_update(view(full=full), None, new) == [Entry("update", KEY1, new)]
        assert convert_update(view(full=full, selected=("id", "n")), None, new) == [
            Entry("update", KEY1, {"id": "1", "n": "6"})
        ]
        assert convert_update(view(full=full, where=Above(5)), None, new) == [
            Entry("update", KEY1, new)
        ]
        assert convert_update(view(full=full, where=Above(6)), None, new) == []


def test_update_moving_in_and_out_full_output() -> None:
    low, high = dict(OLD, n="5"), dict(OLD, n="50")
    for full in (False, True):
        shape = view(full=full, where=Above(10))
        assert convert_update(shape, low, high) == [Entry("insert", KEY1, high)]
        out_value = high if full else {"id": "1"}  # the old row: the one that leaves
        assert convert_update(shape, high, low) == [Entry("delete", KEY1, out_value)]
        assert convert_update(shape, low, dict(low, n="6")) == []


def test_key_change_full_output() -> None:
    new = dict(OLD, id="2", n="6")
    for full in (False, True):
        old_value = OLD if full else {"id": "1"}
        assert convert_update(view(full=full), OLD, new) == [
            Entry("delete", KEY1, old_value, headers={"key_change_to": KEY2}),
            Entry("insert", KEY2, new, headers={"key_change_from": KEY1}, split=1),
        ]
    assert convert_update(view(full=True, selected=("id", "n")), OLD, new) == [
        Entry("delete", KEY1, {"id": "1", "n": "5"}, headers={"key_change_to": KEY2}),
        Entry("insert", KEY2, {"id": "2", "n": "6"}, headers={"key_change_from": KEY1}, split=1),
    ]


def test_key_change_moving_out_is_a_plain_delete() -> None:
    old, new = dict(OLD, n="50"), dict(OLD, id="2", n="5")
    assert convert_update(view(where=Above(10)), old, new) == [Entry("delete", KEY1, {"id": "1"})]
    assert convert_update(view(where=Above(10)), new, old) == [
        Entry("insert", KEY1, dict(OLD, n="50"))
    ]


def test_update_of_nothing_selected_is_dropped_in_every_mode() -> None:
    new = dict(OLD, note="b")
    for full in (False, True):
        assert convert_update(view(full=full, selected=("id", "n")), OLD, new) == []
        assert convert_update(view(full=full), OLD, dict(OLD)) == []


def test_delete_full_output() -> None:
    key_only = {"id": "1"}
    assert convert_delete(view(), OLD, True) == [Entry("delete", KEY1, key_only)]
    assert convert_delete(view(full=True), OLD, True) == [Entry("delete", KEY1, OLD)]
    assert convert_delete(view(full=True, selected=("id", "n")), OLD, True) == [
        Entry("delete", KEY1, {"id": "1", "n": "5"})
    ]
    # only the replica identity's key columns came: the where clause cannot be judged
    for full in (False, True):
        assert convert_delete(view(full=full, where=Above(100)), key_only, False) == [
            Entry("delete", KEY1, key_only)
        ]
    assert convert_delete(view(full=True, where=Above(1)), OLD, True) == [
        Entry("delete", KEY1, OLD)
    ]
    assert convert_delete(view(full=True, where=Above(5)), OLD, True) == []


# --- a where clause that fails on a row ---------------------------------------------------------


class Failing:
    """A where clause whose evaluation raises ``error`` for rows with ``n == "bad"``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def matches(self, row: Row) -> bool:
        if row.get("n") == "bad":
            raise self.error
        return True


@pytest.mark.parametrize(
    "error",
    [
        ValueError("division by zero"),
        TypeError("tuple < int"),
        AttributeError("time"),
        decimal.InvalidOperation(),
        ZeroDivisionError(),
        RecursionError(),
    ],
)
def test_any_evaluation_failure_is_reported_as_such(error: Exception) -> None:
    shape = ShapeView(
        ("public", "items"), relation_key_prefix("public", "items"), ("id",), None, Failing(error)
    )
    bad, good = {"id": "1", "n": "bad"}, {"id": "1", "n": "1"}
    calls: list[Callable[[], object]] = [
        lambda: convert_insert(shape, bad),
        lambda: insert_parts(shape, bad),
        lambda: convert_update(shape, good, bad),
        lambda: convert_update(shape, bad, good),
        lambda: convert_update(shape, None, bad),
        lambda: convert_delete(shape, bad, True),
    ]
    for call in calls:
        with pytest.raises(WhereEvaluationFailed) as info:
            call()
        assert info.value.cause is error
        assert info.value.relation == ("public", "items")
        assert str(info.value) == (
            f"the where clause failed on a row of public.items: {type(error).__name__}"
        )
        assert "bad" not in str(info.value)
    assert convert_delete(shape, {"id": "1"}, False) == [Entry("delete", KEY1, {"id": "1"})]
