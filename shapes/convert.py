"""Turn a row change of a table into the log entries of one shape.

Layer: ``shapes`` (pure). Implements the protocol's rules (``docs/protocol.md``, "How a row
change becomes messages"): updates are judged against ``where`` with both the old and the new
row (old in + new out is a delete, old out + new in an insert), a primary-key change becomes a
delete and an insert, and ``replica`` decides whether updates and deletes carry whole rows or
only the key and the changed columns.

Evaluation failures. A ``where`` clause that cannot be evaluated on a row (Postgres would raise,
such as division by zero or a failing cast, or the evaluator itself fails) makes the conversion
raise :class:`WhereEvaluationFailed`, whatever the evaluator raised. The row is neither included
nor excluded: the caller retires the shape (its clients refetch), and the shape's new snapshot
query then decides as Postgres does, which fails with a 400 if Postgres rejects the row too.
That keeps a live shape equal to its ``SELECT`` or refused, and one row never stops replication.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from shapes.messages import Operation, Row, row_key, text_at, values_key


class Predicate(Protocol):
    """What conversion needs of a compiled ``where`` clause."""

    def matches(self, row: Row) -> bool: ...


class WhereEvaluationFailed(Exception):
    """The shape's ``where`` clause could not be evaluated on a row.

    The message names the relation and the kind of failure, never the row's values.
    """

    def __init__(self, relation: tuple[str, str], cause: BaseException) -> None:
        super().__init__(
            f"the where clause failed on a row of {relation[0]}.{relation[1]}: "
            f"{type(cause).__name__}"
        )
        self.relation = relation
        self.cause = cause


@dataclass(frozen=True, slots=True)
class ShapeView:
    """The parts of a shape that conversion needs, computed once per shape."""

    relation: tuple[str, str]
    key_prefix: str
    key_columns: tuple[str, ...]
    selected: tuple[str, ...] | None
    where: Predicate | None
    replica_full: bool = False


_ENTRY_FIELDS: Final = ("operation", "key", "value", "old_value", "headers", "split")


class Entry:
    """One log entry before it is numbered and serialised; its fields are not reassigned.

    ``split`` is 1 for the insert half of a primary-key change (op position + 1).

    A plain class rather than a frozen dataclass: one is made for every change a shape takes,
    and compiled, a frozen dataclass's generated ``__init__`` (interpreted, setting each field
    through ``object.__setattr__``) cost fifteen times what this one does.
    """

    __slots__ = _ENTRY_FIELDS

    def __init__(
        self,
        operation: Operation,
        key: str,
        value: Row,
        old_value: Row | None = None,
        headers: Mapping[str, object] | None = None,
        split: int = 0,
    ) -> None:
        self.operation: Final = operation
        self.key: Final = key
        self.value: Final = value
        self.old_value: Final = old_value
        self.headers: Final = headers
        self.split: Final = split

    def _fields(self) -> tuple[object, ...]:
        return (self.operation, self.key, self.value, self.old_value, self.headers, self.split)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Entry):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # equal by value, and the value is a dict

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={value!r}" for name, value in zip(_ENTRY_FIELDS, self._fields(), strict=True)
        )
        return f"Entry({fields})"


def _select(view: ShapeView, row: Row) -> Row:
    if view.selected is None:
        return row
    return {name: row.get(name) for name in view.selected if name in row}


def _matches(view: ShapeView, row: Row) -> bool:
    if view.where is None:
        return True
    try:
        return view.where.matches(row)
    except Exception as exc:  # any failure, the evaluator's own bugs included: see the docstring
        raise WhereEvaluationFailed(view.relation, exc) from exc


def _key_only(view: ShapeView, row: Row) -> dict[str, str | None]:
    return {name: row.get(name) for name in view.key_columns}


def convert_insert(view: ShapeView, new: Row) -> list[Entry]:
    """Entries for an inserted row (raises :class:`WhereEvaluationFailed`, as all of these)."""
    parts = insert_parts(view, new)
    if parts is None:
        return []
    return [Entry("insert", parts[0], parts[1])]


def insert_parts(view: ShapeView, new: Row) -> tuple[str, Row] | None:
    """``(key, value)`` of the one insert entry of :func:`convert_insert`, or ``None``.

    The replication hot path uses this to skip building an :class:`Entry`.
    """
    if view.where is not None and not _matches(view, new):
        return None
    return row_key(view.key_prefix, new, view.key_columns), _select(view, new)


def convert_delete(view: ShapeView, old: Row, old_is_full: bool) -> list[Entry]:
    """Entries for a deleted row; ``old`` may hold only the replica identity's key columns."""
    if old_is_full and not _matches(view, old):
        return []
    key = row_key(view.key_prefix, old, view.key_columns)
    value = _select(view, old) if view.replica_full and old_is_full else _key_only(view, old)
    return [Entry("delete", key, value)]


