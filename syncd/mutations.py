"""Writes an application makes on behalf of its clients: :class:`Mutation` and
:func:`apply_mutations`, which applies them in one transaction and returns its txid.

Layer: ``syncd``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import sql

from shapes.shape import parse_table


@dataclass(frozen=True)
class Mutation:
    """One write: ``insert`` uses ``values``; ``update`` sets ``values`` where ``key`` matches;
    ``delete`` removes the rows matching ``key``. ``table`` is ``tbl`` or ``schema.tbl``."""

    type: Literal["insert", "update", "delete"]
    table: str
    values: Mapping[str, Any] = field(default_factory=dict)
    key: Mapping[str, Any] = field(default_factory=dict)


def _mutation_sql(mutation: Mutation) -> tuple[sql.Composed, list[Any]]:
    schema, table = parse_table(mutation.table)
    target = sql.Identifier(schema, table)

    def matching(key: Mapping[str, Any]) -> sql.Composed:
        if not key:
            raise ValueError(f"{mutation.type} on {mutation.table} needs a key")
        return sql.SQL(" AND ").join(
            sql.SQL("{} = %s").format(sql.Identifier(name)) for name in key
        )

    if mutation.type == "insert":
        names = list(mutation.values)
        statement = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            target,
            sql.SQL(", ").join(map(sql.Identifier, names)),
            sql.SQL(", ").join(sql.Placeholder() * len(names)),
        )
        return statement, list(mutation.values.values())
    if mutation.type == "update":
        if not mutation.values:
            raise ValueError(f"update on {mutation.table} needs values")
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = %s").format(sql.Identifier(name)) for name in mutation.values
        )
        statement = sql.SQL("UPDATE {} SET {} WHERE {}").format(
            target, assignments, matching(mutation.key)
        )
        return statement, [*mutation.values.values(), *mutation.key.values()]
    if mutation.type == "delete":
        statement = sql.SQL("DELETE FROM {} WHERE {}").format(target, matching(mutation.key))
        return statement, list(mutation.key.values())
    raise ValueError(f"unknown mutation type: {mutation.type!r}")


async def apply_mutations(conn: psycopg.AsyncConnection[Any], mutations: Iterable[Mutation]) -> int:
    """Apply ``mutations`` in one transaction; returns its txid (for ``awaitTxId``).

    The txid is ``pg_current_xact_id()::xid``, the number the shape log puts in a change's
    ``txids``. Use a connection with no transaction open (autocommit or idle): inside an outer
    transaction this only makes a savepoint, and the changes appear when that one commits.
    """
    async with conn.transaction():
        for mutation in mutations:
            statement, values = _mutation_sql(mutation)
            await conn.execute(statement, values)
        cursor = await conn.execute("SELECT pg_current_xact_id()::xid::text")
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])
