"""Materialised subquery results: the value set of one inner ``SELECT``, shared by every shape
that uses it.

Layer: ``syncd``.

Theory of operation
-------------------
A shape whose ``where`` holds ``col IN (SELECT c FROM t WHERE ...)`` depends on the set of ``c``
values of the rows of ``t`` that match the inner clause. A :class:`Materializer` keeps that set
for one such inner ``SELECT`` (a :class:`shapes.subquery.Dependency`), once for all the shapes
that use it: for every matching row its value, and for every value how many rows carry it.

It is loaded by a snapshot query (``REPEATABLE READ``, stitched to the replication stream by
``pg_current_snapshot()`` exactly as shape snapshots are, see ``syncd.snapshot``): transactions
that arrive while it runs are held and, once the rows are in, applied unless the snapshot
already contains them. After that every change of ``t`` that the router sends it updates the
counts at once, while :attr:`Materializer.published` (what the dependent shapes read) changes
only at the transaction's commit: during a transaction every shape judges rows with the set as
of the previous commit. At the commit :meth:`Materializer.delta` gives the values that entered
(count 0 to 1) and left (1 to 0); a value that enters and leaves within one transaction moves
nowhere. The coordinator (``syncd.subquery_engine``) hands the move to the dependent shapes
before :meth:`Materializer.publish` applies it.

Nested subqueries. An inner clause may hold subqueries itself; its own dependencies are
materialisers too, and a row's inclusion is judged against their published sets. When one of
them moves, this materialiser reloads (a new snapshot query, stitched the same way) and
publishes the difference between the old and the new set as a move of its own. Dependent
shapes are exact at every point for one level of subqueries; through nested ones they follow
with the delay of that reload.

Materialisers are not stored: after a restart each one is loaded again, and every dependent
shape compares the set its log reflects (``syncd.view_journal``) with the new one and moves
the difference in or out (``syncd.subquery_shape``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from shapes import messages
from shapes.errors import InvalidRequest
from shapes.schema import Table
from shapes.subquery import Dependency
from shapes.where import Where
from shapes.xid import Snapshot

log = logging.getLogger("syncd.subquery")

TextRow = dict[str, str | None]
ValueKey = Hashable
Move = tuple[frozenset[ValueKey], frozenset[ValueKey]]
"""``(values that entered, values that left)``."""


ChangeKind = Literal["insert", "update", "delete"]


@dataclass(slots=True)
class RawChange:
    """One row change as the stream sent it (text values); ``op`` its position."""

    kind: ChangeKind
    old: TextRow | None
    new: TextRow | None
    old_full: bool
    op: int


@dataclass(slots=True)
class HeldTransaction:
    """A transaction kept raw until it can be judged: its changes of one table and the moves
    of the dependencies it caused (dependency index -> move)."""

    lsn: int
    xid: int
    changes: list[RawChange]
    moves: dict[int, Move] = field(default_factory=dict)
    end_op: int = 0
    """The transaction's op counter at its end: positions from here on are free."""
    real: bool = True
    """False for a move that came between transactions (a nested reload)."""


