"""Catalog access: table descriptions and the publication syncd manages.

Layer: ``syncd``. Reads ``pg_class``/``pg_attribute``/``pg_type`` into ``shapes.schema.Table`` and
adds tables to syncd's publication on demand, switching them to ``REPLICA IDENTITY FULL`` so that
updates and deletes carry old rows (needed to evaluate ``where`` on the old row).
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import time
from collections.abc import Callable
from typing import Final

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


PREPARE_SCRIPT: Final = "sql/002_publish_table.sql"
"""The script a table's owner runs to prepare a table syncd's role may not prepare itself."""
RETRY_INTERVAL: Final = 1.0
"""Seconds a table syncd could not prepare is refused from memory before it is tried again: a
client naming such tables over and over costs Postgres at most one attempt per table a second."""

DEFAULT_PUBLICATION: Final = "syncd_publication"
DEFAULT_ROLE: Final = "syncd"
"""The defaults of ``sql/002_publish_table.sql``'s variables (left out of the command)."""

TableKey = tuple[str, str]


def prepare_command(table: Table, publication: str, role: str | None) -> str:
    """The psql command that prepares ``table`` for ``publication`` (run by its owner)."""
    args = ["psql"]
    if table.schema != "public":
        args += ["-v", f"schema={table.schema}"]
    args += ["-v", f"table={table.name}"]
    if publication != DEFAULT_PUBLICATION:
        args += ["-v", f"publication={publication}"]
    if role and role != DEFAULT_ROLE:
        args += ["-v", f"role={role}"]
    args += ["-f", PREPARE_SCRIPT]
    return " ".join(shlex.quote(arg) for arg in args) + " <database>"


class PublicationManager:
    """Keeps syncd's publication holding every table that a shape uses.

    The tables known to be published are read at start and grow as syncd publishes more. A
    table not among them is looked up in the publication again before syncd tries to add it,
    so a table its owner prepared (``sql/002_publish_table.sql``) while syncd runs is served
    without a restart. A table syncd may not prepare is refused from memory for
    :data:`RETRY_INTERVAL`, and concurrent requests for one table share one attempt.
    """

    def __init__(self, publication: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.publication = publication
        self._clock = clock
        self._published: set[TableKey] = set()
        self._full_identity: set[TableKey] = set()
        """Tables this process set to ``REPLICA IDENTITY FULL`` (their cached description
        still says otherwise); each new shape would otherwise take the exclusive lock again."""
        self._preparing: dict[TableKey, asyncio.Future[None]] = {}
        self._refused: dict[TableKey, tuple[float, str]] = {}
        """When each table syncd could not prepare was last tried, and the message it got."""

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

    def is_ready(self, table: Table) -> bool:
        """Whether ``table`` is known to be published with a full replica identity already
        (:meth:`add_table` would do nothing)."""
        key = (table.schema, table.name)
        return key in self._published and (
            table.replica_identity == "f" or key in self._full_identity
        )

    async def add_table(self, conn: AsyncConn, table: Table) -> None:
        """Make sure ``table`` is published with ``REPLICA IDENTITY FULL``, doing what is
        missing (see the class docstring for re-reads and refusals).

        Raises:
            InvalidRequest: when syncd lacks the privilege to do either (the message names the
                script and command that prepare the table), or the table cannot be published
                (a system catalog, an unlogged or a temporary table).
        """
        key = (table.schema, table.name)
        if self.is_ready(table):
            return
        while (pending := self._preparing.get(key)) is not None:
            try:
                await asyncio.shield(pending)
                return
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this request was cancelled
                # the request preparing the table went away: prepare it here instead
        refused = self._refused.get(key)
        if refused is not None and self._clock() - refused[0] < RETRY_INTERVAL:
            raise InvalidRequest("table", refused[1])
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._preparing[key] = future
        try:
            await self._prepare(conn, table)
        except BaseException as exc:
            if isinstance(exc, InvalidRequest):
                self._remember_refusal(key, exc.message)
            _settle(future, exc)
            raise
        else:
            self._refused.pop(key, None)
            future.set_result(None)
        finally:
            del self._preparing[key]

    def _remember_refusal(self, key: TableKey, message: str) -> None:
        now = self._clock()
        for old in [k for k, (at, _) in self._refused.items() if now - at >= RETRY_INTERVAL]:
            del self._refused[old]
        self._refused[key] = (now, message)

    async def _prepare(self, conn: AsyncConn, table: Table) -> None:
        """Publish ``table`` unless the publication lists it now, then make its replica
        identity FULL. The publication change comes first, then the exclusive-lock
        ``ALTER TABLE``, the order that avoids lock-order deadlocks with concurrent writers."""
        key = (table.schema, table.name)
        ident = sql.Identifier(table.schema, table.name)
        try:
            if key not in self._published:
                if await self._listed(conn, table):
                    self._published.add(key)
                else:
                    await self._publish(conn, table, ident)
            if table.replica_identity != "f" and key not in self._full_identity:
                await conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(ident))
                self._full_identity.add(key)
                log.info("set REPLICA IDENTITY FULL on %s.%s", table.schema, table.name)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise self._not_allowed(conn, table, exc) from exc
        except psycopg.errors.InvalidParameterValue as exc:
            # system catalogs, unlogged and temporary tables cannot be published
            reason = exc.diag.message_detail or exc.diag.message_primary
            message = f"{table.schema}.{table.name} cannot be replicated: {reason}"
            raise InvalidRequest("table", message) from exc

    def _not_allowed(
        self, conn: AsyncConn, table: Table, exc: psycopg.errors.InsufficientPrivilege
    ) -> InvalidRequest:
        """The 400 for a table syncd's role may not prepare: what to run, and as whom."""
        command = prepare_command(table, self.publication, conn.info.user)
        log.warning(
            "cannot prepare %s.%s for publication %s (%s); its owner should run: %s",
            table.schema,
            table.name,
            self.publication,
            exc.diag.message_primary,
            command.replace("<database>", conn.info.dbname),
        )
        message = (
            f"syncd's database role may not publish {table.schema}.{table.name} or set its "
            f"REPLICA IDENTITY FULL ({exc.diag.message_primary}). As the table's owner, run "
            f"{PREPARE_SCRIPT}: {command}; then retry"
        )
        return InvalidRequest("table", message)

    async def _listed(self, conn: AsyncConn, table: Table) -> bool:
        """Whether the publication lists ``table`` now (its owner may have added it)."""
        cur = await conn.execute(
            "SELECT 1 FROM pg_publication_tables"
            " WHERE pubname = %s AND schemaname = %s AND tablename = %s",
            (self.publication, table.schema, table.name),
        )
        return await cur.fetchone() is not None

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
        self._refused.pop((schema, name), None)


def _settle(future: asyncio.Future[None], exc: BaseException) -> None:
    """End ``future`` as its owner ended (cancelled, or with ``exc``), marked retrieved: the
    requests sharing it re-raise it themselves."""
    if isinstance(exc, asyncio.CancelledError):
        future.cancel()
        return
    future.set_exception(exc)
    future.exception()
