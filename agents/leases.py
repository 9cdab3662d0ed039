"""Leases on agents, kept in Postgres: which worker runs which (thread, agent), under which epoch.

Theory of operation. An agent is a row of ``agents.leases`` keyed by (thread, agent user). A
lease is *held* by the worker it names while that worker is live: its row in
``agents.workers`` has not expired. Each worker keeps its own row current (a heartbeat every
scan), so an idle worker running thousands of agents writes one row per heartbeat, not one
per agent. A worker *acquires* rows that are active and unheld (no worker, or a worker whose
row expired or is gone), with ``FOR UPDATE SKIP LOCKED`` so that workers never block each
other, and every grant increments ``epoch``: the epoch is the fencing token. Every write an
agent makes starts with :func:`fence` inside the write's transaction: an ``UPDATE ... WHERE
worker = me AND epoch = mine RETURNING`` that both checks the token and locks the row, so a
concurrent takeover is ordered before or after the whole write. A worker that was paused past
its heartbeat (GC, SIGSTOP, a network partition) therefore writes nothing once another worker
has taken over: its fence matches 0 rows and its transaction rolls back.

A worker learns that it lost leases in two ways: its heartbeat finds its row expired (it then
checks every lease it runs with :func:`still_held`), and it checks them all regularly anyway
(an agent stopped because its membership was deleted, or changed by hand).

Expiry uses the database clock only (``now()`` in short autocommit statements), so the clocks
of the workers never matter for safety. Session advisory locks are not used: they belong to a
connection, which a pool or a proxy may share or drop, and they give no token to check.

A worker takes at most its fair share (active agents divided by live workers, rounded up) so
that several workers split the agents, and prefers the threads it already runs agents of (a
worker follows each thread's shapes once for all its agents there).
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


async def register_worker(pool: Pool, worker: str, ttl: float) -> bool:
    """Announce a live worker, or keep it announced (its heartbeat).

    Returns True when the worker was live until now; False when it is new or its row had
    expired (other workers may have taken its leases meanwhile).
    """
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "WITH before AS (SELECT expires_at > now() AS live FROM agents.workers WHERE id = %s)"
            " INSERT INTO agents.workers (id, heartbeat_at, expires_at)"
            " VALUES (%s, now(), now() + make_interval(secs => %s))"
            " ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(),"
            " expires_at = excluded.expires_at"
            " RETURNING coalesce((SELECT live FROM before), false)",
            (worker, worker, ttl),
        )
        row = await cursor.fetchone()
    return bool(row and row[0])


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
    """Stop the agents of deleted memberships: their holders' checks and fences fail."""
    threads, agents = _columns(keys)
    if not threads:
        return
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            "WITH doomed AS (SELECT l.thread_id, l.agent_id FROM agents.leases l"
            "  JOIN unnest(%s::uuid[], %s::uuid[]) AS k(thread_id, agent_id)"
            "  USING (thread_id, agent_id) ORDER BY l.thread_id, l.agent_id FOR UPDATE OF l)"
            " UPDATE agents.leases l SET status = 'stopped', worker = NULL,"
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


_UNHELD = (
    "(l.worker IS NULL OR NOT EXISTS (SELECT 1 FROM agents.workers w"
    " WHERE w.id = l.worker AND w.expires_at > now()))"
)
"""SQL: the lease row ``l`` has no live holder."""


async def acquire(pool: Pool, worker: str, limit: int) -> list[Lease]:
    """Take up to ``limit`` claimable agents (active, unheld, not backing off), whole threads
    together: those of threads this worker already runs first, those of threads another live
    worker runs (an agent whose lease row came later than its thread's others) last. A worker
    that is not live (see :func:`register_worker`) takes none."""
    if limit <= 0:
        return []
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "WITH mine AS (SELECT DISTINCT thread_id FROM agents.leases"
            "  WHERE worker = %s AND status = 'active'),"
            " theirs AS (SELECT DISTINCT o.thread_id FROM agents.leases o"
            "  JOIN agents.workers w ON w.id = o.worker AND w.expires_at > now()"
            "  WHERE o.worker <> %s AND o.status = 'active'),"
            " claimable AS ("
            "  SELECT l.thread_id, l.agent_id FROM agents.leases l"
            f"  WHERE l.status = 'active' AND {_UNHELD}"
            "  AND coalesce(l.next_attempt_at, '-infinity') <= now()"
            "  AND EXISTS (SELECT 1 FROM agents.workers w WHERE w.id = %s"
            "   AND w.expires_at > now())"
            "  ORDER BY l.thread_id IN (SELECT thread_id FROM mine) DESC,"
            "   l.thread_id IN (SELECT thread_id FROM theirs), l.thread_id, l.agent_id"
            "  LIMIT %s FOR UPDATE OF l SKIP LOCKED)"
            " UPDATE agents.leases l SET worker = %s, epoch = l.epoch + 1, granted_at = now(),"
            "  updated_at = now()"
            " FROM claimable c WHERE l.thread_id = c.thread_id AND l.agent_id = c.agent_id"
            " RETURNING l.thread_id, l.agent_id, l.epoch, l.position, l.position_lsn",
            (worker, worker, worker, limit, worker),
        )
        rows = await cursor.fetchall()
    return [
        Lease(AgentKey(t, a), worker, int(epoch), int(position), int(lsn))
        for t, a, epoch, position, lsn in rows
    ]


async def still_held(pool: Pool, worker: str, leases: Sequence[Lease]) -> set[AgentKey]:
    """The keys of ``leases`` this worker still holds under their epoch (read only)."""
    if not leases:
        return set()
    threads = [lease.key.thread_id for lease in leases]
    agents = [lease.key.agent_id for lease in leases]
    epochs = [lease.epoch for lease in leases]
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT l.thread_id, l.agent_id FROM agents.leases l"
            " JOIN unnest(%s::uuid[], %s::uuid[], %s::bigint[]) AS mine(thread_id, agent_id, ep)"
            " ON l.thread_id = mine.thread_id AND l.agent_id = mine.agent_id"
            " AND l.epoch = mine.ep"
            " WHERE l.worker = %s AND l.status = 'active'",
            (threads, agents, epochs, worker),
        )
        rows = await cursor.fetchall()
    return {AgentKey(t, a) for t, a in rows}


async def release(pool: Pool, lease: Lease) -> None:
    """Give a lease back (a graceful stop): another worker may take it at once."""
    await release_all(pool, [lease])


async def release_all(pool: Pool, leases: Sequence[Lease]) -> None:
    """Give leases back in one statement (a worker stopping or shedding load)."""
    if not leases:
        return
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE agents.leases l SET worker = NULL, updated_at = now()"
            " FROM unnest(%s::uuid[], %s::uuid[], %s::text[], %s::bigint[])"
            "  AS mine(thread_id, agent_id, worker, epoch)"
            " WHERE l.thread_id = mine.thread_id AND l.agent_id = mine.agent_id"
            " AND l.worker = mine.worker AND l.epoch = mine.epoch",
            (
                [lease.key.thread_id for lease in leases],
                [lease.key.agent_id for lease in leases],
                [lease.worker for lease in leases],
                [lease.epoch for lease in leases],
            ),
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
