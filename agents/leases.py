"""Leases on agents, kept in Postgres: which worker runs which (thread, agent), under which epoch.

Theory of operation. An agent is a row of ``agents.leases`` keyed by (thread, agent user). A
worker *acquires* rows that are active and unheld or expired, with ``FOR UPDATE SKIP LOCKED`` so
that workers never block each other, and every grant increments ``epoch``: the epoch is the
fencing token. The holder *renews* its rows (heartbeat) well within the TTL; a renewal that
matches no row means the lease is gone (taken over, stopped, quarantined) and the agent must
stop. Every write an agent makes starts with :func:`fence` inside the write's transaction: an
``UPDATE ... WHERE worker = me AND epoch = mine RETURNING`` that both checks the token and
locks the row, so a concurrent takeover is ordered before or after the whole write. A worker
that was paused past its lease (GC, SIGSTOP, a network partition) therefore writes nothing
once another worker has taken over: its fence matches 0 rows and its transaction rolls back.

Expiry uses the database clock only (``now()`` in short autocommit statements), so the clocks
of the workers never matter for safety. Session advisory locks are not used: they belong to a
connection, which a pool or a proxy may share or drop, and they give no token to check.

Workers announce themselves in ``agents.workers``; a worker takes at most its fair share
(active agents divided by live workers, rounded up) so that several workers split the agents.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection, AsyncCursor
from psycopg_pool import AsyncConnectionPool

Pool = AsyncConnectionPool[Any]
Connection = AsyncConnection[Any]


@dataclass(frozen=True)
class AgentKey:
    thread_id: uuid.UUID
    agent_id: uuid.UUID

    def __str__(self) -> str:
        return f"{self.thread_id}/{self.agent_id}"


@dataclass(frozen=True)
class Lease:
    """A granted lease: the agent, the worker holding it and the epoch of the grant."""

    key: AgentKey
    worker: str
    epoch: int
    position: int
    """The ``seq`` of the last event the agent has handled."""
    position_lsn: int


class LeaseLost(Exception):
    """The lease is no longer held under this epoch: the agent must stop writing."""


async def register_worker(pool: Pool, worker: str, ttl: float) -> None:
    """Announce (or keep announcing) a live worker."""
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO agents.workers (id, heartbeat_at, expires_at)"
            " VALUES (%s, now(), now() + make_interval(secs => %s))"
            " ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(),"
            " expires_at = excluded.expires_at",
            (worker, ttl),
        )


async def unregister_worker(pool: Pool, worker: str) -> None:
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM agents.workers WHERE id = %s", (worker,))


async def ensure_agents(pool: Pool, keys: Iterable[AgentKey]) -> None:
    """Make the agents of these memberships active (a re-added membership restarts its agent)."""
    threads, agents = _columns(keys)
    if not threads:
        return
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO agents.leases (thread_id, agent_id)"
            " SELECT k.thread_id, k.agent_id FROM unnest(%s::uuid[], %s::uuid[])"
            "  AS k(thread_id, agent_id) JOIN threads t ON t.id = k.thread_id"
            "  ORDER BY k.thread_id, k.agent_id"
            " ON CONFLICT (thread_id, agent_id) DO UPDATE SET status = 'active',"
            " failures = 0, next_attempt_at = NULL, updated_at = now()"
            " WHERE agents.leases.status = 'stopped'",
            (threads, agents),
        )


async def stop_agents(pool: Pool, keys: Iterable[AgentKey], reason: str) -> None:
    """Stop the agents of deleted memberships: their holders' renewals and fences fail."""
    threads, agents = _columns(keys)
    if not threads:
        return
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            "WITH doomed AS (SELECT l.thread_id, l.agent_id FROM agents.leases l"
            "  JOIN unnest(%s::uuid[], %s::uuid[]) AS k(thread_id, agent_id)"
            "  USING (thread_id, agent_id) ORDER BY l.thread_id, l.agent_id FOR UPDATE OF l)"
            " UPDATE agents.leases l SET status = 'stopped', worker = NULL, expires_at = NULL,"
            " updated_at = now() FROM doomed d"
            " WHERE l.thread_id = d.thread_id AND l.agent_id = d.agent_id",
            (threads, agents),
        )
        await conn.execute(
            "INSERT INTO agent_status (thread_id, agent_id, state, reason)"
            " SELECT k.thread_id, k.agent_id, 'stopped', %s FROM unnest(%s::uuid[], %s::uuid[])"
            "  AS k(thread_id, agent_id) JOIN threads t ON t.id = k.thread_id"
            "  ORDER BY k.thread_id, k.agent_id"
            " ON CONFLICT (thread_id, agent_id) DO UPDATE SET state = 'stopped',"
            " reason = excluded.reason, updated_at = now()",
            (reason[:500], threads, agents),
        )


def _columns(keys: Iterable[AgentKey]) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    ordered = sorted(set(keys), key=lambda k: (k.thread_id, k.agent_id))
    return [k.thread_id for k in ordered], [k.agent_id for k in ordered]


