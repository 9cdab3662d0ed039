"""The write API's operations: each one authorised, applied in one transaction, and idempotent.

Layer: ``web``. Theory of operation:

* Every write carries a client-generated id (the new row's id for a create, a fresh id for the
  others). The transaction first inserts that id into ``burn_private.writes`` together with its
  own txid. If the id is already there the write was applied before: the same answer (its
  txid) is returned and nothing is written again. ``INSERT ... ON CONFLICT DO NOTHING`` waits
  for a concurrent transaction holding the same id, so a retry racing the original also gets the
  original's answer. An id reused for a different write (another user, operation or content) is
  refused with 409.
* The thread row is locked before the caller's role is read (``FOR NO KEY UPDATE``, which does
  not block foreign-key checks), so membership changes on one thread are serialised and an
  authorisation decision cannot be overtaken by a concurrent leave or delete.
* What a caller may write is fixed here, not taken from the body: the author is always the
  caller, a join always makes a ``member``, system events are written only as the side effects
  below. The database re-checks the same rules (see ``sql/003_burn_schema.sql``).
* The txid is ``pg_current_xact_id()::xid``: the 32-bit id logical replication carries, which is
  what a change's ``txids`` header holds and what TanStack DB's ``awaitTxId`` waits for. Every
  operation writes at least one published row, so the txid always shows up in the sync stream.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from web import bodies
from web.accounts import Principal
from web.errors import ApiError, conflict, forbidden, not_found

Conn = psycopg.AsyncConnection[Any]
Action = Callable[[Conn], Awaitable[None]]

AGENT_ROLES = (("sarah", "producer"), ("jerry", "comedian"), ("frankie", "comedian"))


async def apply(
    pool: AsyncConnectionPool[Any],
    me: Principal,
    operation: str,
    write_id: uuid.UUID,
    request: dict[str, Any],
    action: Action,
) -> int:
    """Run ``action`` in one transaction recorded under ``write_id``; returns the txid."""
    recorded = msgspec.to_builtins(request)
    async with pool.connection() as conn:
        try:
            async with conn.transaction():
                cursor = await conn.execute(
                    "INSERT INTO burn_private.writes (id, user_id, operation, request, txid)"
                    " VALUES (%s, %s, %s, %s, pg_current_xact_id()::xid::text::bigint)"
                    " ON CONFLICT (id) DO NOTHING RETURNING txid",
                    (write_id, me.user_id, operation, Jsonb(recorded)),
                )
                row = await cursor.fetchone()
                if row is None:
                    return await _replayed(conn, me, operation, write_id, recorded)
                await action(conn)
                return int(row[0])
        except psycopg.errors.IntegrityError as exc:
            raise _refusal(exc) from exc


async def _replayed(
    conn: Conn, me: Principal, operation: str, write_id: uuid.UUID, recorded: Any
) -> int:
    cursor = await conn.execute(
        "SELECT user_id, operation, request, txid FROM burn_private.writes WHERE id = %s",
        (write_id,),
    )
    row = await cursor.fetchone()
    assert row is not None
    if (row[0], row[1], row[2]) != (me.user_id, operation, recorded):
        raise conflict("This id was already used for another write")
    return int(row[3])


def _refusal(exc: psycopg.errors.IntegrityError) -> ApiError:
    message = exc.diag.message_primary or "The write contradicts the data"
    if isinstance(exc, psycopg.errors.UniqueViolation):
        return conflict("An id in this write is already in use")
    if isinstance(exc, psycopg.errors.CheckViolation):
        return ApiError(422, message)
    return conflict(message)


# -- reading the caller's standing in a thread ------------------------------------------------


async def _locked_role(conn: Conn, thread_id: uuid.UUID, user_id: uuid.UUID) -> str | None:
    """Lock the thread; the user's role in it (None: not a member). 404 if there is no thread."""
    cursor = await conn.execute(
        "SELECT m.role FROM threads t"
        " LEFT JOIN memberships m ON m.thread_id = t.id AND m.user_id = %s"
        " WHERE t.id = %s FOR NO KEY UPDATE OF t",
        (user_id, thread_id),
    )
    row = await cursor.fetchone()
    if row is None:
        raise not_found("thread")
    return None if row[0] is None else str(row[0])


async def _owner_only(conn: Conn, thread_id: uuid.UUID, me: Principal, verb: str) -> None:
    role = await _locked_role(conn, thread_id, me.user_id)
    if role != "owner":
        raise forbidden(f"Only the thread's owner may {verb} it")


async def _system_event(conn: Conn, thread_id: uuid.UUID, user_id: Any, action: str) -> None:
    await conn.execute(
        "INSERT INTO events (id, thread_id, user_id, kind, data)"
        " VALUES (gen_random_uuid(), %s, %s, 'system', %s)",
        (thread_id, user_id, Jsonb({"action": action, "target": "thread"})),
    )


