"""The worker's heartbeat, beaten from a thread of its own.

Theory of operation. A worker's leases are held while its row in ``agents.workers`` is live
(:mod:`agents.leases`). Were the heartbeat a task on the worker's event loop, a loop busy with
thousands of agents could run it late, the row would expire, every agent of the worker would
move at once, and the worker that took them would be just as busy: the agents would bounce
between workers. So the heartbeat runs in its own thread, with its own event loop and its own
database connection, and how busy the agents are never delays it (the same reason Kafka's
consumers beat from a background thread).

It still must not keep a wedged worker's agents: the worker's loop runs :meth:`Heartbeat.tick`,
and the thread skips its beats while that tick is more than ``stall_limit`` seconds old (a loop
stuck that long runs no agent; its row expires and other workers take them).

Each beat reports ``(sent, was_live)`` to the worker's ``on_beat`` callback, *from the
heartbeat's thread*: ``sent`` is the ``time.monotonic()`` at which the beat was sent and
``was_live`` whether the row was live until it (see :func:`agents.leases.register_worker`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from agents import leases

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.5
"""How often the worker's loop shows that it runs."""


class Heartbeat:
    """Keeps one worker's row live from a daemon thread; :meth:`start`, :meth:`stop`."""

    def __init__(
        self,
        conninfo: str,
        worker_id: str,
        ttl: float,
        on_beat: Callable[[float, bool], None],
        *,
        stall_limit: float = 10.0,
    ) -> None:
        self._conninfo = conninfo
        self._worker_id = worker_id
        self._ttl = ttl
        self._interval = ttl / 4
        self._on_beat = on_beat
        self._stall_limit = stall_limit
        self._loop_seen = time.monotonic()
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()

    async def tick(self) -> None:
        """Run on the worker's loop, for ever: proof that the loop runs."""
        while True:
            self._loop_seen = time.monotonic()
            await asyncio.sleep(TICK_SECONDS)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=asyncio.run,
            args=(self._beat_until_stopped(),),
            name=f"heartbeat {self._worker_id}",
            daemon=True,
        )
        self._thread.start()
        self._started.wait(10)

    def stop(self) -> None:
        """Stop beating and wait for the thread (the row then expires, unless deleted)."""
        loop, stop = self._thread_loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop has already ended
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(self._ttl + 10)

    async def _beat_until_stopped(self) -> None:
        self._thread_loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._started.set()
        pool: leases.Pool = AsyncConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=1,
            open=False,
            timeout=self._ttl,
            kwargs={"autocommit": True},
            name=f"heartbeat-{self._worker_id}",
        )
        await pool.open(wait=False)
        try:
            while not self._stop.is_set():
                await self._beat(pool)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self._interval)
        finally:
            await pool.close()

    async def _beat(
        self, pool: AsyncConnectionPool[psycopg.AsyncConnection[tuple[object, ...]]]
    ) -> None:
        stalled = time.monotonic() - self._loop_seen
        if stalled > self._stall_limit:
            logger.warning("worker loop stalled for %.1fs: skipping a heartbeat", stalled)
            return
        sent = time.monotonic()
        try:
            was_live = await leases.register_worker(pool, self._worker_id, self._ttl)
        except (psycopg.Error, OSError, PoolTimeout) as error:
            logger.warning("heartbeat failed (retrying): %r", error)
            return
        self._on_beat(sent, was_live)