async def fair_share(pool: Pool) -> int:
    """How many agents one worker should hold: active agents over live workers, rounded up."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT (SELECT count(*) FROM agents.leases WHERE status = 'active'),"
            " (SELECT count(*) FROM agents.workers WHERE expires_at > now())"
        )
        row = await cursor.fetchone()
    assert row is not None
    active, workers = int(row[0]), max(int(row[1]), 1)
    return -(-active // workers)


async def acquire(pool: Pool, worker: str, ttl: float, limit: int) -> list[Lease]:
    """Take up to ``limit`` claimable agents (active, unheld or expired, not backing off)."""
    if limit <= 0:
        return []
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "WITH claimable AS ("
            "  SELECT thread_id, agent_id FROM agents.leases"
            "  WHERE status = 'active' AND (worker IS NULL OR expires_at < now())"
            "  AND coalesce(next_attempt_at, '-infinity') <= now()"
            "  ORDER BY expires_at NULLS FIRST LIMIT %s FOR UPDATE SKIP LOCKED)"
            " UPDATE agents.leases l SET worker = %s, epoch = l.epoch + 1, heartbeat_at = now(),"
            "  expires_at = now() + make_interval(secs => %s), updated_at = now()"
            " FROM claimable c WHERE l.thread_id = c.thread_id AND l.agent_id = c.agent_id"
            " RETURNING l.thread_id, l.agent_id, l.epoch, l.position, l.position_lsn",
            (limit, worker, ttl),
        )
        rows = await cursor.fetchall()
    return [
        Lease(AgentKey(t, a), worker, int(epoch), int(position), int(lsn))
        for t, a, epoch, position, lsn in rows
    ]


async def renew(pool: Pool, worker: str, leases: Sequence[Lease], ttl: float) -> set[AgentKey]:
    """Extend the leases still held under their epoch; returns the keys renewed."""
    if not leases:
        return set()
    threads = [lease.key.thread_id for lease in leases]
    agents = [lease.key.agent_id for lease in leases]
    epochs = [lease.epoch for lease in leases]
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "WITH held AS (SELECT l.thread_id, l.agent_id FROM agents.leases l"
            "  JOIN unnest(%s::uuid[], %s::uuid[], %s::bigint[]) AS mine(thread_id, agent_id, ep)"
            "  ON l.thread_id = mine.thread_id AND l.agent_id = mine.agent_id"
            "  AND l.epoch = mine.ep"
            "  WHERE l.worker = %s AND l.status = 'active'"
            "  ORDER BY l.thread_id, l.agent_id FOR UPDATE OF l)"
            " UPDATE agents.leases l SET heartbeat_at = now(),"
            " expires_at = now() + make_interval(secs => %s)"
            " FROM held WHERE l.thread_id = held.thread_id AND l.agent_id = held.agent_id"
            " RETURNING l.thread_id, l.agent_id",
            (threads, agents, epochs, worker, ttl),
        )
        rows = await cursor.fetchall()
    return {AgentKey(t, a) for t, a in rows}


async def release(pool: Pool, lease: Lease) -> None:
    """Give a lease back (a graceful stop): another worker may take it at once."""
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE agents.leases SET worker = NULL, expires_at = NULL, updated_at = now()"
            " WHERE thread_id = %s AND agent_id = %s AND worker = %s AND epoch = %s",
            (lease.key.thread_id, lease.key.agent_id, lease.worker, lease.epoch),
        )


async def fence(conn: Connection, lease: Lease) -> int:
    """Check and lock the lease inside the caller's transaction; returns the stored position.

    Raises:
        LeaseLost: the lease was taken over, stopped or quarantined (roll back).
    """
    cursor = await fence_query(conn, lease)
    return check_fence(await cursor.fetchone(), lease)


async def fence_query(conn: Connection, lease: Lease) -> AsyncCursor[Any]:
    """Send the fence without waiting for its answer (in a pipeline); :func:`check_fence` the
    row before anything else of the transaction is relied on."""
    return await conn.execute(
        "UPDATE agents.leases SET updated_at = now()"
        " WHERE thread_id = %s AND agent_id = %s AND worker = %s AND epoch = %s"
        " AND status = 'active' RETURNING position",
        (lease.key.thread_id, lease.key.agent_id, lease.worker, lease.epoch),
    )


def check_fence(row: tuple[Any, ...] | None, lease: Lease) -> int:
    """The stored position, or :class:`LeaseLost` when the fence matched no row."""
    if row is None:
        raise LeaseLost(f"lease of {lease.key} under epoch {lease.epoch} is gone")
    return int(row[0])


async def advance(conn: Connection, lease: Lease, position: int, position_lsn: int) -> None:
    """Move the agent's position forward (never back), inside a fenced transaction."""
    await conn.execute(
        "UPDATE agents.leases SET position = greatest(position, %s),"
        " position_lsn = greatest(position_lsn, %s), failures = 0, next_attempt_at = NULL"
        " WHERE thread_id = %s AND agent_id = %s AND epoch = %s",
        (position, position_lsn, lease.key.thread_id, lease.key.agent_id, lease.epoch),
    )
