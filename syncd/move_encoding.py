"""How a subquery shape's transactions and moves become log entries.

Layer: ``syncd``. :class:`MoveEncoder` converts held row changes with a given set of views
(``shapes.convert_subquery``) and numbers and serialises them, and builds the ``move-in`` and
``move-out`` events: which moved values take rows out or bring them in (swapped for a
``NOT IN`` subquery), their patterns, and the views as JSON-able texts for the view journal.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from shapes import messages
from shapes.convert import Entry
from shapes.convert_subquery import (
    SubqueryView,
    convert_delete,
    convert_insert,
    convert_update,
    encode_insert,
)
from shapes.where import Where
from syncd.materializer import Move, RawChange, ValueKey
from syncd.shape_state import ShapeState
from syncd.storage import TransactionEntries
from syncd.view_journal import Texts

Views = Sequence[AbstractSet[ValueKey]]


class MoveEncoder:
    """Log entries and events of one subquery shape."""

    __slots__ = ("negated", "relation", "shape", "view", "where")

    def __init__(self, shape: ShapeState, where: Where, view: SubqueryView) -> None:
        self.shape = shape
        self.relation = shape.definition.relation
        self.where = where
        self.view = view
        self.negated = frozenset(
            p.dependency for p in where.positions if p.dependency is not None and p.negated
        )

    def encode_changes(
        self, lsn: int, xid: int, changes: Sequence[RawChange], views: Views
    ) -> TransactionEntries:
        """A transaction's changes as the shape's log entries, judged with ``views`` (the
        last one marked as the transaction's last)."""
        out = TransactionEntries()
        if not changes:
            return out
        schema, table = self.relation
        encoder = _change_encoder(schema, table, lsn, xid)
        view = self.view
        if len(changes) == 1 and changes[0].kind == "insert":  # the common case, marked at once
            change = changes[0]
            assert change.new is not None
            data = encode_insert(view, change.new, views, encoder, change.op, last=True)
            if data is not None:
                out.append(change.op, data)
            return out
        encode, append = encoder.encode, out.append
        operation: messages.Operation = "insert"
        for change in changes:
            if change.kind == "insert":
                assert change.new is not None
                data = encode_insert(view, change.new, views, encoder, change.op)
                if data is not None:
                    operation = "insert"
                    append(change.op, data)
                continue
            for entry in self.convert(change, views):
                at = change.op + entry.split
                operation = entry.operation
                append(
                    at,
                    encode(operation, entry.key, entry.value, at, entry.old_value, entry.headers),
                )
        if out.datas:
            out.datas[-1] = encoder.mark_last(out.datas[-1], operation, out.ops[-1])
        return out

    def convert(self, change: RawChange, views: Views) -> list[Entry]:
        view = self.view
        if change.kind == "insert":
            assert change.new is not None
            return convert_insert(view, change.new, views)
        if change.kind == "delete":
            assert change.old is not None
            return convert_delete(view, change.old, change.old_full, views)
        assert change.new is not None
        return convert_update(view, change.old, change.new, views)

    def patterns(self, values: dict[int, frozenset[ValueKey]]) -> list[dict[str, object]]:
        patterns: list[dict[str, object]] = []
        for k, moved in sorted(values.items()):
            patterns.extend(self.where.patterns(k, sorted(moved, key=repr), self.view.tag_prefix))
        return patterns

    def outer_moves(
        self, moves: dict[int, Move]
    ) -> tuple[dict[int, frozenset[ValueKey]], dict[int, frozenset[ValueKey]]]:
        """Which moved values bring rows into the shape and which take rows out: the values
        that entered and left a set, swapped for a ``NOT IN`` subquery."""
        outer_in: dict[int, frozenset[ValueKey]] = {}
        outer_out: dict[int, frozenset[ValueKey]] = {}
        for k, (entered, left) in moves.items():
            if k in self.negated:
                entered, left = left, entered
            if entered:
                outer_in[k] = entered
            if left:
                outer_out[k] = left
        return outer_in, outer_out

    def null_flips(self, moves: dict[int, Move]) -> bool:
        """A NULL entered or left the set of a ``NOT IN`` subquery: that changes every row
        (``x NOT IN (..., NULL)`` is never true), which patterns cannot say."""
        return any(
            k in self.negated and any(has_null(v) for v in (*entered, *left))
            for k, (entered, left) in moves.items()
        )

    def move_out_event(
        self, left: dict[int, frozenset[ValueKey]], txids: list[int], before: Views
    ) -> bytes:
        """The ``move-out`` event for values that take rows out. For a ``NOT IN`` subquery these
        are values that entered its set; when the set was empty before, rows whose left side is
        NULL go too (``NULL NOT IN (<empty>)`` is true, ``NULL NOT IN (<v>)`` is not)."""
        patterns = self.patterns(left)
        for k, moved in sorted(left.items()):
            if k in self.negated and not before[k]:
                ordered = sorted(moved, key=repr)
                patterns.extend(self.where.null_patterns(k, ordered, self.view.tag_prefix))
        unique = {(p["pos"], p["value"]): p for p in patterns}
        return messages.move_event("move-out", list(unique.values()), txids)

    def texts(self, views: Views) -> Texts:
        texts: Texts = []
        for k, values in enumerate(views):
            items: list[Any] = [
                None if v is None else list(self.where.value_texts(k, v)) for v in values
            ]
            texts.append(sorted(items, key=repr))
        return texts


@functools.lru_cache(maxsize=16)
def _change_encoder(schema: str, table: str, lsn: int, xid: int) -> messages.ChangeEncoder:
    """One encoder per relation and transaction, shared by every shape the transaction
    touches (its constant parts are encoded once)."""
    return messages.ChangeEncoder([schema, table], lsn, xid)


def has_null(value: ValueKey) -> bool:
    """A value that is NULL or, in the row form, has a NULL part."""
    return value is None or (isinstance(value, tuple) and None in value)


def _is_true(value: object) -> bool:
    return value is True or value in ("t", "true")
