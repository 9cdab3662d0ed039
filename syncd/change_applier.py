"""The open transaction: row changes routed to shapes, converted, buffered and committed.

Layer: ``syncd``.

Theory of operation
-------------------
Row changes are routed to the shapes they may affect (an index over ``column = constant``
conditions, see ``shapes.router``), converted to log entries per shape and held until the
transaction's ``Commit``. A shape whose where clause fails on a row is retired on its own
(:meth:`ChangeApplier._retire_failed`); no row stops the stream. Offsets are
``(commit LSN, op index)`` with the op index stepping by 2 per change, so a replay of the same
WAL after a crash produces the same offsets; a shape skips every transaction at or below its
log's latest offset.

An insert, the commonest change, is routed from its values by column position, and made a
mapping (a :class:`~shapes.where_eval.ParsedRow`) only if a shape needs one: to evaluate its
where clause, select its columns, or hand the row to a subquery shape or materialiser. A shape
that takes rows whole gets the key from the values and the value as a struct of the relation's
columns (``messages.value_struct``), which encodes as the mapping would. An update carrying
its whole old row (replica identity FULL, which syncd sets on the tables it publishes) is
routed from both rows' values the same way; for a shape that takes rows whole and a key that
did not change, the changed columns are found by position (``convert.whole_row_update``), and
only other shapes, subquery shapes and materialisers get the two rows as mappings. A delete's
old row goes the same way (``convert.whole_row_delete``).

Each change is serialised for every shape it reaches as it arrives (``messages.ChangeEncoder``);
at commit the last entry of each shape gets ``"last":true`` and each touched shape appends the
transaction to its log (written to the OS at once, so readers and waiting clients see it
immediately); the shape then counts as dirty for ``syncd.flush_tracker``. Shapes registered
while a transaction is open join the router at the next transaction boundary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import msgspec

from shapes import messages
from shapes.convert import (
    Entry,
    WhereEvaluationFailed,
    convert_delete,
    convert_update,
    insert_parts,
    key_changed,
    takes_whole_rows,
    whole_row_delete,
    whole_row_update,
)
from shapes.router import Router
from shapes.shape import CanonicalShape
from shapes.where_eval import ParsedRow
from syncd.flush_tracker import FlushTracker
from syncd.materializer import ChangeKind, RawChange
from syncd.pgoutput import messages as pg
from syncd.shape_state import Retire, ShapeState
from syncd.storage import TransactionEntries
from syncd.subquery_engine import SubqueryEngine

log = logging.getLogger("syncd.engine")

TableKey = tuple[str, str]
TextRow = dict[str, str | None]
"""A change's row: column texts. Built as a :class:`~shapes.where_eval.ParsedRow`, so that the
shapes it is tested against parse each value once."""


@dataclass(slots=True)
class Relation:
    """A relation as the last Relation message described it."""

    table: TableKey
    names: tuple[str, ...]
    types: tuple[tuple[int, int], ...]
    positions: dict[str, int] = field(init=False)
    """Each column's position in :attr:`names` (a row's values are routed before they are
    made a mapping)."""
    whole_row: type[msgspec.Struct] | None = field(init=False)
    """Made from an inserted row's values, encodes as its mapping (``None``: a column name
    msgspec cannot take): the value of the shapes that take every row whole."""

    def __post_init__(self) -> None:
        self.positions = {name: i for i, name in enumerate(self.names)}
        self.whole_row = messages.value_struct(self.names)

    def column_types(self) -> dict[str, tuple[int, int]]:
        return dict(zip(self.names, self.types, strict=True))


class _TxnBuffer:
    """One shape's entries of the open transaction, serialised as they arrive.

    The last one is still without ``"last":true``: :meth:`finish` adds it.
    """

    __slots__ = ("datas", "encoder", "entries", "operation", "ops")

    def __init__(self, encoder: messages.ChangeEncoder) -> None:
        self.encoder = encoder
        self.entries = TransactionEntries()
        self.ops = self.entries.ops
        """The entries' own lists, appended to directly (a method call less per row)."""
        self.datas = self.entries.datas
        self.operation: messages.Operation = "insert"
        """The operation of the last entry."""

    def finish(self) -> TransactionEntries:
        entries = self.entries
        datas = entries.datas
        datas[-1] = self.encoder.mark_last(datas[-1], self.operation, entries.ops[-1])
        return entries


