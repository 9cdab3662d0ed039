"""The queries of a subquery shape: its first snapshot and its move-ins.

Layer: ``syncd``. A query runs in its own ``REPEATABLE READ READ ONLY`` snapshot S: the rows that
match the shape's clause with the new views and (for a move-in) did not match with the old ones,
the subqueries tested against the views as array parameters, never as SQL subqueries, so that the
rows agree exactly with the sets the shape's log is judged with. After the rows it writes a mark
into the WAL (``pg_logical_emit_message``): once the replication stream has received it, every
transaction S contains has been received too. ``syncd.subquery_shape`` splices the result into
the log; the first snapshot's files and metadata are made durable here, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import psycopg
from psycopg.rows import TupleRow

from shapes import messages
from shapes.convert_subquery import SubqueryView
from shapes.where import Where
from shapes.xid import Snapshot
from syncd.materializer import ValueKey
from syncd.move_encoding import MoveEncoder
from syncd.shape_state import ShapeState
from syncd.snapshot import begin_snapshot, stream_rows

log = logging.getLogger("syncd.subquery")

Views = list[AbstractSet[ValueKey]]
Reading = Callable[
    [tuple[str, str]], AbstractAsyncContextManager[psycopg.AsyncConnection[TupleRow]]
]


@dataclass
class MoveInQuery:
    """A move-in (or initial) query in flight or done."""

    before: Views
    after: Views
    issued_at: int
    """How many held transactions there were when it was issued."""
    initial: bool
    snapshot: Snapshot | None = None
    wal_lsn: int = 0
    rows: list[bytes] | None = None
    task_done: bool = False


def is_true(value: object) -> bool:
    """A boolean select item as the connection returned it (text for a bool column's loader)."""
    return value is True or value in ("t", "true")


class QueryRunner:
    """Runs the queries of one subquery shape."""

    def __init__(
        self,
        shape: ShapeState,
        where: Where,
        view: SubqueryView,
        encoder: MoveEncoder,
        columns: Sequence[str],
        reading: Reading,
    ) -> None:
        self.shape = shape
        self.where = where
        self.view = view
        self.encoder = encoder
        self.columns = tuple(columns)
        self.reading = reading

    async def run(self, query: MoveInQuery) -> None:
        shape, where = self.shape, self.where
        after_params = where.view_params("a", query.after)
        conditions = where.views_position_sql("a")
        if query.initial:
            where_sql = where.views_sql("a")
            params: dict[str, object] = dict(after_params)
        else:
            # what the rows are judged with after the move-out event: the sets without the
            # values that left (with the values that entered, for a NOT IN subquery)
            base = [
                set(b) | set(a) if k in self.encoder.negated else set(b) & set(a)
                for k, (b, a) in enumerate(zip(query.before, query.after, strict=True))
            ]
            params = {**after_params, **where.view_params("b", base)}
            where_sql = (
                f"({where.views_sql('a')}) AND NOT COALESCE(({where.views_sql('b')}), false)"
            )
        rows: list[bytes] = []
        async with self.reading(shape.definition.relation) as conn:
            snapshot, wal_lsn = await begin_snapshot(conn)
            async for batch in stream_rows(
                conn, shape.table, self.columns, where_sql, params=params, extra=conditions
            ):
                lines = self._rows(batch, is_move_in=not query.initial)
                if query.initial:
                    shape.log.append_snapshot_rows(lines)
                    if shape.status == "gone":
                        return
                else:
                    rows.extend(lines)
            # A mark in the WAL after S: once the stream receives it, every transaction S
            # contains has been received too (try_splice's boundary).
            with contextlib.suppress(psycopg.Error):
                await conn.execute("SELECT pg_logical_emit_message(false, 'syncd', '')")
            await conn.execute("COMMIT")
        if query.initial:
            await self._make_initial_durable(query, snapshot, wal_lsn)
        query.snapshot, query.wal_lsn, query.rows = snapshot, wal_lsn, rows
        log.debug("shape %s: query done, %d rows", shape.handle, len(rows))

    async def _make_initial_durable(
        self, query: MoveInQuery, snapshot: Snapshot, wal_lsn: int
    ) -> None:
        """Finish the snapshot files and store the metadata of a ready shape, off the event
        loop (their fsyncs would stop replication). Until the splice the shape is not
        ready in memory; a restart in between restores it with its snapshot's filter."""
        shape = self.shape
        if shape.status == "gone":
            return
        end = messages.snapshot_end(snapshot.xmin, snapshot.xmax, snapshot.xip)
        await asyncio.to_thread(shape.log.finish_snapshot, end)
        shape.snapshot = snapshot
        shape.snapshot_lsn = wal_lsn
        shape.initial_views = self.encoder.texts(query.after)
        meta = {**shape.meta(), "status": "ready"}
        await asyncio.to_thread(shape.log.write_meta, meta)

    def _rows(self, batch: list[TupleRow], *, is_move_in: bool) -> list[bytes]:
        view = self.shape.view
        n = len(self.columns)
        relation = self.shape.relation_list
        lines = []
        for values in batch:
            row = dict(zip(self.columns, values[:n], strict=True))
            key = messages.row_key(view.key_prefix, row, view.key_columns)
            value = row if view.selected is None else {c: row[c] for c in self.shape.selected}
            headers: dict[str, object] = {
                "tags": self.view.where.tags(row, self.view.tag_prefix),
                "active_conditions": [is_true(v) for v in values[n:]],
            }
            if is_move_in:
                headers["is_move_in"] = True
            lines.append(messages.snapshot_row(relation, key, value, headers))
        return lines
