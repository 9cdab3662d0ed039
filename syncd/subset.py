"""Running subset snapshots against Postgres.

Layer: ``syncd``. A subset is the shape's query narrowed by the subset's ``where``, ordered and
paged, run in its own ``REPEATABLE READ READ ONLY`` transaction. The answer carries that
snapshot's visibility (``xmin``/``xmax``/``xip_list``) and WAL position (``database_lsn``) so the
client can drop streamed changes the rows already contain.
"""

from __future__ import annotations

import random

import msgspec
import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from shapes import messages
from shapes.subset import Subset
from syncd.shape_state import ShapeState
from syncd.snapshot import begin_snapshot, stream_rows
from syncd.subquery_shape import STACK_ID

_RANDOM = random.Random()
"""This module's own generator: the process-wide one belongs to the embedding program."""

_encode = msgspec.json.Encoder().encode


async def run_subset(
    conn: psycopg.AsyncConnection[TupleRow], shape: ShapeState, subset: Subset
) -> bytes:
    """The response body ``{"metadata": ..., "data": [...]}`` for a subset of ``shape``."""
    mark = _RANDOM.randrange(1 << 31)
    info, lsn = await begin_snapshot(conn)
    try:
        rows = await _rows(conn, shape, subset, mark)
    finally:
        await conn.execute("COMMIT")
    metadata = {
        "xmin": str(info.xmin),
        "xmax": str(info.xmax),
        "xip_list": [str(x) for x in info.xip],
        "database_lsn": str(lsn),
        "snapshot_mark": mark,
    }
    return b'{"metadata":' + _encode(metadata) + b', "data": [' + b",".join(rows) + b"]}"


async def _rows(
    conn: psycopg.AsyncConnection[TupleRow], shape: ShapeState, subset: Subset, mark: int
) -> list[bytes]:
    view = shape.view
    where = shape.where
    subquery = where is not None and where.has_subqueries
    needed = set(shape.selected) | set(view.key_columns)
    if subquery:
        assert where is not None
        needed |= where.columns  # tags are computed from the subqueries' left-side columns
    columns = sorted(needed)
    extra = where.position_sql if subquery and where is not None else ()
    conditions = [w.sql for w in (shape.where, subset.where) if w is not None]
    where_sql = " AND ".join(f"({c})" for c in conditions) if conditions else None
    parts: list[sql.Composable] = []
    if subset.order_by_sql is not None:
        parts += [sql.SQL(" ORDER BY "), sql.SQL(subset.order_by_sql)]
    if subset.limit is not None:
        parts.append(sql.SQL(" LIMIT {}").format(sql.Literal(subset.limit)))
    if subset.offset is not None:
        parts.append(sql.SQL(" OFFSET {}").format(sql.Literal(subset.offset)))
    tail = sql.Composed(parts)
    relation = shape.relation_list
    headers = {"operation": "insert", "relation": relation, "snapshot_mark": mark}
    lines: list[bytes] = []
    n = len(columns)
    async for batch in stream_rows(conn, shape.table, columns, where_sql, suffix=tail, extra=extra):
        for values in batch:
            row = dict(zip(columns, values[:n], strict=True))
            key = messages.row_key(view.key_prefix, row, view.key_columns)
            value = {c: row[c] for c in shape.selected}
            row_headers: dict[str, object] = headers
            if subquery and where is not None:
                row_headers = {
                    **headers,
                    "tags": where.tags(row, STACK_ID + shape.handle),
                    "active_conditions": [v is True or v in ("t", "true") for v in values[n:]],
                }
            lines.append(_encode({"key": key, "value": value, "headers": row_headers}))
    return lines
