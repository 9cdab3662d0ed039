"""Initial shape snapshots and their stitching to the replication stream.

Layer: ``syncd``.

Theory of operation
-------------------
A new shape is registered with the router *before* its snapshot starts, so every transaction the
stream decodes from then on reaches the shape, which buffers them. The snapshot then runs in a
``REPEATABLE READ READ ONLY`` transaction whose first statement reads ``pg_current_snapshot()``:
``xmin``, ``xmax`` and the in-progress list ``xip`` describe exactly which transactions the
snapshot's rows already contain. A streamed transaction ``x`` is *visible* in the snapshot iff
``x < xmin``, or ``x < xmax`` and ``x`` is not in ``xip``. Visible transactions are dropped (their
effects are in the rows), the others are appended to the log. The WAL insert position read in
the same statement bounds the check: a visible transaction wrote its commit record before the
snapshot was taken, so a transaction committed at or above that position is never visible and is
not checked (``ShapeState.in_snapshot``). The rule depends on positions only, so nothing has to be
stored when the stream passes the snapshot, and 32-bit xids are only ever widened near the
snapshot's own. Nothing is lost (a transaction that is not visible commits after the snapshot,
hence after registration) and nothing is doubled (each transaction is either in the rows or in
the log, never both).

Rows are fetched as Postgres text output (the same text pgoutput sends) under the protocol's
display settings, so a value looks the same in the snapshot and in later changes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow
from psycopg.types.string import TextLoader

from shapes.schema import Table
from shapes.xid import Snapshot

DISPLAY_SETTINGS = {
    "DateStyle": "ISO, DMY",
    "TimeZone": "UTC",
    "extra_float_digits": "1",
    "IntervalStyle": "iso_8601",
    "bytea_output": "hex",
}
"""Session settings that give every value a canonical text form (also used for replication)."""


def selected_sql(table: Table, columns: Sequence[str]) -> sql.Composed:
    """``SELECT "a", "b" FROM "schema"."table"`` for the given columns."""
    return sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        sql.Identifier(table.schema, table.name),
    )


async def begin_snapshot(conn: psycopg.AsyncConnection[TupleRow]) -> tuple[Snapshot, int]:
    """Open the snapshot transaction; returns its visibility info and the WAL insert position.

    Every transaction the snapshot sees has its commit record below that position, even with
    ``synchronous_commit = off`` (where a commit is visible before its WAL is written out).

    The connection must be in autocommit mode and not in a transaction.
    """
    # One round trip: the transaction's start, and its first statement, which takes the
    # snapshot and sets the display settings. Two statements in one text are sent as a simple
    # query, which binds no parameters: the settings are literals.
    cur = await conn.execute(_BEGIN_SNAPSHOT)
    cur.nextset()  # past BEGIN's result, to the SELECT's
    row = await cur.fetchone()
    assert row is not None
    return Snapshot.parse(row[0]), int(row[1])


_BEGIN_SNAPSHOT = sql.SQL(
    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; "
    "SELECT pg_current_snapshot()::text, (pg_current_wal_insert_lsn() - '0/0')::int8, {}"
).format(
    sql.SQL(", ").join(
        sql.SQL("set_config({}, {}, true)").format(sql.Literal(name), sql.Literal(value))
        for name, value in DISPLAY_SETTINGS.items()
    )
)


async def probe_rows_together(
    conn: psycopg.AsyncConnection[TupleRow],
    table: Table,
    columns: Sequence[str],
    wheres: Sequence[str | None],
    limit: int,
    *,
    savepoint: str | None = None,
) -> list[list[TupleRow]]:
    """The rows of several shapes of one table and columns (text values), at most ``limit`` + 1
    for each, in one round trip: one branch per shape, ``UNION ALL``, each row led by the index
    of its branch. Each list holds one shape's rows; one of ``limit`` + 1 rows marks a shape
    too large for a probe (read it with :func:`stream_rows`).

    One statement: a clause that fails makes it fail. Run it under a savepoint, which
    ``savepoint`` names to set in the same round trip, before it.
    """
    # The branches differ only in their index and clause: the common parts are quoted once and
    # the text is joined as strings (a ``sql.Composed`` per branch cost more than the round
    # trip, for a batch of small shapes). Clauses are validated, deparsed SQL, as in
    # :func:`stream_rows`; no parameters are bound, so nothing in them is a placeholder.
    select = sql.SQL(", ").join(sql.Identifier(c) for c in columns).as_string(conn)
    relation = sql.Identifier(table.schema, table.name).as_string(conn)
    tail = f" LIMIT {limit + 1})"
    query = " UNION ALL ".join(
        f"(SELECT {index}::text, {select} FROM {relation}"
        + ("" if where_sql is None else " WHERE " + where_sql)
        + tail
        for index, where_sql in enumerate(wheres)
    )
    cur = conn.cursor()
    for column in table.columns:
        cur.adapters.register_loader(column.type_oid, TextLoader)
    if savepoint is None:
        await cur.execute(query)
    else:  # two statements, sent as one simple query (nothing is bound)
        await cur.execute(f"SAVEPOINT {savepoint}; {query}")
        cur.nextset()
    found: list[list[TupleRow]] = [[] for _ in wheres]
    for row in await cur.fetchall():
        found[int(row[0])].append(row[1:])
    await cur.close()
    return found


async def stream_rows(
    conn: psycopg.AsyncConnection[TupleRow],
    table: Table,
    columns: Sequence[str],
    where_sql: str | None,
    batch: int = 2000,
    suffix: sql.Composed | None = None,
    *,
    params: Mapping[str, object] | None = None,
    extra: Sequence[str] = (),
    probe: bool = False,
) -> AsyncIterator[list[TupleRow]]:
    """Yield batches of rows (text values) of the shape, inside the open snapshot transaction.

    ``where_sql`` comes from a validated, deparsed clause; ``suffix`` (ORDER BY, LIMIT) is
    appended as is. ``extra`` are more select items (validated SQL, such as the boolean
    conditions of a subquery shape's positions) after the columns; ``params`` are bound to the
    named placeholders of ``where_sql`` and ``extra``.

    With ``probe`` (not with ``suffix``), the query first runs with ``LIMIT batch + 1`` as one
    plain result: a shape of at most ``batch`` rows, the common case for the many small shapes
    of an application's users, costs that one round trip. A larger one is then read from the
    start again, row by row (the snapshot transaction gives the same rows).
    """
    query = selected_sql(table, columns)
    if extra:
        items = sql.SQL(", ").join(
            [sql.Identifier(c) for c in columns] + [sql.SQL(item) for item in extra]
        )
        query = sql.SQL("SELECT {} FROM {}").format(items, sql.Identifier(table.schema, table.name))
    if where_sql is not None:
        query = sql.Composed([query, sql.SQL(" WHERE "), sql.SQL(where_sql)])
    if suffix is not None:
        query = sql.Composed([query, suffix])
    cur = conn.cursor()
    for column in table.columns:
        cur.adapters.register_loader(column.type_oid, TextLoader)
    if probe and suffix is None:
        limited = sql.Composed([query, sql.SQL(" LIMIT {}").format(sql.Literal(batch + 1))])
        await cur.execute(limited, params)
        first = await cur.fetchall()
        if len(first) <= batch:
            if first:
                yield first
            await cur.close()
            return
        del first
    rows: list[TupleRow] = []
    async for row in cur.stream(query, params, size=batch):
        rows.append(row)
        if len(rows) >= batch:
            yield rows
            rows = []
    if rows:
        yield rows
    await cur.close()
