"""The shape registry: every live shape by handle and definition, and its routing.

Layer: ``syncd``.

Shapes are created here (their table described, published, their log made and their snapshot
started), restored from disk at start-up (only shapes whose snapshot completed), replaced after a
truncate and retired for good (:meth:`ShapeRegistry.delete`). A shape registered while a
transaction is open joins the router at the transaction's end (``syncd.change_applier``), so it
never sees half a transaction.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from shapes import messages
from shapes.errors import InvalidRequest
from shapes.router import Router
from shapes.schema import Table
from shapes.shape import CanonicalShape
from shapes.where import Where, parse_where, subquery_tables
from shapes.xid import Snapshot
from syncd.change_applier import ChangeApplier, describe, route
from syncd.flush_tracker import FlushTracker
from syncd.log_creation import LogCreator
from syncd.log_files import REMOVED_SUFFIX
from syncd.shape_state import (
    RemovalCause,
    ShapeState,
    snapshot_from_meta,
    snapshot_lsn_from_meta,
)
from syncd.storage import ShapeLog
from syncd.subquery_engine import SubqueryEngine

log = logging.getLogger("syncd.engine")


class DescribeTable(Protocol):
    """A table's description by schema and name (``fresh``: not from a cache)."""

    def __call__(self, schema: str, name: str, *, fresh: bool = False) -> Awaitable[Table]: ...


