"""The engine: the coordinator of shapes, the replication handler, snapshots and slot history.

Layer: ``syncd``.

Theory of operation
-------------------
``ReplicationStream`` hands every decoded pgoutput message to :meth:`Engine.on_message`, in
stream order, on the event loop. The engine dispatches it to its collaborators:

* ``syncd.change_applier``: the open transaction; row changes routed to the shapes they may
  affect, converted, buffered and appended to the shape logs at Commit (per-shape failure
  containment included);
* ``syncd.stream_replay``: streamed (large) transactions, spooled until they commit and then
  replayed in pieces;
* ``syncd.schema_reconcile``: Relation and Truncate messages, the cached table descriptions and
  the periodic comparison with the catalog;
* ``syncd.flush_tracker``: which logs are dirty, the durable LSN, what may be confirmed to
  Postgres (:meth:`Engine.on_idle`);
* ``syncd.shape_registry``: the live shapes (create, restore, delete, route);
* ``syncd.snapshot_runner``: the initial snapshots of new shapes, batched and sealed together.

The engine itself owns the connection pool, the queries over a table (subsets) and
the check of the slot's history, and keeps the interface the daemon and the HTTP layer use.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from shapes.router import Router
from shapes.schema import Table
from shapes.shape import CanonicalShape
from shapes.subquery import SubqueryLimits
from shapes.subset import Subset
from syncd.catalog import PublicationManager
from syncd.change_applier import ChangeApplier, TableKey
from syncd.compactor import CompactionSettings, Compactor
from syncd.errors import (
    DatabaseUnavailable,
    SchemaChanged,
    SlotConflict,
    row_query_errors,
)
from syncd.flush_tracker import FlushTracker
from syncd.pgoutput import messages as pg
from syncd.pgoutput import parse_lsn
from syncd.replication import SlotFound, history_gap
from syncd.schema_reconcile import SchemaReconciler
from syncd.shape_registry import ShapeRegistry
from syncd.shape_state import RemovalCause, ShapeState
from syncd.slot_record import SlotRecord
from syncd.snapshot import DISPLAY_SETTINGS
from syncd.snapshot_runner import SnapshotRunner
from syncd.storage import GroupSync
from syncd.stream_replay import StreamReplayer
from syncd.subquery_engine import SubqueryEngine
from syncd.subset import run_subset

log = logging.getLogger("syncd.engine")


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
    max_subquery_values: int = 100_000
    """Largest value set of one subquery (a bigger one is refused with a 400)."""
    max_held_transactions: int = 1000
    """Transactions a subquery shape may hold during one move-in before it is retired."""
    subquery_limits: SubqueryLimits = field(default_factory=SubqueryLimits)
    compaction: CompactionSettings = field(default_factory=CompactionSettings)
    """When shape logs are compacted (``syncd.compactor``)."""


class Engine:
    """Owns every shape and applies the replication stream to them."""

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.pool: AsyncConnectionPool[psycopg.AsyncConnection[TupleRow]] | None = None
        self.publications = PublicationManager(settings.publication)
        self.router: Router[ShapeState] = Router()
        self._tasks: set[asyncio.Task[None]] = set()
        self.flush = FlushTracker(settings.storage_dir, settings.flush_interval)
        self.subqueries = SubqueryEngine(
            reading=self.reading,
            spawn=self._spawn,
            last_seen_lsn=lambda: self.flush.last_seen_lsn,
            written=self.flush.dirty.add,
            retire=self.delete,
            outer_router=self.router,
            is_pending=lambda shape: shape in self.applier.pending,
            max_values=settings.max_subquery_values,
            max_held=settings.max_held_transactions,
            limits=settings.subquery_limits,
        )
        self.flush.holding = self.subqueries.first_held_lsn
        self.applier = ChangeApplier(self.router, self.flush, self.delete, self.subqueries)
        self.snapshots = SnapshotRunner(
            connection=self.connection,
            schema_changed=self.schema_changed,
            retire=self.delete,
            flush=self.flush,
            spawn=self._spawn,
            workers=max(1, settings.pool_size // 2),
        )
        self.registry = ShapeRegistry(
            shapes_dir=self.shapes_dir,
            chunk_bytes=settings.chunk_bytes,
            router=self.router,
            flush=self.flush,
            applier=self.applier,
            describe_table=self.describe_table,
            publish=self._publish,
            start_snapshot=self.snapshots.start,
            subqueries=self.subqueries,
        )
        self.shapes = self.registry.shapes
        """Every registered shape by handle."""
        self.compactor = Compactor(settings.compaction, lambda: list(self.shapes.values()))
        self.by_definition = self.registry.by_definition
        self.schema = SchemaReconciler(
            applier=self.applier,
            router=self.router,
            shapes=self.shapes.values,
            publications=self.publications,
            connection=self.connection,
            retire=self.delete,
            restart_after_truncate=self.registry.restart_after_truncate,
            dependents=self.subqueries.dependents_of_table,
            schema_dependents=self.subqueries.schema_dependents,
        )
        # Handlers by message type: row and schema changes (also replayed from spools), and the
        # transaction and stream boundaries that only arrive live.
        changes: dict[type, Callable[[Any], None]] = {
            pg.Insert: self.applier.on_insert,
            pg.Update: self.applier.on_update,
            pg.Delete: self.applier.on_delete,
            pg.Relation: self.schema.on_relation,
            pg.Truncate: self.schema.on_truncate,
        }
        self.streams = StreamReplayer(self.spool_dir, self.applier, changes)
        boundaries: dict[type, Callable[[Any], None]] = {
            pg.Begin: self.applier.on_begin,
            pg.Commit: self.applier.on_commit,
            pg.StreamStart: self.streams.on_stream_start,
            pg.StreamStop: self.streams.on_stream_stop,
            pg.StreamCommit: self.streams.on_stream_commit,
            pg.StreamAbort: self.streams.on_stream_abort,
            pg.LogicalMessage: self._on_logical_message,
        }
        self._dispatch: dict[type, Callable[[Any], None]] = {
            **changes,
            **{kind: self._after_stream_commits(h) for kind, h in boundaries.items()},
        }

    @property
    def last_seen_lsn(self) -> int:
        """The highest commit LSN seen (or keepalive position between transactions)."""
        return self.flush.last_seen_lsn

    @last_seen_lsn.setter
    def last_seen_lsn(self, lsn: int) -> None:
        self.flush.last_seen_lsn = lsn

    def seen_lsn_for(self, shape: ShapeState) -> int:
        """The ``global_last_seen_lsn`` to tell readers of ``shape``: :attr:`last_seen_lsn`,
        but below the first transaction the shape still holds (a subquery shape during a
        move-in), so that a client that waits for a position waits for the move-in too."""
        sq = self.subqueries.shapes.get(shape)
        cap = sq.seen_cap if sq is not None else None
        if cap is None:
            return self.flush.last_seen_lsn
        return min(self.flush.last_seen_lsn, cap)

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
        return self.flush.durable_lsn

    async def open(self) -> None:
        """Connect, make sure the publication and slot exist, restore shapes from disk."""
        self.shapes_dir.mkdir(parents=True, exist_ok=True)
        # Postgres sends every uncommitted streamed transaction again, from its first block.
        shutil.rmtree(self.spool_dir, ignore_errors=True)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.flush.group_sync = GroupSync(self.shapes_dir)
        self.snapshots.open(self.shapes_dir)
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
        self.flush.slot_record = SlotRecord.load(self.settings.storage_dir)
        if created_publication or (slot.created and self.flush.slot_record is None):
            self.registry.purge_all("a new replication slot or publication was created")
        if not self._check_slot(slot):
            record = self.flush.slot_record or SlotRecord(slot.name, slot.confirmed_lsn)
            self.flush.save_slot_record(record)
        await self.registry.restore_all()
        self._spawn(self.schema.reconcile_forever(self.settings.schema_check_interval))
        if self.settings.compaction.enabled:
            self._spawn(self.compactor.run())

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
        record = self.flush.slot_record
        gap = history_gap(
            slot,
            record.confirmed_lsn if record is not None else None,
            system_id=record.system_id if record is not None else None,
            slot_name=record.slot if record is not None else None,
        )
        if gap is None:
            if record is not None and record.system_id is None and slot.system_id is not None:
                self.flush.save_slot_record(replace(record, system_id=slot.system_id))
            return False
        log.error(
            "replication slot %s: its history is broken, changes committed in between were "
            "lost: %s; invalidating all %d shapes (clients must refetch)",
            slot.name,
            gap,
            sum(1 for _ in self.shapes_dir.iterdir()),
        )
        self._invalidate_all_shapes(f"the replication slot's history is broken: {gap}")
        self.flush.restart_at(slot.confirmed_lsn)
        self.flush.save_slot_record(SlotRecord(slot.name, slot.confirmed_lsn, slot.system_id))
        return True

    def _invalidate_all_shapes(self, reason: str) -> None:
        """Retire every shape (clients get a 409 and take a new snapshot) and drop whatever
        the engine holds of the open transaction and spooled ones."""
        self.on_session_start()
        for shape in list(self.shapes.values()):
            self.delete(shape, reason)
        self.registry.purge_all(reason)
        self.flush.dirty.clear()
        self.schema.tables.clear()

    async def close(self) -> None:
        """Flush logs and close connections; shapes stay on disk."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        try:
            await self.flush.drain()
            self.flush.flush_dirty()  # FlushFailed still closes what follows
        finally:
            self.streams.drop_spools()
            self.flush.close_group_sync()
            self.snapshots.close()
            self.compactor.close()
            if self.pool is not None:
                await self.pool.close()

    # -- registry ------------------------------------------------------------------------------

    def get(self, handle: str) -> ShapeState | None:
        """The live shape with this handle, if any."""
        return self.registry.get(handle)

    def find(self, definition: CanonicalShape) -> ShapeState | None:
        """The live shape for this definition, if any."""
        return self.registry.find(definition)

    async def get_or_create(self, definition: CanonicalShape) -> ShapeState:
        """The shape for ``definition``, creating it (and starting its snapshot) if needed.

        Concurrent calls for the same new definition share one creation.

        Raises:
            InvalidRequest: when the table, columns or where clause are invalid.
            DatabaseUnavailable: when Postgres cannot be reached.
        """
        return await self.registry.get_or_create(definition)

    def delete(
        self, shape: ShapeState, reason: str, *, cause: RemovalCause = "invalidated"
    ) -> None:
        """Retire a shape for good and remove its files (``cause``: for the metrics)."""
        self.registry.delete(shape, reason, cause=cause)

    async def _publish(self, definition: CanonicalShape, table: Table) -> None:
        if self.publications.is_ready(table):  # the common case needs no connection
            return
        async with self.reading(definition.relation) as conn:
            await self.publications.add_table(conn, table)

    async def describe_table(self, schema: str, name: str, *, fresh: bool = False) -> Table:
        """The table's description, cached until a relation message says it changed
        (``fresh``: read from the catalog in any case)."""
        return await self.schema.describe_table(schema, name, fresh=fresh)

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
            await self.schema_changed(relation, exc)
            raise

    async def schema_changed(self, relation: TableKey, exc: SchemaChanged) -> None:
        """A query over ``relation`` failed with ``exc``: compare the table with the catalog
        now (its shapes are invalidated as the change requires, its description forgotten)."""
        log.warning("the schema of %s.%s changed under a query: %s", *relation, exc)
        await self.recheck_table(relation)

    async def recheck_table(self, relation: TableKey) -> None:
        """Compare ``relation`` with the catalog now and forget its cached description."""
        await self.schema.recheck_table(relation)

    async def subset(self, shape: ShapeState, subset: Subset) -> bytes:
        """The body of a subset snapshot of ``shape`` (see :func:`syncd.subset.run_subset`).

        Raises:
            SchemaChanged, RowsRejected, QueryFailed, DatabaseUnavailable: see :meth:`reading`.
        """
        async with self.reading(shape.definition.relation) as conn:
            return await run_subset(conn, shape, subset)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._background_task_done)

    def _background_task_done(self, task: asyncio.Task[None]) -> None:
        """A background task (schema checks, compaction) runs until closed: one that stopped
        on an exception is logged at once, not when the task is collected."""
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            name = getattr(task.get_coro(), "__qualname__", task.get_name())
            log.error("background task %s stopped", name, exc_info=exc)

    # -- snapshots -----------------------------------------------------------------------------

    # -- replication handler -------------------------------------------------------------------

    def on_message(self, msg: pg.Message) -> None:
        """Apply one pgoutput message (called by the replication stream, in order)."""
        handler = self._dispatch.get(type(msg))
        if handler is not None:
            handler(msg)

    def message_handlers(self) -> Mapping[type, Callable[[Any], None]]:
        """What :meth:`on_message` calls, by message type: the replication stream calls them
        directly, and drops the messages of other types."""
        return self._dispatch

    def _after_stream_commits(self, handler: Callable[[Any], None]) -> Callable[[Any], None]:
        """``handler``, after any Stream Commit still waiting to be applied (``on_idle``
        normally applies them first). Only transaction and stream boundaries need it: row and
        schema changes arrive inside a transaction or a stream block, after a boundary."""
        streams = self.streams

        def after_stream_commits(msg: Any) -> None:
            if streams.commits_pending:
                streams.apply_commits_now()
            handler(msg)

        return after_stream_commits

    def _on_logical_message(self, msg: pg.LogicalMessage) -> None:
        """A non-transactional ``pg_logical_emit_message``: every transaction that committed
        before it has been received (subquery move-ins wait for such a mark)."""
        if not msg.transactional:
            self.subqueries.on_position(msg.lsn)

    def on_stream_change(self, msg: pg.Message, payload: memoryview) -> None:
        """Spool one message of a stream block (``payload``: its pgoutput bytes)."""
        self.streams.on_stream_change(msg, payload)

    def on_session_start(self) -> None:
        """A new replication session: everything not committed will be sent again."""
        self.streams.on_session_start()
        self.applier.cut_off()

    async def on_idle(self, received_lsn: int, in_transaction: bool) -> int:
        """Apply committed streamed transactions, make written logs durable and return the LSN
        Postgres may forget up to (see ``FlushTracker.on_idle``)."""
        if self.streams.commits_pending:
            await self.streams.apply_commits()
        if self.flush.dirty:
            # The readers this stream's commits woke run first: their answers go out before
            # a flush that may wait for the disk on this thread (see FlushPlan.brief).
            await asyncio.sleep(0)
        between = not (in_transaction or self.applier.in_txn or self.streams.spooling)
        confirmable = self.flush.on_idle(received_lsn, between)
        # the stream confirms this position next: older commit times are no longer lag
        self.flush.commit_times.forget(confirmable)
        if between:
            self.subqueries.on_position(received_lsn)
        return confirmable

    async def reconcile_schemas(self) -> None:
        """Compare every synced table with the catalog; catches DDL that sent no WAL (DROP)."""
        await self.schema.reconcile_schemas()


def _configure_connection(conn: psycopg.AsyncConnection[TupleRow]) -> Any:
    async def configure() -> None:
        for name, value in DISPLAY_SETTINGS.items():
            await conn.execute("SELECT set_config(%s, %s, false)", (name, value))

    return configure()
