"""The engine: shape registry, replication handler, snapshots and flush tracking.

Layer: ``syncd``.

Theory of operation
-------------------
``ReplicationStream`` hands every decoded pgoutput message to :meth:`Engine.on_message`, in
stream order, on the event loop. Row changes are routed to the shapes they may affect (an index
over ``column = constant`` conditions, see ``shapes.router``), converted to log entries per shape
and held until the transaction's ``Commit``. A shape whose where clause fails on a row is retired
on its own (:meth:`Engine._retire_failed`); no row stops the stream. Offsets are
``(commit LSN, op index)`` with the op index stepping by 2 per change, so a replay of the same
WAL after a crash produces the same offsets; a shape skips every transaction at or below its
log's latest offset.

Each change is serialised for every shape it reaches as it arrives (``messages.ChangeEncoder``);
at commit the last entry of each shape gets ``"last":true`` and each touched shape appends the
transaction to its log (written to the OS at once, so readers and waiting clients see it
immediately). Durability is batched: when the stream has drained its socket,
:meth:`Engine.on_idle` fsyncs the logs written since the last flush (at most every
``flush_interval``; a timer does it once the interval has passed, so a burst's tail does not wait
for the next idle call) and only then reports the last commit's end LSN as flushed to Postgres.
Many dirty logs are made durable with one ``syncfs()`` (``storage.GroupSync``). Shapes still
taking their snapshot hold their transactions in memory; the confirmed LSN never passes the
oldest of those, so a crash can only lose what Postgres will send again.

Large transactions (pgoutput streaming). The daemon asks for ``streaming`` (proto 2), so
Postgres sends any transaction whose decoded changes exceed ``logical_decoding_work_mem``
(64 MB by default) in Stream Start ... Stop blocks while it is still running. Those changes come
through :meth:`Engine.on_stream_change` with their raw pgoutput bytes and go, unapplied, to a
spool file per top-level xid (``<storage_dir>/spool/<xid>.bin``, ``syncd.spool``); relation
messages are spooled too and take effect at replay, in transaction order, as for Postgres' own
apply worker. Stream Abort deletes the spool (whole transaction) or cuts off one
subtransaction's changes (``ROLLBACK TO SAVEPOINT``; changes carry the xid of the
subtransaction that made them). Stream Commit is applied at the stream's next ``on_idle`` call,
which the stream makes at once: the spool is decoded again and replayed through the ordinary
change path with offsets ``(commit LSN, op)`` and the transaction's xid, and every few thousand
changes (fewer when they produce much output, aiming at ``_PIECE_BYTES``) the entries gathered so
far, except each shape's latest, are appended to the shape logs as a piece of an open transaction
(``ShapeLog.append_transaction(..., final=False)``): readers see nothing of it until the final
piece, which carries the ``"last":true`` entry. Memory therefore stays bounded by a piece, not
by the transaction. Transactions below ``logical_decoding_work_mem`` are not streamed and are
held in memory until their Commit as before, which bounds them by that setting (times the JSON
expansion and the number of shapes a change reaches); shapes still taking their snapshot hold
even a streamed transaction in memory.

Slot history. The shapes are only right while the replication slot continues the history they
were built from: a slot that was dropped and created again, moved ahead, or invalidated after
its WAL was removed has skipped transactions for good. ``<storage_dir>/slot.json``
(``syncd.slot_record``) names the slot and cluster and holds the highest position confirmed on
it; :meth:`Engine.on_idle` writes it durably before it lets the stream confirm a position, so a
continuing slot is never ahead of it. :meth:`Engine.open` and every replication session
(:meth:`Engine.on_slot`) compare the slot with the record (``syncd.replication.history_gap``);
on a break the engine logs an ERROR, retires every shape (clients get a 409 and take a new
snapshot, which is consistent with the new slot since it is taken after the slot was created)
and starts a new record at the new slot's position, from which the stream then reads.

Flush rules for streamed transactions. The confirmed LSN is the end of the last *applied*
commit; while any spool exists, keepalive positions are not confirmed either. So it never
passes the commit of a streamed transaction that has not been committed and applied, and pieces
written before a crash belong to a transaction Postgres will send again. After a reconnect or a
crash, Postgres sends every uncommitted streamed transaction again from its first block
(``first=True``): a new session (``on_session_start``) and a first block for a known xid drop the
old spool, and start-up deletes every spool (the xids are unknown to the new process). Shape-log
recovery cuts the pieces of a transaction whose final piece was never written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from shapes import messages
from shapes.convert import (
    Entry,
    WhereEvaluationFailed,
    convert_delete,
    convert_update,
    insert_parts,
)
from shapes.errors import InvalidRequest
from shapes.router import Router
from shapes.schema import Table
from shapes.schema_change import diff_columns, is_affected
from shapes.shape import CanonicalShape
from shapes.subset import Subset
from shapes.where import Where, parse_where
from shapes.xid import Snapshot
from syncd.catalog import PublicationManager, load_table
from syncd.errors import (
    DatabaseUnavailable,
    QueryFailed,
    RowsRejected,
    SchemaChanged,
    SlotConflict,
    row_query_errors,
)
from syncd.pgoutput import messages as pg
from syncd.pgoutput import parse_lsn
from syncd.pgoutput.decoder import PgoutputDecoder
from syncd.replication import SlotFound, history_gap
from syncd.shape_state import ShapeState, snapshot_from_meta
from syncd.slot_record import SlotRecord
from syncd.snapshot import DISPLAY_SETTINGS, begin_snapshot, stream_rows
from syncd.spool import TransactionSpool
from syncd.storage import GroupSync, ShapeLog, TransactionEntries
from syncd.subset import run_subset

log = logging.getLogger("syncd.engine")

TableKey = tuple[str, str]
TextRow = dict[str, str | None]

_PIECE_BYTES = 8 * 1024 * 1024
"""While a streamed transaction is replayed, aim at pieces of about this many bytes of entries."""
_PIECE_CHANGES = (16, 256, 8192)
"""Changes between pieces (and event-loop yields) of a replay: minimum, first, maximum."""
_SLOT_RECORD_INTERVAL = 0.2
"""Write the slot record (see ``syncd.slot_record``) at most this often while changes flow."""


@dataclass(frozen=True)
class EngineSettings:
    """What the engine needs to run (see ``syncd.config`` for the daemon's settings)."""

    conninfo: str
    storage_dir: Path
    slot: str = "syncd_slot"
    publication: str = "syncd_publication"
    chunk_bytes: int = 10 * 1024 * 1024
    flush_interval: float = 0.05
    pool_size: int = 8
    schema_check_interval: float = 30.0


@dataclass(slots=True)
class _Relation:
    table: TableKey
    names: tuple[str, ...]
    types: tuple[tuple[int, int], ...]

    def column_types(self) -> dict[str, tuple[int, int]]:
        return dict(zip(self.names, self.types, strict=True))


class _TxnBuffer:
    """One shape's entries of the open transaction, serialised as they arrive.

    The last one is still without ``"last":true``: :meth:`finish` adds it.
    """

    __slots__ = ("encoder", "entries", "operation")

    def __init__(self, encoder: messages.ChangeEncoder) -> None:
        self.encoder = encoder
        self.entries = TransactionEntries()
        self.operation: messages.Operation = "insert"
        """The operation of the last entry."""

    def finish(self) -> TransactionEntries:
        entries = self.entries
        datas = entries.datas
        datas[-1] = self.encoder.mark_last(datas[-1], self.operation, entries.ops[-1])
        return entries


class Engine:
    """Owns every shape and applies the replication stream to them."""

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.pool: AsyncConnectionPool[psycopg.AsyncConnection[TupleRow]] | None = None
        self.publications = PublicationManager(settings.publication)
        self.router: Router[ShapeState] = Router()
        self.shapes: dict[str, ShapeState] = {}
        self.by_definition: dict[CanonicalShape, ShapeState] = {}
        self.last_seen_lsn = 0
        self._tables: dict[TableKey, Table] = {}
        self._relations: dict[int, _Relation] = {}
        self._creating: dict[CanonicalShape, asyncio.Future[ShapeState]] = {}
        self._pending: list[ShapeState] = []
        self._snapshotting: set[ShapeState] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_handle_us = 0
        # the open transaction
        self._in_txn = False
        self._txn_lsn = 0
        self._txn_xid = 0
        self._txn_op = 0
        self._txn_entries: dict[ShapeState, _TxnBuffer] = {}
        self._txn_encoders: dict[TableKey, messages.ChangeEncoder] = {}
        # flush tracking
        self._dirty: set[ShapeState] = set()
        self._last_commit_end = 0
        self._durable_lsn = 0
        self._last_flush = 0.0
        self._flush_timer: asyncio.TimerHandle | None = None
        self._group_sync: GroupSync | None = None
        # the slot history the shapes follow (see syncd.slot_record)
        self._slot_record: SlotRecord | None = None
        self._slot_record_saved = 0.0
        # streamed transactions
        self._spools: dict[int, TransactionSpool] = {}
        self._spool: TransactionSpool | None = None
        """The spool of the open stream block."""
        self._stream_commits: list[pg.StreamCommit] = []
        """Stream Commits received and not applied yet (applied at the next ``on_idle``)."""
        self._replay_decoder = PgoutputDecoder()
        # Handlers by message type: row and schema changes (also replayed from spools), and the
        # transaction and stream boundaries that only arrive live.
        self._changes: dict[type, Callable[[Any], None]] = {
            pg.Insert: self._on_insert,
            pg.Update: self._on_update,
            pg.Delete: self._on_delete,
            pg.Relation: self._on_relation,
            pg.Truncate: self._on_truncate,
        }
        self._dispatch: dict[type, Callable[[Any], None]] = {
            **self._changes,
            pg.Begin: self._on_begin,
            pg.Commit: self._on_commit,
            pg.StreamStart: self._on_stream_start,
            pg.StreamStop: self._on_stream_stop,
            pg.StreamCommit: self._stream_commits.append,
            pg.StreamAbort: self._on_stream_abort,
        }

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def shapes_dir(self) -> Path:
        """Where shape logs live."""
        return self.settings.storage_dir / "shapes"

    @property
    def spool_dir(self) -> Path:
        """Where streamed transactions are spooled until they commit or abort."""
        return self.settings.storage_dir / "spool"

    @property
    def durable_lsn(self) -> int:
        """The LSN up to which every transaction is on disk (what Postgres is told, or will be
        at the stream's next idle call)."""
        return self._durable_lsn

    async def open(self) -> None:
        """Connect, make sure the publication and slot exist, restore shapes from disk."""
        self.shapes_dir.mkdir(parents=True, exist_ok=True)
        # Postgres sends every uncommitted streamed transaction again, from its first block.
        shutil.rmtree(self.spool_dir, ignore_errors=True)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._group_sync = GroupSync(self.shapes_dir)
        self.pool = AsyncConnectionPool(
            self.settings.conninfo,
            min_size=1,
            max_size=self.settings.pool_size,
            kwargs={"autocommit": True},
            configure=_configure_connection,
            open=False,
        )
        await self.pool.open(wait=True, timeout=30)
        async with self.pool.connection() as conn:
            created_publication = await self.publications.ensure_publication(conn)
            slot = await self._ensure_slot(conn)
        self._slot_record = SlotRecord.load(self.settings.storage_dir)
        if created_publication or (slot.created and self._slot_record is None):
            self._purge_all_shapes("a new replication slot or publication was created")
        if not self._check_slot(slot):
            self._save_slot_record(self._slot_record or SlotRecord(slot.name, slot.confirmed_lsn))
        await self._restore_shapes()
        self._spawn(self._reconcile_forever())

    async def _ensure_slot(self, conn: psycopg.AsyncConnection[TupleRow]) -> SlotFound:
        """The slot (created if missing) as found; refuses another database's slot."""
        name = self.settings.slot
        wal_status = "wal_status" if conn.info.server_version >= 130000 else "NULL"
        query = (
            "SELECT confirmed_flush_lsn::text, restart_lsn::text, database::text, plugin::text,"
            " (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
            f" ELSE pg_current_wal_lsn() END)::text, {wal_status}::text"
            " FROM pg_replication_slots WHERE slot_name = %s"
        )
        row = await (await conn.execute(query, (name,))).fetchone()
        created = row is None
        if row is None:
            await conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))
            log.info("created replication slot %s", name)
            row = await (await conn.execute(query, (name,))).fetchone()
            assert row is not None
        confirmed, restart, database, plugin, wal_end, status = row
        if database != conn.info.dbname or plugin != "pgoutput":
            raise SlotConflict(
                f"replication slot {name} belongs to database {database} "
                f"(plugin {plugin}); give this syncd its own slot name (SYNCD_SLOT)"
            )
        if not created:
            log.info("replication slot %s exists, confirmed up to %s", name, confirmed)
        return SlotFound(
            name=name,
            confirmed_lsn=parse_lsn(confirmed) if confirmed else 0,
            restart_lsn=parse_lsn(restart) if restart else None,
            wal_status=status,
            wal_end=parse_lsn(wal_end),
            created=created,
            # The stream drops and recreates a lost slot; its shapes can go now.
            lost="wal_status is 'lost': the WAL it needed was removed"
            if status == "lost"
            else None,
        )

    # -- slot history --------------------------------------------------------------------------

    def on_slot(self, slot: SlotFound) -> bool:
        """The replication stream found ``slot`` at a session start; ``True`` when its history
        is broken and every shape has been invalidated (the stream then starts over)."""
        return self._check_slot(slot)

    def _check_slot(self, slot: SlotFound) -> bool:
        """Compare ``slot`` with the stored record; on a broken history invalidate every shape
        and start a new record at the slot's position. ``True`` when it was broken."""
        record = self._slot_record
        gap = history_gap(
            slot,
            record.confirmed_lsn if record is not None else None,
            system_id=record.system_id if record is not None else None,
            slot_name=record.slot if record is not None else None,
        )
        if gap is None:
            if record is not None and record.system_id is None and slot.system_id is not None:
                self._save_slot_record(replace(record, system_id=slot.system_id))
            return False
        log.error(
            "replication slot %s: its history is broken, changes committed in between were "
            "lost: %s; invalidating all %d shapes (clients must refetch)",
            slot.name,
            gap,
            sum(1 for _ in self.shapes_dir.iterdir()),
        )
        self._invalidate_all_shapes(f"the replication slot's history is broken: {gap}")
        self._durable_lsn = self._last_commit_end = slot.confirmed_lsn
        self.last_seen_lsn = slot.confirmed_lsn
        self._save_slot_record(SlotRecord(slot.name, slot.confirmed_lsn, slot.system_id))
        return True

    def _invalidate_all_shapes(self, reason: str) -> None:
        """Retire every shape (clients get a 409 and take a new snapshot) and drop whatever
        the engine holds of the open transaction and spooled ones."""
        self.on_session_start()
        for shape in list(self.shapes.values()):
            self.delete(shape, reason)
        self._purge_all_shapes(reason)
        self._dirty.clear()
        self._tables.clear()

    def _save_slot_record(self, record: SlotRecord) -> None:
        record.save(self.settings.storage_dir)
        self._slot_record = record
        self._slot_record_saved = time.monotonic()

    def _confirmable(self, lsn: int) -> int:
        """``lsn``, once the slot record says so durably; until then the record's position.

        The record is written (and fsynced, on the event loop: it is a few bytes, and another
        history must never be able to overwrite it) at most every ``_SLOT_RECORD_INTERVAL``;
        the stream asks again within its ``idle_interval``.
        """
        record = self._slot_record
        if record is None or lsn <= record.confirmed_lsn:
            return lsn
        if time.monotonic() - self._slot_record_saved < _SLOT_RECORD_INTERVAL:
            return record.confirmed_lsn
        self._save_slot_record(record.advanced(lsn))
        return lsn

    async def close(self) -> None:
        """Flush logs and close connections; shapes stay on disk."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._flush_dirty()
        self._drop_spools()
        if self._group_sync is not None:
            self._group_sync.close()
            self._group_sync = None
        if self.pool is not None:
            await self.pool.close()

    def _purge_all_shapes(self, reason: str) -> None:
        entries = list(self.shapes_dir.iterdir())
        if entries:
            log.warning("discarding %d stored shapes: %s", len(entries), reason)
        for entry in entries:
            shutil.rmtree(entry, ignore_errors=True)

    async def _restore_shapes(self) -> None:
        restored = 0
        for directory in sorted(self.shapes_dir.iterdir()):
            shape = await self._restore_shape(directory)
            if shape is None:
                shutil.rmtree(directory, ignore_errors=True)
                continue
            self._register(shape)
            restored += 1
        log.info("restored %d shapes from %s", restored, self.shapes_dir)

    async def _restore_shape(self, directory: Path) -> ShapeState | None:
        try:
            shape_log = ShapeLog.open(directory, self.settings.chunk_bytes)
            meta = shape_log.read_meta()
        except Exception:  # a damaged directory is discarded, never fatal
            log.exception("cannot open stored shape %s; discarding it", directory.name)
            return None
        if meta is None or meta.get("status") != "ready" or not shape_log.snapshot_complete:
            return None
        definition = CanonicalShape.from_json(meta["definition"])
        try:
            table, where, selected = await self._compile(definition)
        except InvalidRequest as exc:
            log.warning("stored shape %s no longer valid (%s)", directory.name, exc)
            return None
        shape = ShapeState(meta["handle"], definition, table, where, selected, shape_log)
        shape.status = "ready"
        shape.snapshot = snapshot_from_meta(meta)
        shape.filtering = bool(meta.get("filtering", True))
        shape.ready.set()
        return shape

    # -- registry ------------------------------------------------------------------------------

    def get(self, handle: str) -> ShapeState | None:
        """The live shape with this handle, if any."""
        shape = self.shapes.get(handle)
        return shape if shape is not None and shape.status != "gone" else None

    def find(self, definition: CanonicalShape) -> ShapeState | None:
        """The live shape for this definition, if any."""
        shape = self.by_definition.get(definition)
        return shape if shape is not None and shape.status != "gone" else None

    async def get_or_create(self, definition: CanonicalShape) -> ShapeState:
        """The shape for ``definition``, creating it (and starting its snapshot) if needed.

        Concurrent calls for the same new definition share one creation.

        Raises:
            InvalidRequest: when the table, columns or where clause are invalid.
            DatabaseUnavailable: when Postgres cannot be reached.
        """
        existing = self.find(definition)
        if existing is not None:
            return existing
        pending = self._creating.get(definition)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[ShapeState] = asyncio.get_running_loop().create_future()
        self._creating[definition] = future
        try:
            shape = await self._create(definition)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: concurrent waiters re-raise it themselves
            raise
        else:
            future.set_result(shape)
            return shape
        finally:
            del self._creating[definition]

    async def _create(self, definition: CanonicalShape) -> ShapeState:
        table, where, selected = await self._compile(definition)
        async with self.reading(definition.relation) as conn:
            await self.publications.add_table(conn, table)
        handle = self._new_handle(definition)
        shape_log = ShapeLog.create(self.shapes_dir / handle, self.settings.chunk_bytes)
        shape = ShapeState(handle, definition, table, where, selected, shape_log)
        shape.save_meta()
        self._register(shape)
        log.info("created shape %s for %s", handle, _describe(definition))
        self._spawn(self._take_snapshot(shape))
        return shape

    async def _compile(
        self, definition: CanonicalShape
    ) -> tuple[Table, Where | None, tuple[str, ...]]:
        table = await self.describe_table(definition.schema, definition.table)
        selected = _selected_columns(table, definition.columns)
        where = None
        if definition.where is not None:
            where = parse_where(definition.where, table.by_name, definition.params_map)
        return table, where, selected

    async def describe_table(self, schema: str, name: str) -> Table:
        """The table's description, cached until a relation message says it changed."""
        cached = self._tables.get((schema, name))
        if cached is not None:
            return cached
        async with self.connection() as conn:
            table = await load_table(conn, schema, name)
        self._tables[(schema, name)] = table
        return table

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[TupleRow]]:
        """A pooled connection (autocommit, display settings applied).

        Raises:
            DatabaseUnavailable: when none can be had within 10 s.
        """
        assert self.pool is not None, "engine is not open"
        try:
            async with self.pool.connection(timeout=10) as conn:
                yield conn
        except (psycopg.OperationalError, TimeoutError) as exc:
            raise DatabaseUnavailable(str(exc)) from exc

    @contextlib.asynccontextmanager
    async def reading(self, relation: TableKey) -> AsyncIterator[psycopg.AsyncConnection[TupleRow]]:
        """A pooled connection for queries over ``relation`` (publishing it, snapshots,
        subsets), their failures translated by :func:`syncd.errors.row_query_errors`.

        When the schema changed under the query, the table is compared with the catalog
        before the error goes on: its shapes are invalidated as the change requires and its
        cached description is dropped, so the client's next request sees the new schema.

        Raises:
            SchemaChanged, RowsRejected, QueryFailed, DatabaseUnavailable: see
                ``row_query_errors``.
        """
        try:
            async with self.connection() as conn:
                with row_query_errors():
                    yield conn
        except SchemaChanged as exc:
            log.warning("the schema of %s.%s changed under a query: %s", *relation, exc)
            await self.recheck_table(relation)
            raise

    async def recheck_table(self, relation: TableKey) -> None:
        """Compare ``relation`` with the catalog now and forget its cached description."""
        try:
            await self._reconcile_table(relation)
        except DatabaseUnavailable as exc:
            log.warning("schema check of %s.%s skipped: %s", *relation, exc)
        finally:
            self._tables.pop(relation, None)

    async def subset(self, shape: ShapeState, subset: Subset) -> bytes:
        """The body of a subset snapshot of ``shape`` (see :func:`syncd.subset.run_subset`).

        Raises:
            SchemaChanged, RowsRejected, QueryFailed, DatabaseUnavailable: see :meth:`reading`.
        """
        async with self.reading(shape.definition.relation) as conn:
            return await run_subset(conn, shape, subset)

    def _new_handle(self, definition: CanonicalShape) -> str:
        now_us = max(time.time_ns() // 1000, self._last_handle_us + 1)
        self._last_handle_us = now_us
        return f"{definition.digest()}-{now_us}"

    def _register(self, shape: ShapeState) -> None:
        if shape.status == "snapshotting":
            self._snapshotting.add(shape)
        self.shapes[shape.handle] = shape
        self.by_definition[shape.definition] = shape
        if self._in_txn:
            self._pending.append(shape)  # joins at the next transaction boundary
        else:
            self._route(shape)

    def _route(self, shape: ShapeState) -> None:
        self.router.add(shape, shape.definition.relation, shape.where, shape.table.by_name)

    def delete(self, shape: ShapeState, reason: str = "deleted") -> None:
        """Retire a shape for good and remove its files."""
        if shape.status == "gone" and shape.handle not in self.shapes:
            return
        log.info("removing shape %s (%s)", shape.handle, reason)
        self.router.remove(shape)
        self.shapes.pop(shape.handle, None)
        if self.by_definition.get(shape.definition) is shape:
            del self.by_definition[shape.definition]
        self._dirty.discard(shape)
        self._txn_entries.pop(shape, None)
        if shape in self._pending:
            self._pending.remove(shape)
        shape.go_away()
        shape.log.delete()

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- snapshots -----------------------------------------------------------------------------

    async def _take_snapshot(self, shape: ShapeState) -> None:
        try:
            async with self.reading(shape.definition.relation) as conn:
                info, wal_lsn = await begin_snapshot(conn)
                if shape.definition.log == "full":
                    await self._copy_rows(conn, shape)
                await conn.execute("COMMIT")
        except asyncio.CancelledError:
            raise
        except (SchemaChanged, RowsRejected, QueryFailed, DatabaseUnavailable) as exc:
            log.warning("snapshot of shape %s failed: %s", shape.handle, exc)
            shape.fail(exc)
            self.delete(shape, "snapshot failed")
            return
        except Exception as exc:
            log.exception("snapshot of shape %s failed", shape.handle)
            shape.fail(exc)
            self.delete(shape, "snapshot failed")
            return
        if shape.status == "gone":
            return
        shape.log.finish_snapshot(messages.snapshot_end(info.xmin, info.xmax, info.xip))
        shape.finish_snapshot(info)
        self._dirty.add(shape)
        log.info("snapshot of shape %s done (xmin %d, xmax %d)", shape.handle, info.xmin, info.xmax)

    async def _copy_rows(self, conn: psycopg.AsyncConnection[TupleRow], shape: ShapeState) -> None:
        table, view = shape.table, shape.view
        columns = sorted(set(shape.selected) | set(view.key_columns))
        relation = shape.relation_list
        where_sql = shape.where.sql if shape.where is not None else None
        async for batch in stream_rows(conn, table, columns, where_sql):
            lines = []
            for values in batch:
                row = dict(zip(columns, values, strict=True))
                key = messages.row_key(view.key_prefix, row, view.key_columns)
                value = row if view.selected is None else {c: row[c] for c in shape.selected}
                lines.append(messages.snapshot_row(relation, key, value))
            shape.log.append_snapshot_rows(lines)
            if shape.status == "gone":
                return

    # -- replication handler -------------------------------------------------------------------

    def on_message(self, msg: pg.Message) -> None:
        """Apply one pgoutput message (called by the replication stream, in order)."""
        if self._stream_commits:  # normally applied by on_idle, which the stream calls first
            self._apply_stream_commits_now()
        handler = self._dispatch.get(type(msg))
        if handler is not None:
            handler(msg)

    def _on_stream_stop(self, msg: pg.StreamStop) -> None:
        self._spool = None

    # -- streamed transactions -----------------------------------------------------------------

    def on_stream_change(self, msg: pg.Message, payload: memoryview) -> None:
        """Spool one message of a stream block (``payload``: its pgoutput bytes)."""
        spool = self._spool
        if spool is None:
            raise RuntimeError("a streamed change outside a stream block")
        kind = type(msg)
        if kind is pg.Relation:
            spool.append(0, payload, relation=True)
        elif kind is pg.Insert or kind is pg.Update or kind is pg.Delete or kind is pg.Truncate:
            xid = cast(pg.Insert | pg.Update | pg.Delete | pg.Truncate, msg).xid
            spool.append(spool.xid if xid is None else xid, payload)
        # Type, Origin and logical messages carry nothing a shape needs.

    def on_session_start(self) -> None:
        """A new replication session: everything not committed will be sent again."""
        self._drop_spools()
        self._stream_commits.clear()
        if self._in_txn:  # a transaction cut off by the disconnect
            self._in_txn = False
            self._txn_entries = {}
            self._txn_encoders = {}
            for shape in self._pending:
                if shape.status != "gone":
                    self._route(shape)
            self._pending = []

    def _drop_spools(self) -> None:
        for spool in self._spools.values():
            spool.delete()
        self._spools.clear()
        self._spool = None

    def _on_stream_start(self, msg: pg.StreamStart) -> None:
        spool = self._spools.get(msg.xid)
        if msg.first or spool is None:
            if not msg.first:
                raise RuntimeError(f"stream block of transaction {msg.xid} without its start")
            if spool is not None:  # sent again after a reconnect
                spool.delete()
            spool = self._spools[msg.xid] = TransactionSpool(self.spool_dir, msg.xid)
        self._spool = spool

    def _on_stream_abort(self, msg: pg.StreamAbort) -> None:
        spool = self._spools.get(msg.xid)
        if spool is None:
            return
        if msg.subxid == msg.xid:
            del self._spools[msg.xid]
            if self._spool is spool:
                self._spool = None
            spool.delete()
            log.info("streamed transaction %d aborted", msg.xid)
        else:
            spool.abort_subtransaction(msg.subxid)

    async def _apply_stream_commits(self) -> None:
        while self._stream_commits:
            commit = self._stream_commits.pop(0)
            for _ in self._replay(commit):
                await asyncio.sleep(0)

    def _apply_stream_commits_now(self) -> None:
        """Apply pending Stream Commits without yielding (a message follows before on_idle)."""
        while self._stream_commits:
            commit = self._stream_commits.pop(0)
            for _ in self._replay(commit):
                pass

    def _replay(self, commit: pg.StreamCommit) -> Iterator[None]:
        """Apply a committed streamed transaction from its spool, yielding after each piece."""
        spool = self._spools.pop(commit.xid, None)
        if self._spool is spool:
            self._spool = None
        self._on_begin(pg.Begin(commit.commit_lsn, commit.commit_time, commit.xid))
        end = pg.Commit(commit.flags, commit.commit_lsn, commit.end_lsn, commit.commit_time)
        if spool is None:  # nothing of it was published
            self._on_commit(end)
            return
        started = time.monotonic()
        decode = self._replay_decoder.decode_streamed
        changes = self._changes
        low, every, high = _PIECE_CHANGES
        count = 0
        try:
            for payload in spool.replay():
                msg = decode(payload)
                apply = changes.get(type(msg))
                if apply is not None:
                    apply(msg)
                count += 1
                if count >= every:
                    written = self._write_pieces()
                    per_change = max(written // count, 1)
                    every = min(max(_PIECE_BYTES // per_change, low), high)
                    count = 0
                    yield
            self._on_commit(end)
        except BaseException:
            self._abandon_pieces()
            raise
        finally:
            spool.delete()
        log.info(
            "applied streamed transaction %d (%d changes, %d MB spooled) in %.1fs",
            commit.xid,
            spool.records,
            spool.size >> 20,
            time.monotonic() - started,
        )

    def _write_pieces(self) -> int:
        """Append each shape's entries of the open transaction but its latest, as a piece."""
        lsn, xid = self._txn_lsn, self._txn_xid
        written = 0
        for shape, buffer in self._txn_entries.items():
            if len(buffer.entries) < 2 or shape.status == "gone":
                continue
            piece = buffer.entries.pop_all_but_last()
            shape.commit(lsn, xid, piece, final=False)
            written += sum(map(len, piece.datas))
        return written

    def _abandon_pieces(self) -> None:
        """The open transaction will not be completed: drop the pieces written of it."""
        for shape in self._txn_entries:
            shape.abandon_pieces()
        self._txn_entries = {}
        self._txn_encoders = {}
        self._in_txn = False

    def _on_begin(self, msg: pg.Begin) -> None:
        self._in_txn = True
        self._txn_lsn = msg.final_lsn
        self._txn_xid = msg.xid
        self._txn_op = 0
        self._txn_entries = {}
        self._txn_encoders = {}

    def _on_relation(self, msg: pg.Relation) -> None:
        names = tuple(c.name for c in msg.columns)
        types = tuple((c.type_oid, c.type_mod) for c in msg.columns)
        key = (msg.namespace or "pg_catalog", msg.name)
        previous = self._relations.get(msg.oid)
        relation = self._relations[msg.oid] = _Relation(key, names, types)
        if previous is not None and previous.table != key:
            self._tables.pop(previous.table, None)
            for shape in list(self.router.shapes_for_table(previous.table)):
                self.delete(shape, "the table was renamed")
        self._check_schema(key, relation.column_types())

    def _check_schema(self, table: TableKey, columns: dict[str, tuple[int, int]] | None) -> None:
        """Invalidate the shapes of ``table`` that its new columns (None: dropped) affect."""
        changed = False
        for shape in list(self.router.shapes_for_table(table)):
            if columns is None:
                self.delete(shape, "the table was dropped")
                changed = True
                continue
            diff = diff_columns(_column_types(shape.table), columns)
            changed = changed or not diff.empty
            filtered = shape.where.columns if shape.where is not None else ()
            selects_all = shape.definition.columns is None
            if is_affected(diff, selects_all, shape.selected, filtered):
                self.delete(shape, "the table's schema changed")
        if changed:
            self._tables.pop(table, None)

    def _on_truncate(self, msg: pg.Truncate) -> None:
        for oid in msg.oids:
            relation = self._relations.get(oid)
            if relation is None:
                continue
            for shape in list(self.router.shapes_for_table(relation.table)):
                self._restart_after_truncate(shape)

    def _restart_after_truncate(self, shape: ShapeState) -> None:
        """Replace ``shape`` by one whose snapshot is the empty table, as of this transaction.

        The new shape is routed at once, so the truncating transaction's later changes and every
        later transaction reach it; clients of the old handle get a 409 that points to it.
        """
        definition = shape.definition
        handle = self._new_handle(definition)
        shape_log = ShapeLog.create(self.shapes_dir / handle, self.settings.chunk_bytes)
        fresh = ShapeState(handle, definition, shape.table, shape.where, shape.selected, shape_log)
        xid = shape.snapshot.widen(self._txn_xid) if shape.snapshot else self._txn_xid
        info = Snapshot(xid + 1, xid + 1, ())
        shape_log.finish_snapshot(messages.snapshot_end(info.xmin, info.xmax, info.xip))
        fresh.filtering = False
        fresh.finish_snapshot(info)
        self.delete(shape, "the table was truncated")
        self.shapes[handle] = fresh
        self.by_definition[definition] = fresh
        self._route(fresh)
        log.info("shape %s restarts as %s after a truncate", shape.handle, handle)

    async def reconcile_schemas(self) -> None:
        """Compare every synced table with the catalog; catches DDL that sent no WAL (DROP)."""
        tables = {shape.definition.relation for shape in self.shapes.values()}
        for relation in sorted(tables):
            await self._reconcile_table(relation)

    async def _reconcile_table(self, relation: TableKey) -> None:
        try:
            async with self.connection() as conn:
                table: Table | None = await load_table(conn, *relation)
        except InvalidRequest:
            table = None
        if table is None or self._replaced(relation, table):
            self._check_schema(relation, None)
            self._tables.pop(relation, None)
            # a table created again under the name must be published again
            self.publications.forget(*relation)
            return
        self._check_schema(relation, _column_types(table))

    def _replaced(self, relation: TableKey, table: Table) -> bool:
        """Whether ``table`` is another table than the one known under its name."""
        known = [shape.table for shape in self.router.shapes_for_table(relation)]
        cached = self._tables.get(relation)
        if cached is not None:
            known.append(cached)
        return any(old.oid not in (0, table.oid) for old in known)

    async def _reconcile_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.schema_check_interval)
            try:
                await self.reconcile_schemas()
            except DatabaseUnavailable as exc:
                log.warning("schema check skipped: %s", exc)

    def _encoder(self, table: TableKey) -> messages.ChangeEncoder:
        encoder = self._txn_encoders.get(table)
        if encoder is None:
            encoder = messages.ChangeEncoder(list(table), self._txn_lsn, self._txn_xid)
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
        append = buffer.entries.append
        op = self._txn_op
        for e in entries:
            at = op + e.split
            append(at, encode(e.operation, e.key, e.value, at, e.old_value, e.headers))
            buffer.operation = e.operation

    def _on_insert(self, msg: pg.Insert) -> None:
        relation = self._relations[msg.oid]
        names, values = relation.names, msg.new
        if len(values) != len(names):
            raise ValueError(f"insert of {len(values)} columns into a {len(names)}-column table")
        # Text-mode pgoutput only sends str or None for inserts. (The length check above is
        # cheaper than zip(..., strict=True).)
        row: TextRow = dict(zip(names, values))  # type: ignore[arg-type]  # noqa: B905
        shapes = self.router.affected(relation.table, row)
        if shapes:
            op = self._txn_op
            entries = self._txn_entries
            failed: list[tuple[ShapeState, Exception]] = []
            for shape in shapes:
                try:
                    parts = insert_parts(shape.view, row)
                except Exception as exc:  # contained in this shape: see _retire_failed
                    failed.append((shape, exc))
                    continue
                if parts is not None:
                    buffer = entries.get(shape)
                    if buffer is None:
                        buffer = self._buffer(shape, relation.table)
                    buffer.entries.append(op, buffer.encoder.insert(parts[0], parts[1], op))
                    buffer.operation = "insert"
            if failed:
                self._retire_failed(failed)
        self._txn_op += 2

    def _on_update(self, msg: pg.Update) -> None:
        relation = self._relations[msg.oid]
        old = None
        if msg.old_kind == "O" and msg.old is not None:
            old = _text_row(relation.names, msg.old)
        new = _fill_unchanged(relation.names, msg.new, old)
        shapes = self.router.affected(relation.table, new)
        if old is not None:
            shapes = shapes | self.router.affected(relation.table, old)
        failed: list[tuple[ShapeState, Exception]] = []
        for shape in shapes:
            try:
                entries = convert_update(shape.view, old, new)
            except Exception as exc:  # contained in this shape: see _retire_failed
                failed.append((shape, exc))
                continue
            if entries:
                self._add_entries(shape, relation.table, entries)
        self._retire_failed(failed)
        self._txn_op += 2

    def _on_delete(self, msg: pg.Delete) -> None:
        relation = self._relations[msg.oid]
        old = _text_row(relation.names, msg.old)
        full = msg.old_kind == "O"
        failed: list[tuple[ShapeState, Exception]] = []
        for shape in self.router.affected(relation.table, old):
            try:
                entries = convert_delete(shape.view, old, full)
            except Exception as exc:  # contained in this shape: see _retire_failed
                failed.append((shape, exc))
                continue
            if entries:
                self._add_entries(shape, relation.table, entries)
        self._retire_failed(failed)
        self._txn_op += 2

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
                _describe(shape.definition),
                type(cause).__name__,
                cause,
            )
            self.delete(shape, "its where clause failed on a row")

    def _on_commit(self, msg: pg.Commit) -> None:
        lsn, xid = self._txn_lsn, self._txn_xid
        dirty = self._dirty
        for shape, buffer in self._txn_entries.items():
            if shape.status == "gone":
                continue
            if shape.commit(lsn, xid, buffer.finish()):
                dirty.add(shape)
        self._txn_entries = {}
        self._txn_encoders = {}
        self._in_txn = False
        self._last_commit_end = msg.end_lsn
        self.last_seen_lsn = max(self.last_seen_lsn, lsn)
        for shape in self._pending:
            if shape.status != "gone":
                self._route(shape)
        self._pending = []

    async def on_idle(self, received_lsn: int, in_transaction: bool) -> int:
        """Apply committed streamed transactions, make written logs durable and return the LSN
        Postgres may forget up to.

        Logs are fsynced at most every ``flush_interval``; when that interval has not passed
        yet, a timer flushes them once it has (the next idle call then reports it), so that a
        burst's tail does not wait for the stream's next idle call to become durable.
        """
        if self._stream_commits:
            await self._apply_stream_commits()
        between = not (in_transaction or self._in_txn or self._spools)
        if between:
            self.last_seen_lsn = max(self.last_seen_lsn, received_lsn)
        if self._dirty:
            wait = self._last_flush + self.settings.flush_interval - time.monotonic()
            if wait <= 0:
                self._flush_dirty()
            elif self._flush_timer is None:
                loop = asyncio.get_running_loop()
                self._flush_timer = loop.call_later(wait, self._timed_flush)
        if self._dirty:
            return self._confirmable(self._pinned(self._durable_lsn))
        durable = self._last_commit_end
        if between:
            durable = max(durable, received_lsn)
        self._durable_lsn = max(self._durable_lsn, self._pinned(durable))
        return self._confirmable(self._durable_lsn)

    def _timed_flush(self) -> None:
        self._flush_timer = None
        if self._dirty:
            self._flush_dirty()

    def _flush_dirty(self) -> None:
        """fsync every log written since the last flush; then all commits so far are durable.

        Many dirty logs on the storage filesystem are made durable by one ``syncfs()``
        (``GroupSync``) instead of one ``fdatasync()`` each.
        """
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        covered = self._last_commit_end
        logs = [shape.log for shape in self._dirty if shape.status != "gone"]
        if self._group_sync is not None:
            self._group_sync.sync(logs)
        else:
            for shape_log in logs:
                shape_log.sync()
        self._dirty.clear()
        self._last_flush = time.monotonic()
        self._durable_lsn = max(self._durable_lsn, self._pinned(covered))

    def _pinned(self, lsn: int) -> int:
        # Only snapshotting shapes buffer transactions; the others leave the set here.
        for shape in list(self._snapshotting):
            if shape.status != "snapshotting":
                self._snapshotting.discard(shape)
                continue
            first = shape.first_buffered_lsn
            if first is not None and first <= lsn:
                lsn = first
        return lsn


def _configure_connection(conn: psycopg.AsyncConnection[TupleRow]) -> Any:
    async def configure() -> None:
        for name, value in DISPLAY_SETTINGS.items():
            await conn.execute("SELECT set_config(%s, %s, false)", (name, value))

    return configure()


def _selected_columns(table: Table, requested: tuple[str, ...] | None) -> tuple[str, ...]:
    if requested is None:
        return tuple(sorted(c.name for c in table.columns))
    unknown = [name for name in requested if name not in table.by_name]
    if unknown:
        message = f"The following columns are not found on the table: {', '.join(unknown)}"
        raise InvalidRequest("columns", message)
    pk = [c.name for c in table.columns if c.pk_index is not None]
    missing = [name for name in pk if name not in requested]
    if missing:
        message = "The list of columns must include all primary key columns, missing: " + ", ".join(
            missing
        )
        raise InvalidRequest("columns", message)
    return tuple(sorted(set(requested)))


def _column_types(table: Table) -> dict[str, tuple[int, int]]:
    return {c.name: (c.type_oid, c.type_mod) for c in table.columns}


def _text_row(names: tuple[str, ...], values: pg.RowData) -> TextRow:
    # Text-mode pgoutput only sends str or None for inserts, deletes and full old rows.
    if len(values) != len(names):
        raise ValueError(f"a row of {len(values)} columns for a {len(names)}-column table")
    return cast(TextRow, dict(zip(names, values)))  # noqa: B905 (checked above)


def _fill_unchanged(names: tuple[str, ...], values: pg.RowData, old: TextRow | None) -> TextRow:
    row: TextRow = {}
    for name, value in zip(names, values, strict=True):
        if value is pg.UNCHANGED_TOAST:
            if old is not None:
                row[name] = old.get(name)
        else:
            row[name] = value  # type: ignore[assignment]
    return row


def _describe(definition: CanonicalShape) -> str:
    text = f"{definition.schema}.{definition.table}"
    if definition.where:
        text += f" where {definition.where}"
    return text