class ShapeRegistry:
    """Owns the live shapes: creation, restore, routing and retirement."""

    def __init__(
        self,
        *,
        shapes_dir: Path,
        chunk_bytes: int,
        router: Router[ShapeState],
        flush: FlushTracker,
        applier: ChangeApplier,
        describe_table: DescribeTable,
        publish: Callable[[CanonicalShape, Table], Awaitable[None]],
        start_snapshot: Callable[[ShapeState], None],
        subqueries: SubqueryEngine,
    ) -> None:
        self.shapes_dir = shapes_dir
        self._chunk_bytes = chunk_bytes
        self._router = router
        self._flush = flush
        self._applier = applier
        self._describe_table = describe_table
        self._publish = publish
        """Adds a new shape's table to the publication."""
        self._start_snapshot = start_snapshot
        self._subqueries = subqueries
        self._log_creator = LogCreator(chunk_bytes)
        """Makes new shapes' logs, those asked for together in one trip to a thread."""
        self.shapes: dict[str, ShapeState] = {}
        self.by_definition: dict[CanonicalShape, ShapeState] = {}
        self._creating: dict[CanonicalShape, asyncio.Future[ShapeState]] = {}
        self._last_handle_us = 0
        self.created = 0
        """Shapes created by this process (restored ones not counted)."""
        self.removed: dict[RemovalCause, int] = {}
        """Shapes removed by this process, by cause."""

    def purge_all(self, reason: str) -> None:
        """Remove every stored shape directory."""
        entries = list(self.shapes_dir.iterdir())
        if entries:
            log.warning("discarding %d stored shapes: %s", len(entries), reason)
        for entry in entries:
            shutil.rmtree(entry, ignore_errors=True)

    async def restore_all(self) -> None:
        """Register every complete shape stored on disk; discard the others."""
        restored = 0
        for directory in sorted(self.shapes_dir.iterdir()):
            if directory.name.endswith(REMOVED_SUFFIX):  # a removal a stop cut short
                shutil.rmtree(directory, ignore_errors=True)
                continue
            shape = await self._restore_shape(directory)
            if shape is None:
                shutil.rmtree(directory, ignore_errors=True)
                continue
            self.register(shape)
            if shape.subquery:
                self._subqueries.attach(shape, shape.inner_tables, restored=True)
            restored += 1
        log.info("restored %d shapes from %s", restored, self.shapes_dir)

    async def _restore_shape(self, directory: Path) -> ShapeState | None:
        try:
            shape_log = ShapeLog.open(directory, self._chunk_bytes)
            meta = shape_log.read_meta()
        except Exception:  # a damaged directory is discarded, never fatal
            log.exception("cannot open stored shape %s; discarding it", directory.name)
            return None
        if meta is None or meta.get("status") != "ready" or not shape_log.snapshot_complete:
            return None
        definition = CanonicalShape.from_json(meta["definition"])
        try:
            table, where, selected, tables = await self._compile(definition)
            if where is not None and where.has_subqueries:
                await self._publish_inner(definition, tables)
        except InvalidRequest as exc:
            log.warning("stored shape %s no longer valid (%s)", directory.name, exc)
            return None
        shape = ShapeState(meta["handle"], definition, table, where, selected, shape_log)
        shape.inner_tables = tables
        shape.initial_views = meta.get("views")
        shape.status = "ready"
        shape.snapshot = snapshot_from_meta(meta)
        shape.snapshot_lsn = snapshot_lsn_from_meta(meta)
        shape.ready.set()
        return shape

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
        # The cached description of a table stays current only while shapes of it are routed
        # (relation messages, schema reconciliation): a table's first shape reads it again, so
        # a table renamed or dropped after its last shape went is not taken for existing.
        fresh = not self._router.has_table(definition.relation)
        table, where, selected, tables = await self._compile(definition, fresh=fresh)
        await self._publish(definition, table)
        if where is not None and where.has_subqueries:
            await self._publish_inner(definition, tables)
        handle = self.new_handle(definition)
        # Creating files waits for the filesystem: not on the event loop. Nothing of the new
        # log is durable, nor needs to be, until its snapshot is sealed (a restart discards a
        # directory without ready metadata).
        shape_log = await self._log_creator.create(self.shapes_dir / handle)
        shape = ShapeState(handle, definition, table, where, selected, shape_log)
        shape.inner_tables = tables
        self.register(shape)
        self.created += 1
        log.debug("created shape %s for %s", handle, describe(definition))
        if shape.subquery:
            self._subqueries.attach(shape, tables, restored=False)
        else:
            self._start_snapshot(shape)
        return shape

    async def _publish_inner(
        self, definition: CanonicalShape, tables: dict[tuple[str, str], Table]
    ) -> None:
        """Add the tables of a shape's subqueries to the publication."""
        for key, inner in sorted(tables.items()):
            if key != definition.relation:
                await self._publish(definition, inner)

    async def _compile(
        self, definition: CanonicalShape, *, fresh: bool = False
    ) -> tuple[Table, Where | None, tuple[str, ...], dict[tuple[str, str], Table]]:
        table = await self._describe_table(definition.schema, definition.table, fresh=fresh)
        selected = _selected_columns(table, definition.columns)
        where = None
        tables: dict[tuple[str, str], Table] = {}
        if definition.where is not None:
            for schema, name in sorted(subquery_tables(definition.where)):
                tables[(schema, name)] = await self._describe_table(schema, name, fresh=fresh)
            where = parse_where(
                definition.where,
                table.by_name,
                definition.params_map,
                tables={key: inner.by_name for key, inner in tables.items()} if tables else None,
                limits=self._subqueries.limits,
            )
        return table, where, selected, tables

    def new_handle(self, definition: CanonicalShape) -> str:
        now_us = max(time.time_ns() // 1000, self._last_handle_us + 1)
        self._last_handle_us = now_us
        return f"{definition.digest()}-{now_us}"

    def register(self, shape: ShapeState) -> None:
        if shape.status == "snapshotting":
            self._flush.snapshotting.add(shape)
        self.shapes[shape.handle] = shape
        self.by_definition[shape.definition] = shape
        self._applier.join(shape)

    def route(self, shape: ShapeState) -> None:
        """Make ``shape`` reachable by the changes of its table now."""
        route(self._router, shape)

    def delete(
        self, shape: ShapeState, reason: str, *, cause: RemovalCause = "invalidated"
    ) -> None:
        """Retire a shape for good and remove its files."""
        if shape.status == "gone" and shape.handle not in self.shapes:
            return
        log.info("removing shape %s (%s)", shape.handle, reason)
        self.removed[cause] = self.removed.get(cause, 0) + 1
        self._router.remove(shape)
        self.shapes.pop(shape.handle, None)
        if self.by_definition.get(shape.definition) is shape:
            del self.by_definition[shape.definition]
        self._flush.dirty.discard(shape)
        self._applier.forget(shape)
        self._subqueries.detach(shape)
        shape.go_away()
        shape.log.delete()

    def restart_after_truncate(self, shape: ShapeState) -> None:
        """Replace ``shape`` by one whose snapshot is the empty table, as of this transaction.

        The new shape is routed at once, so the truncating transaction's later changes and every
        later transaction reach it; clients of the old handle get a 409 that points to it.
        """
        if shape.subquery:  # its sets and moves start over with a new shape
            self.delete(shape, "the table was truncated")
            return
        definition = shape.definition
        txn_xid = self._applier.txn_xid
        handle = self.new_handle(definition)
        shape_log = ShapeLog.create(self.shapes_dir / handle, self._chunk_bytes)
        fresh = ShapeState(handle, definition, shape.table, shape.where, shape.selected, shape_log)
        xid = shape.snapshot.widen(txn_xid) if shape.snapshot else txn_xid
        info = Snapshot(xid + 1, xid + 1, ())
        shape_log.finish_snapshot(messages.snapshot_end(info.xmin, info.xmax, info.xip))
        fresh.finish_snapshot(info, 0)
        self.delete(shape, "the table was truncated")
        self.shapes[handle] = fresh
        self.by_definition[definition] = fresh
        self.route(fresh)
        log.info("shape %s restarts as %s after a truncate", shape.handle, handle)


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
