"""Folding a log into rows."""

from __future__ import annotations

from shapes.materialise import MaterialisedShape


def change(operation: str, key: str, **value: str) -> dict[str, object]:
    return {"headers": {"operation": operation}, "key": key, "value": value}


def test_fold_applies_changes_in_order() -> None:
    shape = MaterialisedShape()
    shape.apply_all(
        [
            change("insert", "a", id="1", t="x"),
            change("insert", "b", id="2", t="y"),
            change("update", "a", id="1", t="z"),
            change("delete", "b", id="2"),
            {"headers": {"control": "up-to-date"}},
        ]
    )
    assert shape.rows == {"a": {"id": "1", "t": "z"}}
    assert shape.up_to_date


def test_must_refetch_clears() -> None:
    shape = MaterialisedShape()
    shape.apply(change("insert", "a", id="1"))
    shape.apply({"headers": {"control": "must-refetch"}})
    assert shape.rows == {}
    assert not shape.up_to_date