def route(router: Router[ShapeState], shape: ShapeState) -> None:
    """Make ``shape`` reachable by the changes of its table."""
    router.add(shape, shape.definition.relation, shape.where, shape.table.by_name)


class ChangeApplier:
    """Applies Begin, Insert, Update, Delete and Commit to the shapes of the router."""

    def __init__(
        self,
        router: Router[ShapeState],
        flush: FlushTracker,
        retire: Retire,
        subqueries: SubqueryEngine | None = None,
    ) -> None:
        self._router = router
        self.subqueries = subqueries
        """Materialisers and subquery shapes: their changes are judged at the commit."""
        self._flush = flush
        self._retire = retire
        """Retires a shape for good (the engine's ``delete``)."""
        self.relations: dict[int, Relation] = {}
        self.pending: list[ShapeState] = []
        """Shapes registered during the open transaction; routed at its end."""
        self.in_txn = False
        self.txn_lsn = 0
        self.txn_xid = 0
        self._txn_op = 0
        self._txn_entries: dict[ShapeState, _TxnBuffer] = {}
        self._txn_encoders: dict[TableKey, messages.ChangeEncoder] = {}
        self.changes_applied = 0
        """Row changes of committed transactions applied so far (for the metrics)."""
        self.transactions_applied = 0

    def join(self, shape: ShapeState) -> None:
        """Route a new shape, at the next transaction boundary if one is open."""
        if self.in_txn:
            self.pending.append(shape)  # joins at the next transaction boundary
        else:
            route(self._router, shape)

    def forget(self, shape: ShapeState) -> None:
        """Drop what the open transaction holds for a retired shape."""
        self._txn_entries.pop(shape, None)
        if shape in self.pending:
            self.pending.remove(shape)

    def cut_off(self) -> None:
        """The open transaction was cut off by a disconnect: it will be sent again."""
        if self.subqueries is not None:
            self.subqueries.cut_off()
        if self.in_txn:
            self.in_txn = False
            self._txn_entries = {}
            self._txn_encoders = {}
            self._route_pending()

    def _route_pending(self) -> None:
        for shape in self.pending:
            if shape.status != "gone":
                route(self._router, shape)
        self.pending = []

    def on_begin(self, msg: pg.Begin) -> None:
        self.in_txn = True
        self.txn_lsn = msg.final_lsn
        self.txn_xid = msg.xid
        self._txn_op = 0
        self._txn_entries = {}
        self._txn_encoders = {}

    def _encoder(self, table: TableKey) -> messages.ChangeEncoder:
        encoder = self._txn_encoders.get(table)
        if encoder is None:
            encoder = messages.ChangeEncoder(list(table), self.txn_lsn, self.txn_xid)
            self._txn_encoders[table] = encoder
        return encoder

    def _buffer(self, shape: ShapeState, table: TableKey) -> _TxnBuffer:
        buffer = self._txn_entries.get(shape)
        if buffer is None:
            buffer = self._txn_entries[shape] = _TxnBuffer(self._encoder(table))
        return buffer

    def _add_entries(self, shape: ShapeState, table: TableKey, entries: list[Entry]) -> None:
        buffer = self._buffer(shape, table)
        encode = buffer.encoder.encode
        ops, datas = buffer.ops, buffer.datas
        op = self._txn_op
        for e in entries:
            at = op + e.split
            ops.append(at)
            datas.append(encode(e.operation, e.key, e.value, at, e.old_value, e.headers))
            buffer.operation = e.operation

    def _append_encoded(
        self,
        shape: ShapeState,
        table: TableKey,
        operation: messages.Operation,
        key: str,
        value: messages.Row | msgspec.Struct,
        op: int,
        old_value: messages.Row | None = None,
    ) -> None:
        """Encode one entry of ``shape`` at ``op`` into the transaction's buffer."""
        buffer = self._buffer(shape, table)
        buffer.ops.append(op)
        buffer.datas.append(buffer.encoder.encode(operation, key, value, op, old_value))
        buffer.operation = operation

    def on_insert(self, msg: pg.Insert) -> None:
        relation = self.relations[msg.oid]
        names, values = relation.names, msg.new
        if len(values) != len(names):
            raise ValueError(f"insert of {len(values)} columns into a {len(names)}-column table")
        table = relation.table
        shapes = self._router.affected_values(table, relation.positions, values)
        materialised = self._materialised(table)
        if not shapes and not materialised:
            self._txn_op += 2  # a row no shape or materialiser reads: no mapping made
            return
        # The row as a mapping, made only for what needs one (a where clause, selected
        # columns, a subquery shape, a materialiser).
        row: TextRow | None = None
        change: RawChange | None = None
        if materialised:
            row = _checked_row(names, values)
            change = self._to_materialisers(table, "insert", None, row, True)
        op = self._txn_op
        entries = self._txn_entries
        whole: msgspec.Struct | None = None  # the value of the shapes that take rows whole
        failed: list[tuple[ShapeState, Exception]] = []
        for shape in shapes:
            view = shape.view
            if shape.subquery:
                if row is None:
                    row = _checked_row(names, values)
                change = self._record(shape, change, "insert", None, row, True)
                continue
            key: str
            value: messages.Row | msgspec.Struct
            if takes_whole_rows(view) and relation.whole_row is not None:
                if whole is None:
                    whole = relation.whole_row(*values)
                key = messages.values_key(
                    view.key_prefix, values, relation.positions, view.key_columns
                )
                value = whole
            else:
                if row is None:
                    row = _checked_row(names, values)
                try:
                    parts = insert_parts(view, row)
                except Exception as exc:  # contained in this shape: see _retire_failed
                    failed.append((shape, exc))
                    continue
                if parts is None:
                    continue
                key, value = parts
            buffer = entries.get(shape)
            if buffer is None:
                buffer = self._buffer(shape, table)
            buffer.ops.append(op)
            buffer.datas.append(buffer.encoder.insert(key, value, op))
            buffer.operation = "insert"
        if failed:
            self._retire_failed(failed)
        self._txn_op += 2

    def on_update(self, msg: pg.Update) -> None:
        relation = self.relations[msg.oid]
        if msg.old_kind == "O" and msg.old is not None:
            self._update_with_old_row(relation, msg.old, msg.new)
            return
        # No old row (only its key, when the key changed, which conversion does not use): the
        # table's replica identity is not FULL (it was changed after syncd set it).
        new = _without_unchanged(relation.names, msg.new)
        change = self._to_materialisers(relation.table, "update", None, new, False)
        failed: list[tuple[ShapeState, Exception]] = []
        for shape in self._router.affected(relation.table, new):
            change = self._convert_rows(
                shape, relation.table, "update", None, new, False, change, failed
            )
        self._retire_failed(failed)
        self._txn_op += 2

    def _update_with_old_row(
        self, relation: Relation, old_values: pg.RowData, new_values: pg.RowData
    ) -> None:
        """An update that carries the whole old row (replica identity FULL, which syncd sets
        up): routed from both rows' values, and made mappings only for the shapes and
        materialisers that need them, as an insert is."""
        names = relation.names
        _check_width(old_values, names)
        new_values = _filled(names, new_values, old_values)
        table, positions = relation.table, relation.positions
        shapes = self._router.affected_values(table, positions, new_values)
        were_in = self._router.affected_values(table, positions, old_values)
        if were_in is not shapes and were_in:
            shapes = shapes | were_in if shapes else were_in
        materialised = self._materialised(table)
        if not shapes and not materialised:
            self._txn_op += 2
            return
        old: TextRow | None = None
        new: TextRow | None = None
        change: RawChange | None = None
        if materialised:
            old, new = _checked_row(names, old_values), _checked_row(names, new_values)
            change = self._to_materialisers(table, "update", old, new, True)
        op = self._txn_op
        whole: msgspec.Struct | None = None
        failed: list[tuple[ShapeState, Exception]] = []
        for shape in shapes:
            view = shape.view
            if (
                not shape.subquery
                and takes_whole_rows(view)
                and relation.whole_row is not None
                and not key_changed(view, positions, old_values, new_values)
            ):
                parts = whole_row_update(
                    view,
                    names,
                    positions,
                    old_values,  # type: ignore[arg-type]  # text mode: str or None
                    new_values,  # type: ignore[arg-type]
                )
                if parts is None:
                    continue
                key, changed, old_value = parts
                value: messages.Row | msgspec.Struct
                if changed is None:  # the whole new row
                    if whole is None:
                        whole = relation.whole_row(*new_values)
                    value = whole
                else:
                    value = changed
                self._append_encoded(shape, table, "update", key, value, op, old_value)
                continue
            if old is None or new is None:
                old, new = _checked_row(names, old_values), _checked_row(names, new_values)
            change = self._convert_rows(shape, table, "update", old, new, True, change, failed)
        if failed:
            self._retire_failed(failed)
        self._txn_op += 2

    def on_delete(self, msg: pg.Delete) -> None:
        relation = self.relations[msg.oid]
        names, old_values = relation.names, msg.old
        _check_width(old_values, names)
        full = msg.old_kind == "O"
        table, positions = relation.table, relation.positions
        shapes = self._router.affected_values(table, positions, old_values)
        materialised = self._materialised(table)
        if not shapes and not materialised:
            self._txn_op += 2
            return
        old: TextRow | None = None
        change: RawChange | None = None
        if materialised:
            old = _checked_row(names, old_values)
            change = self._to_materialisers(table, "delete", old, None, full)
        op = self._txn_op
        whole: msgspec.Struct | None = None
        failed: list[tuple[ShapeState, Exception]] = []
        for shape in shapes:
            view = shape.view
            if not shape.subquery and takes_whole_rows(view) and relation.whole_row is not None:
                key, kept = whole_row_delete(
                    view,
                    positions,
                    old_values,  # type: ignore[arg-type]  # text mode: str or None
                    full,
                )
                value: messages.Row | msgspec.Struct
                if kept is None:  # the whole old row
                    if whole is None:
                        whole = relation.whole_row(*old_values)
                    value = whole
                else:
                    value = kept
                self._append_encoded(shape, table, "delete", key, value, op)
                continue
            if old is None:
                old = _checked_row(names, old_values)
            change = self._convert_rows(shape, table, "delete", old, None, full, change, failed)
        if failed:
            self._retire_failed(failed)
        self._txn_op += 2

    def _convert_rows(
        self,
        shape: ShapeState,
        table: TableKey,
        kind: ChangeKind,
        old: TextRow | None,
        new: TextRow | None,
        full: bool,
        change: RawChange | None,
        failed: list[tuple[ShapeState, Exception]],
    ) -> RawChange | None:
        """An update (``new`` given) or a delete, as mappings, for one shape: recorded for a
        subquery shape, converted to entries for any other; a shape whose conversion raises is
        added to ``failed``. Returns the change as handed to subquery shapes, if made."""
        if shape.subquery:
            return self._record(shape, change, kind, old, new, full)
        try:
            if new is not None:
                entries = convert_update(shape.view, old, new)
            elif old is not None:
                entries = convert_delete(shape.view, old, full)
            else:
                raise ValueError("a change without a row")
        except Exception as exc:  # contained in this shape: see _retire_failed
            failed.append((shape, exc))
            return change
        if entries:
            self._add_entries(shape, table, entries)
        return change

    def _materialised(self, table: TableKey) -> bool:
        """Whether a materialiser (of subquery shapes) reads ``table``."""
        subqueries = self.subqueries
        return subqueries is not None and subqueries.router.has_table(table)

    def _to_materialisers(
        self,
        table: TableKey,
        kind: ChangeKind,
        old: TextRow | None,
        new: TextRow | None,
        full: bool,
    ) -> RawChange | None:
        """Hand the change to the materialisers that read ``table``; None when none does (the
        change is then only made if a subquery shape needs it: see :meth:`_record`)."""
        subqueries = self.subqueries
        if subqueries is None or not subqueries.router.has_table(table):
            return None
        change = RawChange(kind, old, new, full, self._txn_op)
        subqueries.on_change(table, change)
        return change

    def _record(
        self,
        shape: ShapeState,
        change: RawChange | None,
        kind: ChangeKind,
        old: TextRow | None,
        new: TextRow | None,
        full: bool,
    ) -> RawChange:
        """Give a subquery shape the change (made now if no materialiser needed it)."""
        if change is None:
            change = RawChange(kind, old, new, full, self._txn_op)
        if self.subqueries is not None:
            self.subqueries.record(shape, change)
        return change

    def _retire_failed(self, failed: list[tuple[ShapeState, Exception]]) -> None:
        """Retire the shapes whose conversion of the current change raised.

        The rule for rows a shape cannot decide (``shapes.convert``, "Evaluation failures"):
        the shape alone is retired, so its clients get a 409 and ask again, and the new shape's
        snapshot query decides as Postgres does (a 400 if Postgres rejects the row too). Every
        other shape, and replication, carry on; a replay of the same transaction after a restart
        finds the shape gone. Called after the loop over the routed shapes, because retiring a
        shape changes the router's sets.
        """
        for shape, exc in failed:
            cause = exc.cause if isinstance(exc, WhereEvaluationFailed) else exc
            log.warning(
                "shape %s (%s) retired: its where clause failed on a row (%s: %s)",
                shape.handle,
                describe(shape.definition),
                type(cause).__name__,
                cause,
            )
            self._retire(shape, "its where clause failed on a row", cause="failed")

    def on_commit(self, msg: pg.Commit) -> None:
        lsn, xid = self.txn_lsn, self.txn_xid
        dirty = self._flush.dirty
        for shape, buffer in self._txn_entries.items():
            if shape.status == "gone":
                continue
            if shape.commit(lsn, xid, buffer.finish()):
                dirty.add(shape)
        self._txn_entries = {}
        self._txn_encoders = {}
        self.in_txn = False
        if self.subqueries is not None:
            self.subqueries.on_commit(lsn, xid, self._txn_op)
        self.changes_applied += self._txn_op >> 1
        self.transactions_applied += 1
        self._flush.committed(lsn, msg.end_lsn, msg.commit_time)
        self._route_pending()

    def write_pieces(self) -> int:
        """Append each shape's entries of the open transaction but its latest, as a piece."""
        lsn, xid = self.txn_lsn, self.txn_xid
        written = 0
        for shape, buffer in self._txn_entries.items():
            if len(buffer.entries) < 2 or shape.status == "gone":
                continue
            piece = buffer.entries.pop_all_but_last()
            shape.commit(lsn, xid, piece, final=False)
            written += sum(map(len, piece.datas))
        return written

    def abandon_pieces(self) -> None:
        """The open transaction will not be completed: drop the pieces written of it."""
        if self.subqueries is not None:
            self.subqueries.cut_off()
        for shape in self._txn_entries:
            shape.abandon_pieces()
        self._txn_entries = {}
        self._txn_encoders = {}
        self.in_txn = False