# -- the operations -----------------------------------------------------------------------------


def create_thread(me: Principal, body: bodies.CreateThread, max_owned: int) -> Action:
    """A thread, its owner, the three agents and a ``created`` event."""

    async def action(conn: Conn) -> None:
        # serialises this user's creates, so the cap holds
        await conn.execute("SELECT FROM users WHERE id = %s FOR NO KEY UPDATE", (me.user_id,))
        cursor = await conn.execute(
            "SELECT count(*) FROM memberships WHERE user_id = %s AND role = 'owner'",
            (me.user_id,),
        )
        owned = await cursor.fetchone()
        if owned is not None and int(owned[0]) >= max_owned:
            raise forbidden(f"You already own {max_owned} threads; delete one first")
        await conn.execute("INSERT INTO threads (id, name) VALUES (%s, %s)", (body.id, body.name))
        await conn.execute(
            "INSERT INTO memberships (id, thread_id, user_id, role)"
            " VALUES (gen_random_uuid(), %s, %s, 'owner')",
            (body.id, me.user_id),
        )
        for name, role in AGENT_ROLES:
            await conn.execute(
                "INSERT INTO memberships (id, thread_id, user_id, role)"
                " SELECT gen_random_uuid(), %s, id, %s FROM users"
                " WHERE name = %s AND kind = 'agent'",
                (body.id, role, name),
            )
        await _system_event(conn, body.id, me.user_id, "created")

    return action


def rename_thread(me: Principal, thread_id: uuid.UUID, body: bodies.RenameThread) -> Action:
    """Owner only."""

    async def action(conn: Conn) -> None:
        await _owner_only(conn, thread_id, me, "rename")
        await conn.execute(
            "UPDATE threads SET name = %s, updated_at = now() WHERE id = %s", (body.name, thread_id)
        )

    return action


def delete_thread(me: Principal, thread_id: uuid.UUID) -> Action:
    """Owner only; removes its memberships, events and facts with it."""

    async def action(conn: Conn) -> None:
        await _owner_only(conn, thread_id, me, "delete")
        await conn.execute("DELETE FROM threads WHERE id = %s", (thread_id,))

    return action


def join_thread(me: Principal, thread_id: uuid.UUID, body: bodies.JoinThread) -> Action:
    """The caller becomes a ``member`` (never anything else), with a ``joined`` event."""

    async def action(conn: Conn) -> None:
        if await _locked_role(conn, thread_id, me.user_id) is not None:
            raise conflict("You are already in this thread")
        await conn.execute(
            "INSERT INTO memberships (id, thread_id, user_id, role) VALUES (%s, %s, %s, 'member')",
            (body.id, thread_id, me.user_id),
        )
        await _system_event(conn, thread_id, me.user_id, "joined")

    return action


def leave_thread(me: Principal, thread_id: uuid.UUID, body: bodies.LeaveThread) -> Action:
    """The caller leaves, or the owner removes someone else; a ``left`` event records it."""
    target = body.user_id or me.user_id

    async def action(conn: Conn) -> None:
        role = await _locked_role(conn, thread_id, me.user_id)
        if role is None:
            raise forbidden("You are not in this thread")
        if target == me.user_id and role == "owner":
            raise conflict("The owner cannot leave a thread; delete it instead")
        if target != me.user_id and role != "owner":
            raise forbidden("Only the thread's owner may remove others from it")
        cursor = await conn.execute(
            "SELECT id FROM memberships WHERE thread_id = %s AND user_id = %s", (thread_id, target)
        )
        membership = await cursor.fetchone()
        if membership is None:
            raise not_found("member of this thread")
        await _system_event(conn, thread_id, target, "left")
        await conn.execute("DELETE FROM memberships WHERE id = %s", (membership[0],))

    return action


def post_message(me: Principal, thread_id: uuid.UUID, body: bodies.PostMessage) -> Action:
    """A ``text`` event by the caller, who must be in the thread."""

    async def action(conn: Conn) -> None:
        cursor = await conn.execute(
            "SELECT t.id, m.role FROM threads t"
            " LEFT JOIN memberships m ON m.thread_id = t.id AND m.user_id = %s"
            " WHERE t.id = %s FOR SHARE OF t",
            (me.user_id, thread_id),
        )
        row = await cursor.fetchone()
        if row is None:
            raise not_found("thread")
        if row[1] is None:
            raise forbidden("You are not in this thread")
        await conn.execute(
            "INSERT INTO events (id, thread_id, user_id, kind, data)"
            " VALUES (%s, %s, %s, 'text', %s)",
            (body.id, thread_id, me.user_id, Jsonb({"text": body.text})),
        )

    return action
