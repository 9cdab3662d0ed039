"""One shape whose ``where`` has subqueries: its views, held transactions, move-in and move-out.

Layer: ``syncd``.

Theory of operation
-------------------
The shape's log is judged against *views*: for each subquery, the value set that the rows in the
log were selected with. In the steady state the views are the materialisers' published sets
themselves (``syncd.materializer``, shared by every shape), and each committed transaction that
touches the shape is converted with them (``shapes.convert_subquery``) and appended whole.

Move-out. A transaction after which values left a subquery's set is appended with its own
changes (judged with the views before the move) followed by one ``move-out`` event whose patterns
are the tags of the values that left; clients drop the rows from the patterns, no query is run.

Move-in. A transaction after which values entered a set cannot be judged alone: the rows of the
outer table that now match were written long ago. The shape then *buffers*: it keeps private
views (those its log reflects, ``before``), holds that transaction and every later one raw, and
runs a move-in query in a new ``REPEATABLE READ`` snapshot S: the rows that match with the new
views (``after``) and did not match with ``before`` minus the values that left. The held
transactions are then split where S splits them: those S already contains (*pre*: a prefix,
since commit order is visibility order) and the rest (*post*). When no held transaction is known
to be outside S yet, the split waits until one arrives or the stream has passed the WAL position
read with S. The log then gets, as **one** log transaction (so a reader never sees half of it,
and a crash keeps all or nothing): the pre transactions judged with ``before``; a ``move-out``
event for values that left; a ``move-in`` event, the query's rows as ``is_move_in`` inserts and a
``snapshot-end`` with S (only when there are rows). The post transactions follow, one by one,
judged with ``after``, and may start the next move. Nothing is missed or doubled: a change S
contains is in the rows, judged (and so seen by clients) with the old views only; a change S
lacks comes after the rows, judged with the new ones.

The query's ``after`` is the views as of the moment it was issued. If a pre transaction received
after that moment moved a set again, the rows do not match S's state and the query is issued
again with the newer views (the held transactions stay held). If more than ``max_held``
transactions pile up the shape is retired (its clients refetch).

The initial snapshot is the same operation from nothing: the shape's first query selects with the
published sets (as array parameters, not SQL subqueries, so the rows and the views agree
exactly), pre transactions are dropped (S contains them) and any move of a set since the query
was issued is moved in or out right after. After a restart the views come from the shape's view
journal (``syncd.view_journal``) and, once the materialisers are loaded again, the difference is
moved in and out the same way: the shape keeps its handle and offsets.

Collaborators: ``syncd.move_in_query`` runs the queries, ``syncd.move_encoding`` turns changes
and moves into log entries and events, ``syncd.view_journal`` stores the views.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol

import psycopg
from psycopg.rows import TupleRow

from shapes import messages
from shapes.convert_subquery import (
    CachedTags,
    SubqueryView,
)
from shapes.offset import LogOffset
from shapes.where import Where
from shapes.xid import Snapshot
from syncd.materializer import HeldTransaction, Materializer, Move, RawChange, ValueKey
from syncd.move_encoding import MoveEncoder
from syncd.move_in_query import MoveInQuery, QueryRunner
from syncd.shape_state import ShapeState
from syncd.view_journal import Texts, ViewJournal

log = logging.getLogger("syncd.subquery")

STACK_ID = "single_stack"
"""Tags are hashed with this and the shape's handle (clients treat them as opaque)."""

Views = list[AbstractSet[ValueKey]]
Mode = Literal["loading", "waiting", "steady", "buffering", "gone"]


class SubqueryHost(Protocol):
    """What a subquery shape needs of the engine."""

    max_held: int

    def reading(
        self, relation: tuple[str, str]
    ) -> AbstractAsyncContextManager[psycopg.AsyncConnection[TupleRow]]: ...

    def spawn(self, coro: Any) -> None: ...

    def last_seen_lsn(self) -> int: ...

    written: Callable[[ShapeState], None]
    """Called with a shape whose log was appended to (it needs a flush)."""

    def retire(self, shape: ShapeState, reason: str) -> None: ...

    def set_residual(self, shape: ShapeState, residual: bool) -> None: ...

    def mode_changed(self, shape: SubqueryShape) -> None: ...


def _copy(views: Sequence[AbstractSet[ValueKey]]) -> Views:
    return [set(v) for v in views]


def _apply(views: Views, moves: dict[int, Move]) -> None:
    for k, (entered, left) in moves.items():
        target = views[k]
        assert isinstance(target, set)
        target.difference_update(left)
        target.update(entered)