def convert_update(view: ShapeView, old: Row | None, new: Row) -> list[Entry]:
    """Entries for an updated row.

    ``old`` is the whole old row (replica identity FULL) or ``None`` when Postgres did not send
    it; ``new`` must already have unchanged TOAST values filled in from ``old``.
    """
    new_in = _matches(view, new)
    old_in = new_in if old is None else _matches(view, old)
    if not new_in and not old_in:
        return []
    if old is not None and old_in and not new_in:
        return convert_delete(view, old, True)
    if not old_in:
        return convert_insert(view, new)
    new_key = row_key(view.key_prefix, new, view.key_columns)
    if old is not None:
        old_key = row_key(view.key_prefix, old, view.key_columns)
        if old_key != new_key:
            return _key_change(view, old, new, old_key, new_key)
    return _in_place_update(view, old, new, new_key)


def takes_whole_rows(view: ShapeView) -> bool:
    """Whether the shape takes every row of its table with every column (no ``where``, no
    selection): its entries then follow from a change's values alone."""
    return view.where is None and view.selected is None


def key_changed(
    view: ShapeView, positions: Mapping[str, int], old: Sequence[object], new: Sequence[object]
) -> bool:
    """Whether an update changed the key columns of its row, given both rows' values by
    position (``positions``: each column's index)."""
    for column in view.key_columns:
        at = positions.get(column)
        if text_at(old, at) != text_at(new, at):
            return True
    return False


def whole_row_update(
    view: ShapeView,
    names: Sequence[str],
    positions: Mapping[str, int],
    old: Sequence[str | None],
    new: Sequence[str | None],
) -> tuple[str, Row | None, Row | None] | None:
    """``(key, value, old_value)`` of what :func:`convert_update` makes of an update, from the
    old and new rows' values by position, for a shape that :func:`takes_whole_rows`, when the
    update did not change the key (:func:`key_changed`). ``value`` is ``None`` where the entry
    carries the whole new row; the result is ``None`` when no column changed."""
    changed = [at for at, value in enumerate(new) if old[at] != value]
    if not changed:
        return None
    key = values_key(view.key_prefix, new, positions, view.key_columns)
    if view.replica_full:
        return key, None, {names[at]: old[at] for at in changed}
    value = _key_values(view, positions, new)
    for at in changed:
        value[names[at]] = new[at]
    return key, value, None


def whole_row_delete(
    view: ShapeView, positions: Mapping[str, int], old: Sequence[str | None], old_is_full: bool
) -> tuple[str, Row | None]:
    """``(key, value)`` of what :func:`convert_delete` makes of a delete, from the old row's
    values by position, for a shape that :func:`takes_whole_rows`; ``value`` is ``None`` where
    the entry carries the whole old row."""
    key = values_key(view.key_prefix, old, positions, view.key_columns)
    if view.replica_full and old_is_full:
        return key, None
    return key, _key_values(view, positions, old)


def _key_values(
    view: ShapeView, positions: Mapping[str, int], values: Sequence[object]
) -> dict[str, str | None]:
    """:func:`_key_only` of the row whose column ``c`` is ``values[positions[c]]``."""
    return {column: text_at(values, positions.get(column)) for column in view.key_columns}


def _key_change(view: ShapeView, old: Row, new: Row, old_key: str, new_key: str) -> list[Entry]:
    old_value = _select(view, old) if view.replica_full else _key_only(view, old)
    return [
        Entry("delete", old_key, old_value, headers={"key_change_to": new_key}),
        Entry("insert", new_key, _select(view, new), headers={"key_change_from": old_key}, split=1),
    ]


def _in_place_update(view: ShapeView, old: Row | None, new: Row, key: str) -> list[Entry]:
    selected = _select(view, new)
    if old is None:
        return [Entry("update", key, selected)]
    changed = [name for name, value in selected.items() if old.get(name) != value]
    if not changed:
        return []
    if view.replica_full:
        old_value = {name: old.get(name) for name in changed}
        return [Entry("update", key, selected, old_value=old_value)]
    value = _key_only(view, new)
    for name in changed:
        value[name] = selected[name]
    return [Entry("update", key, value)]
