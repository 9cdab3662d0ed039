"""Row changes become shape log entries by the protocol's rules (``protocol.md`` §7.5)."""

from __future__ import annotations

from shapes.convert import ShapeView, convert_delete, convert_insert, convert_update
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
