"""Schema changes and truncates: the cached table descriptions and the shapes they invalidate.

Layer: ``syncd``.

Theory of operation
-------------------
Table descriptions are loaded from the catalog once and cached (:meth:`describe_table`) until
something says the table changed: a Relation message of the stream (columns added, dropped or
retyped, or the table renamed), a query that failed because the schema changed under it
(:meth:`recheck_table`), or the periodic comparison of every synced table with the catalog
(:meth:`reconcile_schemas`, every ``schema_check_interval``), which catches DDL that sends no
WAL, such as ``DROP TABLE``. A change retires the shapes it affects (``shapes.schema_change``);
a dropped, renamed or replaced table retires all of its shapes. A Truncate restarts each shape
of the table as one whose snapshot is the empty table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

import psycopg
from psycopg.rows import TupleRow

from shapes.errors import InvalidRequest
from shapes.router import Router
from shapes.schema import Table
from shapes.schema_change import diff_columns, is_affected
from syncd.catalog import PublicationManager, load_table
from syncd.change_applier import ChangeApplier, Relation, TableKey
from syncd.errors import DatabaseUnavailable
from syncd.pgoutput import messages as pg
from syncd.shape_state import ShapeState

log = logging.getLogger("syncd.engine")

Connect = Callable[[], contextlib.AbstractAsyncContextManager[psycopg.AsyncConnection[TupleRow]]]


class SchemaReconciler:
    """Keeps the cached table descriptions and the shapes in line with the tables' schemas."""

    def __init__(
        self,
        *,
        applier: ChangeApplier,
        router: Router[ShapeState],
        shapes: Callable[[], Iterable[ShapeState]],
        publications: PublicationManager,
        connection: Connect,
        retire: Callable[[ShapeState, str], None],
        restart_after_truncate: Callable[[ShapeState], None],
        dependents: Callable[[TableKey], list[ShapeState]] = lambda table: [],
        schema_dependents: Callable[
            [TableKey, dict[str, tuple[int, int]] | None], list[ShapeState]
        ] = lambda table, columns: [],
    ) -> None:
        self._applier = applier
        self._router = router
        self._shapes = shapes
        self._publications = publications
        self._connection = connection
        self._retire = retire
        self._restart_after_truncate = restart_after_truncate
        self._dependents = dependents
        self._schema_dependents = schema_dependents
        """The shapes whose subqueries read columns of a table that changed (None: dropped)."""
        """The shapes whose subqueries read a table."""
        self.tables: dict[TableKey, Table] = {}
        """Table descriptions by ``(schema, name)``."""

    async def describe_table(self, schema: str, name: str, *, fresh: bool = False) -> Table:
        """The table's description, cached until a relation message says it changed.

        ``fresh``: read it from the catalog even when cached. The cache is only kept current
        while shapes of the table are routed (relation messages, :meth:`reconcile_schemas`);
        a table's first shape asks for a fresh description.
        """
        cached = None if fresh else self.tables.get((schema, name))
        if cached is not None:
            return cached
        async with self._connection() as conn:
            table = await load_table(conn, schema, name)
        self.tables[(schema, name)] = table
        return table

    def on_relation(self, msg: pg.Relation) -> None:
        names = tuple(c.name for c in msg.columns)
        types = tuple((c.type_oid, c.type_mod) for c in msg.columns)
        key = (msg.namespace or "pg_catalog", msg.name)
        relations = self._applier.relations
        previous = relations.get(msg.oid)
        relation = relations[msg.oid] = Relation(key, names, types)
        if previous is not None and previous.table != key:
            self.tables.pop(previous.table, None)
            for shape in list(self._router.shapes_for_table(previous.table)):
                self._retire(shape, "the table was renamed")
        self._check_schema(key, relation.column_types())

    def _check_schema(self, table: TableKey, columns: dict[str, tuple[int, int]] | None) -> None:
        """Invalidate the shapes of ``table`` that its new columns (None: dropped) affect."""
        changed = False
        for shape in self._schema_dependents(table, columns):
            self._retire(shape, "the schema of a table its subqueries read changed")
        for shape in list(self._router.shapes_for_table(table)):
            if columns is None:
                self._retire(shape, "the table was dropped")
                changed = True
                continue
            diff = diff_columns(column_types(shape.table), columns)
            changed = changed or not diff.empty
            filtered = shape.where.columns if shape.where is not None else ()
            selects_all = shape.definition.columns is None
            if is_affected(diff, selects_all, shape.selected, filtered):
                self._retire(shape, "the table's schema changed")
        if changed:
            self.tables.pop(table, None)

    def on_truncate(self, msg: pg.Truncate) -> None:
        for oid in msg.oids:
            relation = self._applier.relations.get(oid)
            if relation is None:
                continue
            for shape in self._dependents(relation.table):
                self._retire(shape, "a table its subqueries read was truncated")
            for shape in list(self._router.shapes_for_table(relation.table)):
                self._restart_after_truncate(shape)

    async def reconcile_schemas(self) -> None:
        """Compare every synced table with the catalog; catches DDL that sent no WAL (DROP)."""
        tables = {shape.definition.relation for shape in self._shapes()}
        tables |= {inner for shape in self._shapes() for inner in shape.inner_tables}
        for relation in sorted(tables):
            await self._reconcile_table(relation)

    async def _reconcile_table(self, relation: TableKey) -> None:
        try:
            async with self._connection() as conn:
                table: Table | None = await load_table(conn, *relation)
        except InvalidRequest:
            table = None
        if table is None or self._replaced(relation, table):
            self._check_schema(relation, None)
            self.tables.pop(relation, None)
            # a table created again under the name must be published again
            self._publications.forget(*relation)
            return
        self._check_schema(relation, column_types(table))

    def _replaced(self, relation: TableKey, table: Table) -> bool:
        """Whether ``table`` is another table than the one known under its name."""
        known = [shape.table for shape in self._router.shapes_for_table(relation)]
        cached = self.tables.get(relation)
        if cached is not None:
            known.append(cached)
        return any(old.oid not in (0, table.oid) for old in known)

    async def recheck_table(self, relation: TableKey) -> None:
        """Compare ``relation`` with the catalog now and forget its cached description."""
        try:
            await self._reconcile_table(relation)
        except DatabaseUnavailable as exc:
            log.warning("schema check of %s.%s skipped: %s", *relation, exc)
        finally:
            self.tables.pop(relation, None)

    async def reconcile_forever(self, interval: float) -> None:
        """Run :meth:`reconcile_schemas` every ``interval`` seconds."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reconcile_schemas()
            except DatabaseUnavailable as exc:
                log.warning("schema check skipped: %s", exc)


def column_types(table: Table) -> dict[str, tuple[int, int]]:
    return {c.name: (c.type_oid, c.type_mod) for c in table.columns}