class ValueLimitExceeded(InvalidRequest):
    """A subquery's value set grew past the configured limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            "where",
            f"a subquery of this shape matches more than {limit} values "
            f"(limit max_subquery_values={limit})",
        )


class Materializer:
    """The shared, counted value set of one dependency."""

    def __init__(
        self,
        dependency: Dependency,
        table: Table,
        where: Where | None,
        value_of: Callable[[TextRow], ValueKey],
        max_values: int,
    ) -> None:
        self.dependency = dependency
        self.table = table
        self.where = where
        self._value_of = value_of
        self.max_values = max_values
        key_columns = table.primary_key
        if not any(c.pk_index is not None for c in table.columns):
            key_columns = tuple(sorted(c.name for c in table.columns))
        self.key_columns: tuple[str, ...] = tuple(key_columns)
        self._key_prefix = messages.relation_key_prefix(table.schema, table.name)
        needed = set(self.key_columns) | set(dependency.columns)
        if where is not None:
            needed |= set(where.columns)
        self.columns: tuple[str, ...] = tuple(sorted(needed))
        self.rows: dict[str, ValueKey] = {}
        self.counts: dict[ValueKey, int] = {}
        self.published: set[ValueKey] = set()
        self.version = 0
        self.status: Literal["loading", "ready", "gone"] = "loading"
        self.failure: BaseException | None = None
        self.dependencies: list[Materializer] = []
        """The materialisers of this one's own subqueries (nested)."""
        self.subscribers: set[Any] = set()
        """What depends on this set: subquery shapes and nested materialisers."""
        self.snapshot: Snapshot | None = None
        self.filtering = True
        """Transactions the snapshot contains are still to be skipped."""
        self.held: list[HeldTransaction] = []
        """Transactions received while loading."""
        self._touched: set[ValueKey] = set()
        self.loaded = asyncio.Event()
        """Set once the first load is done."""
        self.pending_since: int | None = None
        """While a reload runs: the commit whose move started it (shapes wait for it)."""

    def pending_lsn(self) -> int | None:
        """The oldest commit whose effect on this set (or a nested one) is still reloading."""
        found = self.pending_since
        for inner in self.dependencies:
            lsn = inner.pending_lsn()
            if lsn is not None and (found is None or lsn < found):
                found = lsn
        return found

    @property
    def gone(self) -> bool:
        """Dropped (no shape uses it any more)."""
        return self.status == "gone"

    def __repr__(self) -> str:
        return f"<Materializer {self.describe()} {self.status}>"

    def describe(self) -> str:
        dep = self.dependency
        text = f"SELECT {', '.join(dep.columns)} FROM {dep.schema}.{dep.table}"
        return text + (f" WHERE {dep.where}" if dep.where else "")

    @property
    def views(self) -> list[set[ValueKey]]:
        """The published sets of this materialiser's own dependencies."""
        return [m.published for m in self.dependencies]

    # -- rows --------------------------------------------------------------------------------

    def includes(self, row: TextRow) -> bool:
        """Whether an inner row matches the inner clause (against the nested published sets)."""
        where = self.where
        if where is None:
            return True
        if where.has_subqueries:
            return bool(where.evaluate(row, self.views).included)
        return where.matches(row)

    def row_key(self, row: TextRow) -> str:
        return messages.row_key(self._key_prefix, row, self.key_columns)

    def _add(self, key: str, value: ValueKey) -> None:
        self.rows[key] = value
        count = self.counts.get(value, 0)
        self.counts[value] = count + 1
        if count == 0:
            self._touched.add(value)

    def _remove(self, key: str) -> None:
        if key not in self.rows:
            return
        value = self.rows.pop(key)
        count = self.counts[value] - 1
        if count:
            self.counts[value] = count
        else:
            del self.counts[value]
            self._touched.add(value)

    def apply(self, change: RawChange) -> None:
        """Apply one change of the inner table to the rows and counts (not yet published)."""
        if change.old is not None:
            self._remove(self.row_key(change.old))
        elif change.kind == "update" and change.new is not None:
            self._remove(self.row_key(change.new))
        if change.new is not None and change.kind != "delete" and self.includes(change.new):
            self._add(self.row_key(change.new), self._value_of(change.new))

    def load_rows(self, rows: Sequence[Sequence[str | None]]) -> None:
        """Add snapshot rows (in :attr:`columns` order) that match the inner clause."""
        for values in rows:
            row = dict(zip(self.columns, values, strict=True))
            if self.includes(row):
                self._add(self.row_key(row), self._value_of(row))
        if len(self.counts) > self.max_values:
            raise ValueLimitExceeded(self.max_values)

    def clear(self) -> None:
        """Forget every row (before a reload)."""
        self.rows = {}
        self.counts = {}
        self._touched = set()

    # -- commits -----------------------------------------------------------------------------

    def delta(self) -> Move | None:
        """The move of the open transaction: values that entered and left the set."""
        if not self._touched:
            return None
        published, counts = self.published, self.counts
        entered = frozenset(v for v in self._touched if v in counts and v not in published)
        left = frozenset(v for v in self._touched if v not in counts and v in published)
        self._touched = set()
        if not entered and not left:
            return None
        return entered, left

    def publish(self, move: Move) -> None:
        """Apply a move to :attr:`published` (in place: shapes hold the same set)."""
        entered, left = move
        self.published.difference_update(left)
        self.published.update(entered)
        self.version += 1

    def diff_published(self) -> Move | None:
        """After a reload: the difference between the counts and :attr:`published`."""
        self._touched = set()
        entered = frozenset(v for v in self.counts if v not in self.published)
        left = frozenset(v for v in self.published if v not in self.counts)
        if not entered and not left:
            return None
        return entered, left

    @property
    def over_limit(self) -> bool:
        return len(self.counts) > self.max_values
