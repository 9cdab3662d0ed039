"""Initial snapshots of new shapes: many read in one transaction, sealed with shared flushes.

Layer: ``syncd``.

Theory of operation
===================

Batches. A new shape joins a queue once it is registered with the router (from then on it
buffers every transaction the stream decodes, see :mod:`syncd.snapshot`). A worker takes every
queued shape, up to :data:`MAX_BATCH`, and opens one ``REPEATABLE READ READ ONLY`` transaction
for all of them. The snapshot its first statement reads (``pg_current_snapshot()`` and the WAL
insert position) is the snapshot of each shape of the batch: each was registered before the
transaction began, which is all that the stitching rule needs.

Reading together. The shapes of a batch with the same table and columns are first probed with
one query (:func:`~syncd.snapshot.probe_rows_together`): a ``UNION ALL`` of one branch per
shape, each limited to :data:`FETCH_ROWS` + 1 rows and led by its branch's index, under a
savepoint. Each shape that fits is written from it. So a burst of small shapes costs three
round trips per batch and table: ``BEGIN`` with the snapshot query, the savepoint with the
probe, and ``COMMIT``.
A shape alone of its kind, a larger one (a full probe), and every shape of a probe that failed
(one bad clause fails the statement; the savepoint keeps the transaction) are then read one
after another, each with its own query (``stream_rows`` with ``probe``).

Large shapes. Rows come in fetches of :data:`FETCH_ROWS`. When a shape's first fetch is full,
the shapes of its batch not read yet go back to the front of the queue, where another worker
(up to ``workers`` at once) takes them in a new transaction: a large snapshot holds back the
small ones queued behind it by one fetch at most.

Failures. A failed query aborts the transaction. The shape whose rows it read fails: its
waiters see the error and the shape goes (after a schema change, its table is compared with the
catalog first). The shapes after it go back to the queue, for a new transaction. The shapes
before it keep their rows, which were read under the snapshot before the failure. When the
transaction cannot even begin (no connection), every shape of the batch fails.

Sealing. A shape whose rows are written is queued for sealing (:mod:`syncd.snapshot_seal`).
A sealing task (up to :data:`SEALERS` at once) takes all the queued shapes, writes their end
lines and ready metadata (into files made with the log: no allocation, page cache only, so on
the event loop, where a thread would wait for the interpreter lock between each of its many
small system calls), and then, on a thread, makes them durable together: with two ``syncfs()``
calls for a batch of :data:`~syncd.log_flush.GROUP_SYNC_MIN` or more, else file by file. The slower
the disk, the more shapes queue meanwhile, and the larger (and cheaper per shape) the batches.
Only then, back on the event loop, does each
shape become ready (its buffered transactions go to the log, its waiters are answered): a
client is never told that a snapshot is complete before a restart would find it so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg.rows import TupleRow

from shapes import messages
from shapes.xid import Snapshot
from syncd.errors import (
    DatabaseUnavailable,
    QueryFailed,
    RowsRejected,
    SchemaChanged,
    row_query_errors,
)
from syncd.flush_tracker import FlushTracker
from syncd.log_flush import GROUP_SYNC_MIN, GroupSync
from syncd.shape_state import Retire, ShapeState
from syncd.snapshot import begin_snapshot, probe_rows_together, stream_rows
from syncd.snapshot_seal import SnapshotSeal, make_seals_durable, write_seals

log = logging.getLogger("syncd.engine")

MAX_BATCH: Final = 64
"""Most shapes read in one snapshot transaction."""

SEALERS: Final = 2
"""Most seals running at once (each on its own thread)."""

PER_TURN: Final = 8
"""Shapes of a sealed batch handled per turn of the event loop, at each of its steps on it
(seals written, shapes made ready and their waiters woken): a batch of 64 must not make one
long turn that holds back the replication stream and live readers."""

FETCH_ROWS: Final = 2000
"""Rows per fetch of a snapshot query (a full first fetch marks a large shape)."""

Connection = psycopg.AsyncConnection[TupleRow]
_Sealing = tuple[ShapeState, SnapshotSeal, Snapshot, int]
"""A shape whose rows are written, its seal, its snapshot and the WAL position read with it."""


class SnapshotRunner:
    """Takes the snapshots of new shapes (module docstring)."""

    def __init__(
        self,
        *,
        connection: Callable[[], AbstractAsyncContextManager[Connection]],
        schema_changed: Callable[[tuple[str, str], SchemaChanged], Awaitable[None]],
        retire: Retire,
        flush: FlushTracker,
        spawn: Callable[[Any], None],
        workers: int,
    ) -> None:
        self._connection = connection
        self._schema_changed = schema_changed
        self._retire = retire
        self._flush = flush
        self._spawn = spawn
        self.max_workers = max(1, workers)
        """How many snapshot transactions may run at once (read at each new snapshot)."""
        self._queue: deque[ShapeState] = deque()
        self._workers = 0
        self._to_seal: list[_Sealing] = []
        self._sealers = 0
        self._group: GroupSync | None = None
        self.on_snapshot_done: Callable[[float], None] = lambda seconds: None
        """Told each new shape's seconds from its creation until it was ready (the metrics)."""

    def open(self, shapes_dir: Path) -> None:
        """Open the sealing's own descriptor of the shapes' filesystem (its ``syncfs()`` then
        sees every write-back error since its own previous call)."""
        self._group = GroupSync(shapes_dir, open_logs=0)

    def close(self) -> None:
        group, self._group = self._group, None
        if group is not None:
            group.close()

    def start(self, shape: ShapeState) -> None:
        """Queue the snapshot of a newly registered shape."""
        self._queue.append(shape)
        self._add_workers()

    def _add_workers(self) -> None:
        """One more worker for what was just queued, if the limit allows (a worker takes
        everything queued when it starts a batch, and ends once the queue is empty)."""
        if self._queue and self._workers < self.max_workers:
            self._workers += 1
            self._spawn(self._work())

    async def _work(self) -> None:
        try:
            while self._queue:
                batch: deque[ShapeState] = deque()
                while self._queue and len(batch) < MAX_BATCH:
                    shape = self._queue.popleft()
                    if shape.status != "gone":
                        batch.append(shape)
                if batch:
                    await self._read_batch(batch)
        finally:
            self._workers -= 1

    async def _read_batch(self, unread: deque[ShapeState]) -> None:
        """Read the rows of every shape in ``unread`` under one snapshot; seal each as its rows
        are written. Shapes handed back (behind a large one, or after a failed one) leave
        ``unread``."""
        current: ShapeState | None = None
        try:
            async with self._connection() as conn:
                with row_query_errors():
                    info, wal_lsn = await begin_snapshot(conn)
                with row_query_errors():
                    probed = await self._probe_together(conn, unread)
                # what was read together first: a large shape hands back the others only
                reordered = sorted(unread, key=lambda shape: shape not in probed)
                unread.clear()
                unread.extend(reordered)
                while unread:
                    current = unread.popleft()
                    if current.status == "gone":
                        continue
                    read = probed.pop(current, None)
                    if read is not None:
                        self._write_rows(current, *read)
                    elif current.definition.log == "full":
                        with row_query_errors():
                            await self._copy_rows(conn, current, unread)
                    if current.gone:  # retired while its rows were read
                        log.debug("snapshot of removed shape %s stopped", current.handle)
                        continue
                    self._seal(current, info, wal_lsn)
                current = None
                with row_query_errors():
                    await conn.execute("COMMIT")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if current is None and not unread:
                # The COMMIT of a read-only transaction whose rows are all read: nothing lost.
                log.debug("snapshot transaction ended with %r after its last shape", exc)
                return
            if current is None:  # before any shape was read: the batch fails together
                failed, unread = list(unread), deque()
            else:
                failed = [current]
            if isinstance(exc, SchemaChanged):
                relation = failed[0].definition.relation
                try:
                    await self._schema_changed(relation, exc)
                except Exception as recheck_failure:  # the shapes fail all the same
                    log.warning(
                        "could not compare %s.%s with the catalog: %r", *relation, recheck_failure
                    )
            for shape in failed:
                if shape.status == "gone":  # retired meanwhile: its files are gone
                    log.debug("snapshot of removed shape %s stopped: %r", shape.handle, exc)
                else:
                    self._failed(shape, exc)
            self._hand_back(unread)

    def _hand_back(self, unread: deque[ShapeState]) -> None:
        """Put the shapes of ``unread`` back at the front of the queue, in order."""
        if unread:
            self._queue.extendleft(reversed(unread))
            unread.clear()
            self._add_workers()

    async def _probe_together(
        self, conn: Connection, shapes: Sequence[ShapeState]
    ) -> dict[ShapeState, tuple[messages.SnapshotEncoder, list[TupleRow]]]:
        """The rows of the batch's small shapes (with their encoders), read a table at a time
        (module docstring); the shapes left out (alone of their kind, large, or of a failed
        query) are read one by one."""
        groups: dict[tuple[tuple[str, str], tuple[str, ...]], list[ShapeState]] = {}
        encoders: dict[ShapeState, messages.SnapshotEncoder] = {}
        for shape in shapes:
            if shape.status != "gone" and shape.definition.log == "full":
                encoders[shape] = encoder = self._encoder(shape)
                key = (shape.definition.relation, tuple(encoder.columns))
                groups.setdefault(key, []).append(shape)
        probed: dict[ShapeState, tuple[messages.SnapshotEncoder, list[TupleRow]]] = {}
        for (_relation, columns), members in groups.items():
            if len(members) < 2:
                continue
            wheres = [m.where.sql if m.where is not None else None for m in members]
            try:
                found = await probe_rows_together(
                    conn, members[0].table, columns, wheres, FETCH_ROWS, savepoint="syncd_probe"
                )
            except psycopg.Error as exc:  # one clause failed: each is read alone, fails alone
                log.debug("reading %d shapes together failed (%r)", len(members), exc)
                await conn.execute("ROLLBACK TO SAVEPOINT syncd_probe")
                continue
            for shape, rows in zip(members, found, strict=True):
                if len(rows) <= FETCH_ROWS:
                    probed[shape] = (encoders[shape], rows)
        return probed

    @staticmethod
    def _encoder(shape: ShapeState) -> messages.SnapshotEncoder:
        view = shape.view
        if view.selected is None:
            value_columns: Sequence[str] = sorted(set(shape.selected) | set(view.key_columns))
        else:
            value_columns = shape.selected
        return messages.SnapshotEncoder(
            shape.relation_list, view.key_prefix, value_columns, view.key_columns
        )

    async def _copy_rows(
        self, conn: Connection, shape: ShapeState, unread: deque[ShapeState]
    ) -> None:
        encoder = self._encoder(shape)
        where_sql = shape.where.sql if shape.where is not None else None
        batches: AsyncIterator[list[TupleRow]] = stream_rows(
            conn, shape.table, encoder.columns, where_sql, batch=FETCH_ROWS, probe=True
        )
        async for batch in batches:
            if len(batch) >= FETCH_ROWS:
                self._hand_back(unread)  # a large shape: the others need not wait for it
            if not self._write_rows(shape, encoder, batch):
                return

    @staticmethod
    def _write_rows(
        shape: ShapeState, encoder: messages.SnapshotEncoder, rows: list[TupleRow]
    ) -> bool:
        """Append ``rows`` to the shape's snapshot; False if the shape went meanwhile."""
        shape_log = shape.log
        closed = shape_log.snapshot_chunks_closed
        if rows:
            shape_log.append_snapshot_lines(encoder.encode(rows))
        if shape.status == "gone":
            return False
        if shape_log.snapshot_chunks_closed != closed:  # readers of the new chunk wait
            shape.notifier.notify()
        return True

    # -- sealing -------------------------------------------------------------------------------

    def _seal(self, shape: ShapeState, info: Snapshot, wal_lsn: int) -> None:
        end = messages.snapshot_end(info.xmin, info.xmax, info.xip)
        seal = shape.log.snapshot_seal(end, shape.ready_meta(info, wal_lsn))
        self._to_seal.append((shape, seal, info, wal_lsn))
        if self._sealers < SEALERS:
            self._sealers += 1
            self._spawn(self._seal_queued())

    async def _seal_queued(self) -> None:
        """Seal what is queued, batch after batch, until the queue is empty."""
        try:
            while self._to_seal:
                batch, self._to_seal = self._to_seal, []
                batch = [entry for entry in batch if entry[0].status != "gone"]
                if batch:
                    await self._seal_batch(batch)
        finally:
            self._sealers -= 1

    async def _seal_batch(
        self, batch: list[tuple[ShapeState, SnapshotSeal, Snapshot, int]]
    ) -> None:
        seals = [seal for _shape, seal, _info, _lsn in batch]
        group = self._group
        together = (
            group is not None
            and group.available
            and len(seals) >= GROUP_SYNC_MIN
            and all(seal.device == group.device for seal in seals)
        )
        syncfs = group.syncfs if together and group is not None else None
        try:
            # The last writes here (their files exist: page cache only), the fsyncs and renames
            # off the event loop: replication and readers go on meanwhile.
            for start in range(0, len(seals), PER_TURN):
                if start:
                    await asyncio.sleep(0)
                write_seals(seals[start : start + PER_TURN])
            await asyncio.to_thread(make_seals_durable, seals, syncfs)
        except Exception as exc:
            for shape, _seal, _info, _lsn in batch:
                if not shape.gone:
                    self._failed(shape, exc)
            return
        for done, (shape, seal, info, wal_lsn) in enumerate(batch, 1):
            if seal.dropped or shape.gone:
                continue
            shape.finish_snapshot(info, wal_lsn, meta_saved=True)
            self._flush.dirty.add(shape)
            self.on_snapshot_done(time.monotonic() - shape.created)
            log.debug(
                "snapshot of shape %s done (xmin %d, xmax %d)", shape.handle, info.xmin, info.xmax
            )
            if done % PER_TURN == 0:
                # the waiters of these shapes answer before more are woken
                await asyncio.sleep(0)

    def _failed(self, shape: ShapeState, exc: Exception) -> None:
        """The snapshot of a live shape failed: its waiters see ``exc`` and the shape goes."""
        if isinstance(exc, (SchemaChanged, RowsRejected, QueryFailed, DatabaseUnavailable)):
            log.warning("snapshot of shape %s failed: %s", shape.handle, exc)
        else:
            log.error("snapshot of shape %s failed", shape.handle, exc_info=exc)
        shape.fail(exc)
        self._retire(shape, "snapshot failed", cause="failed")
