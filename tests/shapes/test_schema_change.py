"""Which schema changes invalidate which shapes."""

from __future__ import annotations

from shapes.schema_change import diff_columns, is_affected

BEFORE = {"id": (23, -1), "title": (25, -1), "n": (23, -1)}


def test_added_column_spares_shapes_that_list_their_columns() -> None:
    diff = diff_columns(BEFORE, {**BEFORE, "extra": (25, -1)})
    assert diff.added == {"extra"} and not diff.removed and not diff.retyped
    assert not is_affected(diff, False, ["id", "title"], [])
    assert is_affected(diff, True, ["id", "title", "n"], [])


def test_dropped_selected_or_filtered_column_invalidates() -> None:
    after = {"id": (23, -1), "title": (25, -1)}
    diff = diff_columns(BEFORE, after)
    assert diff.removed == {"n"}
    assert is_affected(diff, False, ["id", "n"], [])
    assert is_affected(diff, False, ["id", "title"], ["n"])
    assert not is_affected(diff, False, ["id", "title"], ["title"])


def test_rename_and_retype() -> None:
    renamed = {"id": (23, -1), "name": (25, -1), "n": (23, -1)}
    diff = diff_columns(BEFORE, renamed)
    assert diff.removed == {"title"} and diff.added == {"name"}
    assert is_affected(diff, False, ["id", "title"], [])
    retyped = {**BEFORE, "n": (20, -1)}
    assert is_affected(diff_columns(BEFORE, retyped), False, ["id", "n"], [])
    assert not is_affected(diff_columns(BEFORE, retyped), False, ["id", "title"], [])


def test_unknown_modifier_is_not_a_change() -> None:
    assert diff_columns({"v": (1043, 36)}, {"v": (1043, -1)}).empty
    assert not diff_columns({"v": (1043, 36)}, {"v": (1043, 68)}).empty