class SubqueryShape:
    """The subquery side of one live shape (see the module docstring)."""

    __slots__ = (
        "_mode",
        "dependencies",
        "encoder",
        "held",
        "host",
        "journal",
        "query",
        "runner",
        "shape",
        "shared",
        "view",
        "views",
        "where",
    )

    def __init__(
        self,
        shape: ShapeState,
        where: Where,
        dependencies: list[Materializer],
        host: SubqueryHost,
    ) -> None:
        self.shape = shape
        self.where = where
        self.dependencies = dependencies
        self.host = host
        left_columns = sorted({c for p in where.positions for c in p.columns})
        self.view = SubqueryView(
            shape.view, CachedTags(where, left_columns), STACK_ID + shape.handle
        )
        self.views: Views = [set() for _ in dependencies]
        self.shared = False
        self.held: list[HeldTransaction] = []
        self._mode: Mode = "loading"
        host.mode_changed(self)
        self.query: MoveInQuery | None = None
        self.journal = ViewJournal(shape.log.directory)
        self.encoder = MoveEncoder(shape, where, self.view)
        columns = set(shape.selected) | set(shape.view.key_columns) | set(where.columns)
        self.runner = QueryRunner(
            shape, where, self.view, self.encoder, sorted(columns), host.reading
        )

    def __repr__(self) -> str:
        return f"<SubqueryShape {self.shape.handle} {self.mode}>"

    @property
    def mode(self) -> Mode:
        """``loading`` (first query), ``waiting`` (restored, materialisers loading),
        ``steady``, ``buffering`` (a move-in query in flight) or ``gone``."""
        return self._mode

    @mode.setter
    def mode(self, mode: Mode) -> None:
        if mode != self._mode:
            self._mode = mode
            self.host.mode_changed(self)

    # -- state --------------------------------------------------------------------------------

    @property
    def first_held_lsn(self) -> int | None:
        """The oldest held real transaction, or the commit whose move a nested materialiser is
        still reloading for (the confirmed LSN must not pass it; readers are told the shape has
        not seen it yet)."""
        first = next((txn.lsn for txn in self.held if txn.real), None)
        return self._with_reloads(first)

    @property
    def seen_cap(self) -> int | None:
        """The position readers may be told the shape has reached, if it is behind: below its
        first held transaction, a move between transactions included (at the commit before
        it), or a nested reload."""
        first = self._with_reloads(min((t.lsn for t in self.held), default=None))
        return None if first is None else max(first - 1, 0)

    def _with_reloads(self, first: int | None) -> int | None:
        for mat in self.dependencies:
            pending = mat.pending_lsn()
            if pending is not None and (first is None or pending < first):
                first = pending
        return first

    @property
    def deps_ready(self) -> bool:
        return all(m.status == "ready" for m in self.dependencies)

    def _published(self) -> Views:
        return [m.published for m in self.dependencies]

    def _go_shared(self) -> None:
        self.views = self._published()
        self.shared = True
        self.host.set_residual(self.shape, False)

    def _go_private(self) -> None:
        if self.shared:
            self.views = _copy(self.views)
            self.shared = False
        self.host.set_residual(self.shape, True)

    def restore(self, texts: Texts | None) -> None:
        """A shape restored from disk: its views from the journal; it waits for its
        materialisers, holding what arrives meanwhile."""
        self.mode = "waiting"
        views: Views = [set() for _ in self.dependencies]
        for k, values in enumerate(texts or []):
            if k < len(views):
                target = views[k]
                assert isinstance(target, set)
                for value in values:
                    target.add(None if value is None else self.where.value_from_texts(k, value))
        self.views = views
        self.shared = False
        self.host.set_residual(self.shape, True)

    def close(self) -> None:
        self.mode = "gone"
        self.held = []
        self.query = None

    # -- transactions ---------------------------------------------------------------------------

    def on_transaction(self, txn: HeldTransaction) -> None:
        """A committed transaction that touched the shape or moved one of its sets."""
        if self.mode == "gone":
            return
        if txn.real and self.mode != "loading" and self._replayed(txn.lsn, txn.xid):
            return
        if self.mode == "steady":
            self._process(txn)
            return
        self.held.append(txn)
        if len(self.held) > self.host.max_held:
            self.host.retire(self.shape, "too many transactions held during a move-in")

    def on_changes(self, lsn: int, xid: int, changes: list[RawChange]) -> None:
        """:meth:`on_transaction` of a steady shape for a transaction that moved none of its
        sets: its changes judged with the views and appended, in fewer steps."""
        if self._replayed(lsn, xid):
            return
        entries = self.encoder.encode_changes(lsn, xid, changes, self.views)
        if entries:
            self._append(lsn, entries)

    def _replayed(self, lsn: int, xid: int) -> bool:
        """A transaction the log or the snapshot already has (a replay after a restart)."""
        shape = self.shape
        return lsn <= shape.log.latest_offset.tx or shape.in_snapshot(lsn, xid)

    def after_commit(self) -> None:
        """Called once the materialisers have published the commit's moves: issue a query that
        a move-in in this commit asked for, or splice one that is done."""
        if self.mode == "gone":
            return
        if self.mode == "buffering" and self.query is None:
            self._issue(before=self.views, initial=False)
        else:
            self.try_splice()

    def deps_became_ready(self) -> None:
        """Every materialiser is loaded: start the first query, or reconcile after a restart."""
        if not self.deps_ready:
            return
        if self.mode == "loading" and self.query is None:
            self._issue(before=[set() for _ in self.dependencies], initial=True)
        elif self.mode == "waiting":
            self.mode = "buffering"
            self._reconcile()

    def _process(self, txn: HeldTransaction) -> None:
        """Steady state: judge ``txn`` with the views and append it (see the docstring)."""
        outer_out: dict[int, frozenset[ValueKey]] = {}
        if txn.moves:
            if self.encoder.null_flips(txn.moves):
                self.host.retire(self.shape, "a NULL entered or left a NOT IN subquery's set")
                self.mode = "gone"
                return
            outer_in, outer_out = self.encoder.outer_moves(txn.moves)
            if outer_in:
                # The query is issued by after_commit (or right away outside a commit), once
                # the published sets include this transaction's moves.
                self._go_private()
                self.mode = "buffering"
                self.held = [txn]
                self.query = None
                return
        entries = self.encoder.encode_changes(txn.lsn, txn.xid, txn.changes, self.views)
        if outer_out:
            op = txn.end_op
            txids = [txn.xid] if txn.real else []
            entries.append(op, self.encoder.move_out_event(outer_out, txids, self.views))
            after = _copy(self.views) if not self.shared else None
            if after is not None:
                _apply(after, txn.moves)
            texts = self.encoder.texts(
                after if after is not None else self._after_shared(txn.moves)
            )
            self.journal.record(LogOffset(self._tx_for(txn), op), texts)
            if after is not None:
                self.views = after
        if entries:
            self._append(self._tx_for(txn), entries)

    def _after_shared(self, moves: dict[int, Move]) -> Views:
        views = _copy(self.views)
        _apply(views, moves)
        return views

    def _tx_for(self, txn: HeldTransaction) -> int:
        """The log transaction of ``txn``: its commit LSN, or for a move between transactions
        one above the last commit before it (the next commit's LSN is larger still). A
        transaction that follows a splice holding a later commit (see :meth:`_split`) also
        goes one above the log's last."""
        latest = self.shape.log.latest_offset.tx
        if txn.real and txn.lsn > latest:
            return txn.lsn
        return max(latest, txn.lsn) + 1

    # -- move-in -------------------------------------------------------------------------------

    def _reconcile(self) -> None:
        """Bring the views to the published sets (after a restart or a late move)."""
        published = self._published()
        if all(self.views[k] == published[k] for k in range(len(published))):
            held, self.held = self.held, []
            self.mode = "steady"
            self._drain(held)
            if self.mode == "steady":
                self._go_shared()
            return
        self.mode = "buffering"
        self._go_private()
        self._issue(before=self.views, initial=False)

    def _drain(self, txns: list[HeldTransaction]) -> None:
        """Process ``txns`` in the steady state; a move-in among them holds the rest and
        issues its query."""
        for i, txn in enumerate(txns):
            if self.mode != "steady":
                self.held.extend(txns[i:])
                break
            self._process(txn)
        if self.mode == "buffering" and self.query is None:
            self._issue(before=self.views, initial=False)

    def _issue(self, *, before: Views, initial: bool) -> None:
        """Start a query from ``before`` to the published sets (never called between a
        commit's changes and its publication, so the sets include every held move)."""
        after = _copy(self._published())
        query = MoveInQuery(before=before, after=after, issued_at=len(self.held), initial=initial)
        log.debug(
            "shape %s: %s query issued with %d held",
            self.shape.handle,
            "initial" if initial else "move-in",
            len(self.held),
        )
        self.query = query
        self.host.set_residual(self.shape, True)
        self.host.spawn(self._run(query))

    async def _run(self, query: MoveInQuery) -> None:
        try:
            await self.runner.run(query)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.mode == "gone" or self.shape.status == "gone":
                return
            if query.initial:
                log.warning("snapshot of subquery shape %s failed: %s", self.shape.handle, exc)
                self.shape.fail(exc)
            else:
                log.warning("move-in query of shape %s failed: %s", self.shape.handle, exc)
            self.host.retire(self.shape, "its move-in query failed")
            return
        query.task_done = True
        if self.query is query and self.mode != "gone":
            self.try_splice()

    def try_splice(self) -> None:
        """Splice the query's result into the log once S's boundary is known."""
        query = self.query
        if query is None or not query.task_done or self.mode == "gone":
            return
        snapshot = query.snapshot
        assert snapshot is not None
        if self.host.last_seen_lsn() < query.wal_lsn:
            return  # a transaction S contains may still be on its way
        pre_at, post = split_held(self.held, snapshot)
        moved_late = any(self.held[i].moves for i in pre_at if i >= query.issued_at)
        if moved_late and not query.initial:
            self._issue(before=query.before, initial=False)
            return
        pre = [self.held[i] for i in pre_at]
        log.debug(
            "shape %s: splice %d pre, %d post, %d rows",
            self.shape.handle,
            len(pre),
            len(post),
            len(query.rows or []),
        )
        self.query = None
        self.held = []
        if query.initial:
            self._finish_initial(query, snapshot)
        else:
            if not self._splice(query, snapshot, pre):
                return  # the shape was retired
        self.mode = "steady"
        # The log now reflects the query's sets; when the initial rows used older sets than
        # S's (moved_late), the final reconcile moves the difference.
        self.views = query.after
        self.shared = False
        self._drain(post)
        if self.mode == "steady":
            self._reconcile()

    def _finish_initial(self, query: MoveInQuery, snapshot: Snapshot) -> None:
        shape = self.shape
        if shape.status == "gone":
            return
        shape.mark_ready(snapshot)  # its files and metadata are durable (_make_initial_durable)
        log.info("snapshot of subquery shape %s done (xmin %d)", shape.handle, snapshot.xmin)

    def _splice(self, query: MoveInQuery, snapshot: Snapshot, pre: list[HeldTransaction]) -> bool:
        """Append the pre transactions and the move block as one log transaction; ``False``
        when the shape had to be retired instead."""
        entries: list[bytes] = []
        txids: list[int] = []
        for txn in pre:
            encoded = self.encoder.encode_changes(txn.lsn, txn.xid, txn.changes, query.before)
            entries.extend(encoded.datas)
            if txn.moves and txn.real:
                txids.append(txn.xid)
        moves = {
            k: (frozenset(a - b), frozenset(b - a))
            for k, (b, a) in enumerate(zip(query.before, query.after, strict=True))
        }
        if self.encoder.null_flips(moves):
            self.host.retire(self.shape, "a NULL entered or left a NOT IN subquery's set")
            self.mode = "gone"
            return False
        outer_in, outer_out = self.encoder.outer_moves(moves)
        if outer_out:
            entries.append(self.encoder.move_out_event(outer_out, txids, query.before))
        if outer_in:
            patterns = self.encoder.patterns(outer_in)
            entries.append(messages.move_event("move-in", patterns, txids))
        rows = query.rows or []
        entries.extend(rows)
        if rows:
            entries.append(messages.snapshot_end(snapshot.xmin, snapshot.xmax, snapshot.xip))
        if not entries:
            return True
        tx = max([self.shape.log.latest_offset.tx + 1] + [self._tx_for(t) for t in pre])
        numbered = list(enumerate(entries))
        self.journal.record(LogOffset(tx, len(entries) - 1), self.encoder.texts(query.after))
        self._append(tx, numbered)
        return True

    # -- encoding ---------------------------------------------------------------------------

    def _append(self, tx: int, entries: Sequence[tuple[int, bytes]]) -> None:
        shape = self.shape
        if shape.status == "gone":
            return
        shape.log.append_transaction(tx, entries)
        shape.notifier.notify()
        self.host.written(shape)


def split_held(
    held: Sequence[HeldTransaction], snapshot: Snapshot
) -> tuple[list[int], list[HeldTransaction]]:
    """Where a query's snapshot S splits the held transactions: the indexes of those it
    contains, and the others in order.

    Mostly a prefix, but not always: Postgres may make a transaction visible before one that
    committed earlier in the WAL, so S can contain a transaction that follows one it lacks. A
    move between transactions (not ``real``) goes with what precedes it.
    """
    pre: list[int] = []
    post: list[HeldTransaction] = []
    for i, txn in enumerate(held):
        contained = snapshot.is_visible(txn.xid) if txn.real else not post
        if contained:
            pre.append(i)
        else:
            post.append(txn)
    return pre, post
