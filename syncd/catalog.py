"""Catalog access: table descriptions and the publication syncd manages.

Layer: ``syncd``. Reads ``pg_class``/``pg_attribute``/``pg_type`` into ``shapes.schema.Table`` and
adds tables to syncd's publication on demand, switching them to ``REPLICA IDENTITY FULL`` so that
updates and deletes carry old rows (needed to evaluate ``where`` on the old row).
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from shapes.errors import InvalidRequest
from shapes.schema import Column, Table
from shapes.subquery import missing_table_message

log = logging.getLogger("syncd.catalog")

AsyncConn = psycopg.AsyncConnection[TupleRow]

_TABLE_QUERY = """
SELECT c.oid::int8, c.relreplident::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
"""

_COLUMNS_QUERY = """
SELECT a.attname::text,
       a.atttypid::int8,
       a.atttypmod,
       a.attnotnull,
       a.attndims,
       t.typcategory::text,
       coalesce(et.typname, t.typname)::text AS type_name,
       coalesce(et.typcategory, t.typcategory)::text AS elem_category,
       coalesce(bt.typname, et.typname, t.typname)::text AS base_name,
       coalesce(bt.typcategory, et.typcategory, t.typcategory)::text AS base_category,
       (SELECT k.position - 1
          FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, position)
          WHERE i.indrelid = a.attrelid AND i.indisprimary AND k.attnum = a.attnum) AS pk_index
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type et ON t.typcategory = 'A' AND et.oid = t.typelem
LEFT JOIN pg_type bt ON coalesce(et.typtype, t.typtype) = 'd'
                     AND bt.oid = coalesce(et.typbasetype, t.typbasetype)
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


async def load_table(conn: AsyncConn, schema: str, name: str) -> Table:
    """Describe ``schema.name``.

    Raises:
        InvalidRequest: on ``table`` when it does not exist.
    """
    if "\x00" in schema or "\x00" in name:  # Postgres text cannot hold NUL: no such table
        raise InvalidRequest("table", missing_table_message(schema, name))
    async with conn.cursor() as cur:
        await cur.execute(_TABLE_QUERY, (schema, name))
        found = await cur.fetchone()
        if found is None:
            raise InvalidRequest("table", missing_table_message(schema, name))
        oid, replica_identity = found
        await cur.execute(_COLUMNS_QUERY, (oid,))
        rows = await cur.fetchall()
    columns = tuple(_column(row) for row in rows)
    return Table(schema, name, columns, oid=int(oid), replica_identity=str(replica_identity))


def _column(row: TupleRow) -> Column:
    name, oid, typmod, not_null, ndims, category, type_name, elem_cat, base, base_cat, pk = row
    is_array = category == "A"
    base_category = str(base_cat)
    return Column(
        name=str(name),
        type_name=str(type_name),
        type_oid=int(oid),
        dims=max(int(ndims), 1) if is_array else 0,
        not_null=bool(not_null),
        pk_index=None if pk is None or pk < 0 else int(pk),
        type_mod=int(typmod),
        category=str(elem_cat) if base_category == "" else base_category,
        base_type_name=str(base),
    )


class PublicationManager:
    """Keeps syncd's publication holding every table that a shape uses."""

    def __init__(self, publication: str) -> None:
        self.publication = publication
        self._published: set[tuple[str, str]] = set()
        self._full_identity: set[tuple[str, str]] = set()
        """Tables this process set to ``REPLICA IDENTITY FULL`` (their cached description
        still says otherwise); each new shape would otherwise take the exclusive lock again."""

    async def ensure_publication(self, conn: AsyncConn) -> bool:
        """Create the (initially empty) publication if needed; True when it was created."""
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT 1 FROM pg_publication WHERE pubname = %s", (self.publication,)
            )
            if await cur.fetchone() is not None:
                await self._load_published(cur)
                return False
            await cur.execute(
                sql.SQL("CREATE PUBLICATION {}").format(sql.Identifier(self.publication))
            )
            log.info("created publication %s", self.publication)
            return True

    async def _load_published(self, cur: psycopg.AsyncCursor[TupleRow]) -> None:
        query = "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s"
        await cur.execute(query, (self.publication,))
        self._published = {(str(s), str(t)) for s, t in await cur.fetchall()}

    async def add_table(self, conn: AsyncConn, table: Table) -> None:
        """Publish ``table`` and make its replica identity FULL.

        The publication change comes first, then the exclusive-lock ``ALTER TABLE``, the order
        that avoids lock-order deadlocks with concurrent writers.

        Raises:
            InvalidRequest: when syncd lacks the privilege to do either, or the table cannot be
                published (a system catalog, an unlogged or a temporary table).
        """
        ident = sql.Identifier(table.schema, table.name)
        try:
            if (table.schema, table.name) not in self._published:
                await self._publish(conn, table, ident)
            key = (table.schema, table.name)
            if table.replica_identity != "f" and key not in self._full_identity:
                await conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(ident))
                self._full_identity.add(key)
                log.info("set REPLICA IDENTITY FULL on %s.%s", table.schema, table.name)
        except psycopg.errors.InsufficientPrivilege as exc:
            message = (
                f"syncd's database role may not publish {table.schema}.{table.name} or set its "
                f"REPLICA IDENTITY FULL ({exc.diag.message_primary}); run as the table owner or "
                "set it up beforehand"
            )
            raise InvalidRequest("table", message) from exc
        except psycopg.errors.InvalidParameterValue as exc:
            # system catalogs, unlogged and temporary tables cannot be published
            reason = exc.diag.message_detail or exc.diag.message_primary
            message = f"{table.schema}.{table.name} cannot be replicated: {reason}"
            raise InvalidRequest("table", message) from exc

    async def _publish(self, conn: AsyncConn, table: Table, ident: sql.Identifier) -> None:
        query = sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
            sql.Identifier(self.publication), ident
        )
        try:
            await conn.execute(query)
        except psycopg.errors.DuplicateObject:
            pass
        self._published.add((table.schema, table.name))
        log.info("added %s.%s to publication %s", table.schema, table.name, self.publication)

    def forget(self, schema: str, name: str) -> None:
        """Forget that a table is published (after it was dropped)."""
        self._published.discard((schema, name))
        self._full_identity.discard((schema, name))