def _checked_row(names: tuple[str, ...], values: pg.RowData) -> TextRow:
    """The row of ``values``, as many as ``names`` (the caller checked: cheaper than
    ``zip(..., strict=True)``). Text-mode pgoutput only sends str or None for inserts,
    deletes and full old rows."""
    return ParsedRow(zip(names, values))  # type: ignore[arg-type]  # noqa: B905


def _check_width(values: pg.RowData, names: tuple[str, ...]) -> None:
    if len(values) != len(names):
        raise ValueError(f"a row of {len(values)} columns for a {len(names)}-column table")


def _filled(names: tuple[str, ...], values: pg.RowData, old: pg.RowData) -> pg.RowData:
    """``values`` of an updated row with each unchanged TOAST value taken from the whole old
    row ``old`` (``values`` itself when none is)."""
    _check_width(values, names)
    unchanged = pg.UNCHANGED_TOAST  # looked up once, not once per column
    for value in values:
        if value is unchanged:
            return tuple(
                was if value is unchanged else value
                for value, was in zip(values, old)  # noqa: B905  # lengths checked
            )
    return values


def _without_unchanged(names: tuple[str, ...], values: pg.RowData) -> TextRow:
    """The new row of an update sent without its old row: an unchanged TOAST value, which
    nothing here can fill in, leaves its column out."""
    row: TextRow = ParsedRow()
    for name, value in zip(names, values, strict=True):
        if value is not pg.UNCHANGED_TOAST:
            row[name] = value  # type: ignore[assignment]
    return row


def describe(definition: CanonicalShape) -> str:
    """``schema.table where ...``, for log lines."""
    text = f"{definition.schema}.{definition.table}"
    if definition.where:
        text += f" where {definition.where}"
    return text
