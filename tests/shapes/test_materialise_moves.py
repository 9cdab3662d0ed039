"""The Python materialiser applies move-in and move-out events of subquery shapes."""

from __future__ import annotations

from typing import Any

from shapes.materialise import MaterialisedShape


def insert(key: str, tags: list[str], active: list[bool], **value: Any) -> dict[str, Any]:
    headers = {"operation": "insert", "tags": tags, "active_conditions": active}
    return {"key": key, "value": value, "headers": headers}


def event(kind: str, *patterns: tuple[int, str]) -> dict[str, Any]:
    items = [{"pos": pos, "value": value} for pos, value in patterns]
    return {"headers": {"event": kind, "patterns": items, "txids": [7]}}


def test_move_out_removes_the_rows_whose_slot_matches() -> None:
    shape = MaterialisedShape()
    shape.apply_all(
        [
            insert("a", ["h1"], [True], id="1"),
            insert("b", ["h2"], [True], id="2"),
            event("move-out", (0, "h1")),
        ]
    )
    assert set(shape.rows) == {"b"}


def test_a_row_stays_while_another_disjunct_holds() -> None:
    shape = MaterialisedShape()
    # x IN sq OR flag: two disjuncts, positions 0 and 1
    shape.apply_all(
        [
            insert("a", ["h1/", "/1"], [True, True], id="1"),
            insert("b", ["h1/", "/1"], [True, False], id="2"),
            event("move-out", (0, "h1")),
        ]
    )
    assert set(shape.rows) == {"a"}


def test_move_in_turns_a_position_back_on() -> None:
    shape = MaterialisedShape()
    # x IN sq1 AND y IN sq2: one disjunct with two positions
    shape.apply_all(
        [
            insert("a", ["h1/g1"], [True, True], id="1"),
            event("move-out", (1, "g1")),
        ]
    )
    assert shape.rows == {}
    shape.apply_all(
        [
            insert("c", ["h1/g2"], [True, False], id="3"),
            event("move-in", (1, "g2")),
            insert("d", ["h1/g3"], [True, True], id="4"),
            event("move-out", (0, "h9")),
        ]
    )
    assert set(shape.rows) == {"c", "d"}


def test_removed_tags_and_deletes_forget_the_index() -> None:
    shape = MaterialisedShape()
    shape.apply(insert("a", ["h1"], [True], id="1"))
    update = {
        "key": "a",
        "value": {"id": "1"},
        "headers": {
            "operation": "update",
            "tags": ["h2"],
            "removed_tags": ["h1"],
            "active_conditions": [True],
        },
    }
    shape.apply(update)
    shape.apply(event("move-out", (0, "h1")))
    assert set(shape.rows) == {"a"}
    shape.apply({"key": "a", "value": {"id": "1"}, "headers": {"operation": "delete"}})
    shape.apply(insert("a", ["h3"], [True], id="1"))
    shape.apply(event("move-out", (0, "h2")))
    assert set(shape.rows) == {"a"}
