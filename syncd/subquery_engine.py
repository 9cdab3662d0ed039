"""The coordinator of subquery shapes: materialisers, routing of inner-table changes, commits.

Layer: ``syncd``.

Theory of operation
-------------------
Every dependency (inner ``SELECT``) used by any live shape has one
:class:`~syncd.materializer.Materializer`, shared by all the shapes (and nested materialisers)
that use it and dropped with the last of them. Inner-table changes are routed to materialisers
by value (``shapes.router``: ``user_id = $1`` files each materialiser under its user), so a
membership change reaches the one set it can move, and that set's subscribers, never a scan.

The change applier hands this coordinator every row change of a table that has materialisers
(:meth:`SubqueryEngine.on_change`) and, instead of converting them, every change routed to a
subquery shape (:meth:`SubqueryEngine.record`). At the commit (:meth:`SubqueryEngine.on_commit`):

1. each touched materialiser applies its changes and computes its move (values in, values out);
2. each subquery shape with changes in the transaction, or whose sets moved, gets the transaction
   (raw changes and moves) and judges it with the sets as they were before it;
3. the moves are published (the shared sets change in place, nested materialisers reload);
4. shapes that started a move-in issue their query, and finished ones splice.

A materialiser that is still loading holds its transactions; one that reloads (nested) keeps
its published set until the reload is done and then delivers the difference as a move between
transactions. A TRUNCATE or a schema change of an inner table retires every shape that depends
on it (its clients refetch; the new shape loads the set again).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from shapes.router import Router
from shapes.schema import Table
from shapes.subquery import Dependency, SubqueryLimits
from shapes.where import Where, parse_where
from syncd.materializer import HeldTransaction, Materializer, Move, RawChange, ValueLimitExceeded
from syncd.shape_state import ShapeState
from syncd.snapshot import begin_snapshot, stream_rows
from syncd.subquery_shape import SubqueryShape
from syncd.view_journal import ViewJournal

log = logging.getLogger("syncd.subquery")

TableKey = tuple[str, str]
Columns = dict[TableKey, Table]


class SubqueryEngine:
    """Materialisers and subquery shapes of one engine (see the module docstring)."""

    def __init__(
        self,
        *,
        reading: Callable[
            [TableKey], AbstractAsyncContextManager[psycopg.AsyncConnection[TupleRow]]
        ],
        spawn: Callable[[Awaitable[None]], None],
        last_seen_lsn: Callable[[], int],
        written: Callable[[ShapeState], None],
        retire: Callable[[ShapeState, str], None],
        outer_router: Router[ShapeState],
        is_pending: Callable[[ShapeState], bool] = lambda shape: False,
        max_values: int = 100_000,
        max_held: int = 1000,
        limits: SubqueryLimits | None = None,
    ) -> None:
        self._reading = reading
        self._spawn = spawn
        self._last_seen_lsn = last_seen_lsn
        self.written = written
        self._retire = retire
        self._outer_router = outer_router
        self._is_pending = is_pending
        """A shape registered during the open transaction, routed at its end."""
        self._dynamic: set[ShapeState] = set()
        """Subquery shapes filed under the value set of one of their subqueries."""
        self.max_values = max_values
        self.max_held = max_held
        self.limits = limits if limits is not None else SubqueryLimits()
        self.materializers: dict[Dependency, Materializer] = {}
        self.router: Router[Materializer] = Router()
        self.shapes: dict[ShapeState, SubqueryShape] = {}
        self.reloading: set[Materializer] = set()
        """Nested materialisers reloading after one of their sets moved."""
        self.unsteady: set[SubqueryShape] = set()
        """Shapes not in the steady state: only these hold transactions or wait to splice."""
        self.last_commit_lsn = 0
        self.stream_position = 0
        """The highest position up to which every committed transaction has been received."""
        self._txn_mats: dict[Materializer, list[RawChange]] = {}
        self._txn_shapes: dict[SubqueryShape, list[RawChange]] = {}

    # -- host interface for SubqueryShape -----------------------------------------------------

    def reading(
        self, relation: TableKey
    ) -> AbstractAsyncContextManager[psycopg.AsyncConnection[TupleRow]]:
        return self._reading(relation)

    def spawn(self, coro: Any) -> None:
        self._spawn(coro)

    def retire(self, shape: ShapeState, reason: str) -> None:
        self._retire(shape, reason)

    def set_residual(self, shape: ShapeState, residual: bool) -> None:
        """File a subquery shape as residual in the outer router (every row of its table
        reaches it) while it holds private views, or else under the value set of its routing
        subquery (``Where.routing_dependency``) or its ordinary index conditions."""
        if shape.gone or self._is_pending(shape):
            return
        router = self._outer_router
        relation, columns = shape.definition.relation, shape.table.by_name
        self._dynamic.discard(shape)
        if residual:
            router.add(shape, relation, None, columns)
            return
        sq = self.shapes.get(shape)
        routing = shape.where.routing_dependency if shape.where is not None else None
        dynamic = None
        if sq is not None and routing is not None and routing[1] in columns:
            dynamic = (routing[1], sq.views[routing[0]])
            self._dynamic.add(shape)
        router.add(shape, relation, shape.where, columns, dynamic)

    def _route_move(self, shape: ShapeState, move: Move) -> None:
        """A set a steady subquery shape is filed under moved: refile its values."""
        if shape in self._dynamic:
            self._outer_router.move(shape, move[0], move[1])

    def mode_changed(self, sq: SubqueryShape) -> None:
        """Keep :attr:`unsteady` (the shapes that may hold transactions or wait to splice)."""
        if sq.mode in ("steady", "gone"):
            self.unsteady.discard(sq)
        else:
            self.unsteady.add(sq)

    # -- shapes ---------------------------------------------------------------------------------

    def first_held_lsn(self) -> int | None:
        """The oldest transaction a shape holds (the confirmed LSN must not pass it)."""
        first: int | None = None
        for sq in self.unsteady.union(self.reloading_dependents()):
            lsn = sq.first_held_lsn
            if lsn is not None and (first is None or lsn < first):
                first = lsn
        return first

    def attach(self, shape: ShapeState, tables: Columns, *, restored: bool) -> SubqueryShape:
        """Give a new (or restored) shape its materialisers; a new shape's first query runs
        once they are loaded, a restored one reconciles its stored views with them."""
        where = shape.where
        assert where is not None and where.has_subqueries
        deps = [
            self._materializer(dep, where, k, tables) for k, dep in enumerate(where.dependencies)
        ]
        sq = SubqueryShape(shape, where, deps, self)
        self.shapes[shape] = sq
        for mat in deps:
            mat.subscribers.add(sq)
        if restored:
            texts = ViewJournal(shape.log.directory).views_at(shape.log.latest_offset)
            sq.restore(texts if texts is not None else shape.initial_views)
        if sq.deps_ready:
            sq.deps_became_ready()
        return sq

    def detach(self, shape: ShapeState) -> None:
        """The shape is gone: drop it and the materialisers nothing uses any more."""
        sq = self.shapes.pop(shape, None)
        if sq is None:
            return
        sq.close()
        self.unsteady.discard(sq)
        self._dynamic.discard(shape)
        self._txn_shapes.pop(sq, None)
        for mat in sq.dependencies:
            self._unsubscribe(mat, sq)

    def _unsubscribe(self, mat: Materializer, subscriber: object) -> None:
        mat.subscribers.discard(subscriber)
        if mat.subscribers:
            return
        mat.status = "gone"
        self.reloading.discard(mat)
        self.materializers.pop(mat.dependency, None)
        self.router.remove(mat)
        self._txn_mats.pop(mat, None)
        for inner in mat.dependencies:
            self._unsubscribe(inner, mat)

    def _materializer(self, dep: Dependency, outer: Where, k: int, tables: Columns) -> Materializer:
        existing = self.materializers.get(dep)
        if existing is not None:
            return existing
        table = tables[(dep.schema, dep.table)]
        where = None
        if dep.where is not None:
            inner_tables = {key: t.by_name for key, t in tables.items()}
            where = parse_where(dep.where, table.by_name, None, tables=inner_tables)

        def value_of(row: dict[str, str | None], _where: Where = outer, _k: int = k) -> Any:
            return _where.dependency_value(_k, row)

        mat = Materializer(dep, table, where, value_of, self.max_values)
        self.materializers[dep] = mat
        if where is not None and where.has_subqueries:
            mat.dependencies = [
                self._materializer(inner, where, j, tables)
                for j, inner in enumerate(where.dependencies)
            ]
            for inner in mat.dependencies:
                inner.subscribers.add(mat)
        self.router.add(mat, (dep.schema, dep.table), where, table.by_name)
        self._spawn(self._load(mat))
        return mat

    # -- loading --------------------------------------------------------------------------------

    async def _load(self, mat: Materializer) -> None:
        """(Re)load a materialiser's rows in a snapshot stitched to the stream."""
        for inner in mat.dependencies:  # nested: the inner sets first
            await inner.loaded.wait()
        if mat.gone:
            return
        mat.status = "loading"
        mat.held = []
        try:
            async with self._reading((mat.table.schema, mat.table.name)) as conn:
                snapshot, _wal_lsn = await begin_snapshot(conn)
                where_sql = mat.where.sql if mat.where is not None else None
                rows: list[TupleRow] = []
                async for batch in stream_rows(conn, mat.table, mat.columns, where_sql):
                    rows.extend(batch)
                    if len(rows) > 4 * mat.max_values + 1000:
                        raise ValueLimitExceeded(mat.max_values)
                await conn.execute("COMMIT")
            mat.clear()
            mat.load_rows(rows)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if mat.gone:
                return
            log.warning("loading subquery %s failed: %s", mat.describe(), exc)
            self._fail_dependents(mat, exc)
            return
        if mat.gone:
            return
        mat.snapshot = snapshot
        for txn in mat.held:
            if not snapshot.is_visible(txn.xid):
                for change in txn.changes:
                    mat.apply(change)
        mat.held = []
        mat.filtering = True
        mat.status = "ready"
        mat.loaded.set()
        try:
            move = mat.diff_published()
            if move is not None:
                self._publish_between(mat, move)
        finally:
            mat.pending_since = None
            self.reloading.discard(mat)
        for sub in list(mat.subscribers):
            if isinstance(sub, SubqueryShape):
                self._guarded(sub, sub.deps_became_ready)
        log.info("subquery %s loaded: %d values", mat.describe(), len(mat.published))

    def _fail_dependents(self, mat: Materializer, exc: BaseException) -> None:
        for sq in self._dependents(mat):
            if sq.shape.status == "snapshotting":
                sq.shape.fail(exc)
            self._retire(sq.shape, f"its subquery could not be loaded: {exc}")

    def _dependents(self, mat: Materializer) -> list[SubqueryShape]:
        found: list[SubqueryShape] = []
        seen: set[int] = set()
        stack: list[Any] = [mat]
        while stack:
            node = stack.pop()
            for sub in list(node.subscribers):
                if id(sub) in seen:
                    continue
                seen.add(id(sub))
                if isinstance(sub, SubqueryShape):
                    found.append(sub)
                else:
                    stack.append(sub)
        return found

    def _publish_between(self, mat: Materializer, move: Move) -> None:
        """A move outside any transaction (a load or reload): deliver, publish, follow up."""
        subscribers = list(mat.subscribers)
        # the commit that started a reload, so that readers wait for its move
        cause = mat.pending_since if mat.pending_since is not None else self.last_commit_lsn
        for sub in subscribers:
            if isinstance(sub, SubqueryShape) and sub.mode != "loading":
                k = sub.dependencies.index(mat)
                txn = HeldTransaction(cause, 0, [], {k: move}, real=False)
                self._guarded(sub, sub.on_transaction, txn)
        mat.publish(move)
        self._follow_move(mat, move)
        for sub in subscribers:
            if isinstance(sub, SubqueryShape):
                self._guarded(sub, sub.after_commit)

    def _guarded(self, sq: SubqueryShape, step: Callable[..., None], *args: Any) -> None:
        """Run one step of a shape's transaction or move; a failure retires that shape alone."""
        try:
            step(*args)
        except Exception:
            log.exception("subquery shape %s failed on a transaction or move", sq.shape.handle)
            self._retire(sq.shape, "it failed on a transaction or move")

    def _follow_move(self, mat: Materializer, move: Move) -> None:
        """After a publication: refile the steady shapes routed by this set, reload the
        nested materialisers that read it."""
        for sub in list(mat.subscribers):
            if isinstance(sub, Materializer):
                self._reload(sub)
            elif sub.shared and sub.mode == "steady":
                routing = sub.where.routing_dependency
                if routing is not None and sub.dependencies[routing[0]] is mat:
                    self._route_move(sub.shape, move)

    def _reload(self, mat: Materializer) -> None:
        if mat.pending_since is None:
            mat.pending_since = self.last_commit_lsn
            self.reloading.add(mat)
        if mat.status == "ready":
            mat.status = "loading"
            self._spawn(self._load(mat))

    # -- the stream -----------------------------------------------------------------------------

    def has_table(self, table: TableKey) -> bool:
        return self.router.has_table(table)

    def on_change(self, table: TableKey, change: RawChange) -> None:
        """A row change of a table some materialiser reads."""
        mats: set[Materializer] = set()
        if change.old is not None:
            mats |= self.router.affected(table, change.old)
        if change.new is not None:
            mats |= self.router.affected(table, change.new)
        for mat in mats:
            self._txn_mats.setdefault(mat, []).append(change)

    def record(self, shape: ShapeState, change: RawChange) -> None:
        """A row change routed to a subquery shape (judged at the commit)."""
        sq = self.shapes.get(shape)
        if sq is not None:
            self._txn_shapes.setdefault(sq, []).append(change)

    def cut_off(self) -> None:
        """The open transaction will be sent again."""
        self._txn_mats = {}
        self._txn_shapes = {}

    def on_commit(self, lsn: int, xid: int, end_op: int) -> None:
        """Steps 1-4 of the module docstring for one committed transaction."""
        self.last_commit_lsn = lsn
        txn_mats, self._txn_mats = self._txn_mats, {}
        txn_shapes, self._txn_shapes = self._txn_shapes, {}
        if not txn_mats and not txn_shapes:
            return
        moves: dict[Materializer, Move] = {}
        for mat, changes in txn_mats.items():
            if mat.status == "gone":
                continue
            if mat.status == "loading":
                mat.held.append(HeldTransaction(lsn, xid, changes))
                continue
            if mat.filtering and mat.snapshot is not None:
                if mat.snapshot.is_visible(xid):
                    continue
                if mat.snapshot.is_after(xid):
                    mat.filtering = False
            try:
                for change in changes:
                    mat.apply(change)
            except Exception as exc:
                log.warning("subquery %s failed on a row: %s", mat.describe(), exc)
                self._fail_dependents(mat, exc)
                continue
            if mat.over_limit:
                self._fail_dependents(mat, ValueLimitExceeded(mat.max_values))
                continue
            move = mat.delta()
            if move is not None:
                moves[mat] = move
        moved: dict[SubqueryShape, dict[int, Move]] = {}
        for mat, move in moves.items():
            for sub in mat.subscribers:
                if isinstance(sub, SubqueryShape):
                    moved.setdefault(sub, {})[sub.dependencies.index(mat)] = move
        # A steady shape none of whose sets moved has only its changes to append (the common
        # case, made cheap); it holds no query, so it needs no after_commit either.
        touched: list[SubqueryShape] = []
        for sq, changes in txn_shapes.items():
            if sq.mode == "steady" and sq not in moved:
                self._guarded(sq, sq.on_changes, lsn, xid, changes)
            else:
                txn = HeldTransaction(lsn, xid, changes, moved.get(sq, {}), end_op=end_op)
                self._guarded(sq, sq.on_transaction, txn)
                touched.append(sq)
        for sq, sq_moves in moved.items():
            if sq not in txn_shapes:
                txn = HeldTransaction(lsn, xid, [], sq_moves, end_op=end_op)
                self._guarded(sq, sq.on_transaction, txn)
                touched.append(sq)
        for mat, move in moves.items():
            mat.publish(move)
            self._follow_move(mat, move)
        for sq in touched:
            if sq.mode != "gone":
                self._guarded(sq, sq.after_commit)

    def on_position(self, lsn: int) -> None:
        """The stream has received everything committed before ``lsn`` (a keepalive between
        transactions, or a position mark): splices waiting for their boundary may go now."""
        if lsn <= self.stream_position:
            return
        self.stream_position = lsn
        for sq in list(self.unsteady):
            if sq.query is not None and sq.query.task_done and sq.mode != "gone":
                sq.try_splice()

    def last_seen_lsn(self) -> int:
        return max(self._last_seen_lsn(), self.stream_position)

    def reloading_dependents(self) -> set[SubqueryShape]:
        """The shapes some of whose (nested) materialisers are reloading."""
        found: set[SubqueryShape] = set()
        for mat in self.reloading:
            found.update(self._dependents(mat))
        return found

    def schema_dependents(
        self, table: TableKey, columns: dict[str, tuple[int, int]] | None
    ) -> list[ShapeState]:
        """The shapes whose subqueries read a column of ``table`` that is gone or has another
        type now (``columns``: the table's columns and types, ``None`` when it was dropped)."""
        found: list[ShapeState] = []
        for mat in self.router.shapes_for_table(table):
            known = {c.name: (c.type_oid, c.type_mod) for c in mat.table.columns}
            if columns is None or any(columns.get(c) != known.get(c) for c in mat.columns):
                found.extend(sq.shape for sq in self._dependents(mat))
        return found

    def dependents_of_table(self, table: TableKey) -> list[ShapeState]:
        """Every shape that depends on a materialiser of ``table`` (truncates, schema changes)."""
        found: list[ShapeState] = []
        for mat in self.router.shapes_for_table(table):
            found.extend(sq.shape for sq in self._dependents(mat))
        return found
