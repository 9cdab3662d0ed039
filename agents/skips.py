"""The skips of a worker's agents, written together.

Layer: ``agents``. Most events need no call from most agents: every agent of a thread skips the
others' replies, and the comedians skip most of the person's messages. A skip only moves the
agent's stored position (so that the next holder of its lease need not decide again), so it
need not be written before the agent goes on.

Theory of operation. :meth:`Skips.record` notes ``(lease, upto_seq, lsn)`` and returns at
once; the agent's in-memory position has moved already. One write is in flight at a time:
:func:`agents.turns.write_skips` moves every noted position in one statement, and the skips
noted meanwhile go in the next, so the statements per second stay few however many agents
skip, and a quiet worker writes a skip within one round trip. A position never moves back
(``greatest`` in SQL), so a skip written after the same agent's turn moved it further changes
nothing.

Each row is fenced by its lease's worker and epoch. An agent whose row did not move has lost
its lease: ``on_lost`` is told (the worker stops the agent). A write that fails is tried again
after a pause with whatever was noted since; until it succeeds, a crash loses only skips, which
the next holder decides again, the same way, on the same events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import psycopg

from agents.leases import AgentKey, Lease, Pool
from agents.turns import write_skips

logger = logging.getLogger(__name__)

RETRY_PAUSE = 0.5
"""Seconds between attempts after a failed write."""

SHUTDOWN_WAIT = 2.0
"""Seconds :meth:`Skips.flush` waits for the skips noted so far to be written."""


class Skips:
    """The positions a worker's agents moved past events that need no call, written together."""

    def __init__(self, pool: Pool, worker: str, on_lost: Callable[[Lease], None]) -> None:
        self._pool = pool
        self._worker = worker
        self._on_lost = on_lost
        self._noted: dict[AgentKey, tuple[Lease, int, int]] = {}
        self._writer: asyncio.Task[None] | None = None

    def record(self, lease: Lease, upto_seq: int, lsn: int) -> None:
        """Note that the agent of ``lease`` handled every event up to ``upto_seq``, at the
        replication position ``lsn``; written soon, with the others' skips."""
        noted = self._noted.get(lease.key)
        if noted is not None and noted[0] is lease:
            upto_seq, lsn = max(upto_seq, noted[1]), max(lsn, noted[2])
        self._noted[lease.key] = (lease, upto_seq, lsn)
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._write_all())

    @property
    def pending(self) -> int:
        """Skips noted and not written yet."""
        return len(self._noted)

    async def _write_all(self) -> None:
        try:
            while self._noted:
                batch, self._noted = self._noted, {}
                try:
                    moved = await write_skips(self._pool, self._worker, list(batch.values()))
                except (psycopg.Error, OSError) as error:
                    logger.warning("writing %d skips failed (retrying): %r", len(batch), error)
                    for lease, upto_seq, lsn in batch.values():
                        self._merge(lease, upto_seq, lsn)
                    await asyncio.sleep(RETRY_PAUSE)
                    continue
                for lease, _, _ in batch.values():
                    if lease.key not in moved:
                        self._on_lost(lease)
        finally:
            self._writer = None

    def _merge(self, lease: Lease, upto_seq: int, lsn: int) -> None:
        """Put back a skip whose write failed, unless a newer one replaced it."""
        noted = self._noted.get(lease.key)
        if noted is None:
            self._noted[lease.key] = (lease, upto_seq, lsn)
        elif noted[0] is lease:
            self._noted[lease.key] = (lease, max(upto_seq, noted[1]), max(lsn, noted[2]))

    async def flush(self) -> None:
        """Wait until every skip noted so far is written, for at most :data:`SHUTDOWN_WAIT`
        seconds (what is not written by then is decided again by the next holder)."""
        writer = self._writer
        if writer is None:
            return
        await asyncio.wait([writer], timeout=SHUTDOWN_WAIT)
        if not writer.done():
            logger.warning("%d skips not written at shutdown", len(self._noted))
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
