"""A worker process: runs the supervisor, takes leases on agents and runs those agents.

Theory of operation. The worker runs:

- the supervisor (:mod:`agents.supervisor`), which keeps the lease rows in step with the
  memberships;
- the *heartbeat* (:mod:`agents.heartbeat`, in a thread of its own so that busy agents never
  delay it), which keeps the worker's row in ``agents.workers`` live every ``ttl / 4``
  seconds: while it is, every lease naming the worker is held (:mod:`agents.leases`). The
  local deadline of the leases is the time the last beat was *sent* plus ``ttl`` minus a
  margin: the agents start no call or write after it, and their writes are fenced in the
  database in any case. A beat that finds the row had expired moves the deadline no more
  until the worker has asked which of its leases it still holds and cancelled the agents of
  the others (taken over, stopped, quarantined); it asks that every ``check_interval`` seconds
  anyway;
- the *scan*, which acquires claimable agents up to the worker's fair share every
  ``scan_interval`` seconds, starting one task per agent it gets (whole threads together: the
  agents of a thread share one :class:`~agents.view.ThreadView`); a worker above its share
  (another worker started) gives back the excess, idle threads first.

An agent task that fails (anything but losing its lease or halting itself) counts a failure on
its lease row, gives the lease back with ``next_attempt_at`` set after an exponential backoff
(so any worker restarts it later), and after ``max_failures`` in a row quarantines it. One
agent's failure never touches another's task.

A dead worker's row expires after ``ttl``; a live worker's next scan takes its agents, so they
move within ``ttl + scan_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from agents import leases, turns
from agents.agent import Agent, AgentHalted, AgentSettings, backoff_seconds
from agents.heartbeat import Heartbeat
from agents.leases import AgentKey, Lease, LeaseLost, Pool
from agents.llm import LlmClient
from agents.personas import PERSONAS
from agents.skips import Skips
from agents.supervisor import Supervisor
from agents.view import LIVE_MODE, ThreadView, TrackedShape, UserDirectory
from shapes.client import ShapeDefinition, ShapeRegistry, Transport

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSettings:
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    lease_ttl: float = 3.0
    scan_interval: float = 0.5
    max_agents: int = 100_000
    lease_margin: float = 0.5
    """Seconds before the lease's end at which the worker stops starting calls and writes."""
    check_interval: float = 3.0
    """Seconds between checks that every lease the worker runs is still its own."""
    agent: AgentSettings = field(default_factory=AgentSettings)


@dataclass
class Running:
    lease: Lease
    agent: Agent
    task: asyncio.Task[None]


class Worker:
    def __init__(
        self,
        pool: Pool,
        shape_url: str,
        transport: Transport,
        llm: LlmClient,
        settings: WorkerSettings,
    ) -> None:
        self.pool = pool
        self.shape_url = shape_url
        self.transport = transport
        self.llm = llm
        self.settings = settings
        self.registry = ShapeRegistry()
        self.running: dict[AgentKey, Running] = {}
        self.views: dict[uuid.UUID, tuple[ThreadView, int]] = {}
        self.users: UserDirectory | None = None
        self.valid_until = 0.0
        """Local deadline of every lease this worker holds (``time.monotonic()``); moved on by
        the heartbeat's thread."""
        self._lapses = 0
        """Beats that found the worker's row expired (written by the heartbeat's thread)."""
        self._checked_lapses = 0
        """The lapses the leases were checked after (written by the worker's loop)."""
        self._check_now = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.skips = Skips(pool, settings.worker_id, self._lost)
        """The agents' skips, written together (:mod:`agents.skips`)."""

    @property
    def worker_id(self) -> str:
        return self.settings.worker_id

    async def run(self) -> None:
        """Run until cancelled; then stop the agents and give their leases back."""
        users = self.registry.get(
            self.shape_url,
            ShapeDefinition.of("users"),
            transport=self.transport,
            live_mode=LIVE_MODE,
        )
        self.users = UserDirectory(TrackedShape(users))
        supervisor = Supervisor(self.pool, self.shape_url, self.transport, self.registry)
        self._loop = asyncio.get_running_loop()
        conninfo = self.pool.conninfo
        if not isinstance(conninfo, str):
            raise TypeError("the worker's pool must be made from a connection string")
        heartbeat = Heartbeat(conninfo, self.worker_id, self.settings.lease_ttl, self._on_beat)
        try:
            with contextlib.suppress(psycopg.Error, OSError):
                await self._register()  # live before the first scan
            heartbeat.start()
            async with asyncio.TaskGroup() as group:
                group.create_task(heartbeat.tick())
                group.create_task(self._supervise(supervisor))
                group.create_task(self._scan())
                group.create_task(self._watch_leases())
        finally:
            await asyncio.to_thread(heartbeat.stop)
            await self._shutdown()
            self.users.tracked.close()
            await users.close()

    async def _supervise(self, supervisor: Supervisor) -> None:
        """Run the supervisor, restarting it after a failure (its writes are idempotent)."""
        while True:
            try:
                await supervisor.run()
            except Exception as error:  # a shape or database failure: start it again
                logger.warning("supervisor failed (restarting): %r", error)
            await asyncio.sleep(self.settings.scan_interval)

    async def _shutdown(self) -> None:
        running = list(self.running.values())
        for entry in running:
            entry.task.cancel()
        for entry in running:
            with contextlib.suppress(BaseException):
                await entry.task
        await self.skips.flush()
        with contextlib.suppress(Exception):
            await leases.release_all(self.pool, [entry.lease for entry in running])
            await leases.unregister_worker(self.pool, self.worker_id)

    async def _scan(self) -> None:
        while True:
            try:
                await self._scan_once()
            except (psycopg.Error, OSError) as error:
                logger.warning("scan failed (retrying): %r", error)
            await asyncio.sleep(self.settings.scan_interval)

    async def _scan_once(self) -> None:
        share = min(await leases.fair_share(self.pool), self.settings.max_agents)
        wanted = share - len(self.running)
        if wanted < 0:
            await self._shed(-wanted)
            return
        for lease in await leases.acquire(self.pool, self.worker_id, wanted):
            self._start(lease)

    async def _shed(self, count: int) -> None:
        """Give back ``count`` agents when more workers share the load: idle threads first,
        whole threads where the count allows."""
        threads: dict[uuid.UUID, list[Running]] = {}
        for entry in self.running.values():
            threads.setdefault(entry.lease.key.thread_id, []).append(entry)
        ordered = sorted(threads.values(), key=lambda group: any(e.agent.busy for e in group))
        entries = [entry for group in ordered for entry in group][:count]
        for entry in entries:
            entry.task.cancel()
        for entry in entries:
            with contextlib.suppress(BaseException):
                await entry.task
        await self.skips.flush()
        await leases.release_all(self.pool, [entry.lease for entry in entries])

    async def _register(self) -> None:
        """The first beat, on the worker's loop (no agent runs yet: nothing to check)."""
        sent = time.monotonic()
        await leases.register_worker(self.pool, self.worker_id, self.settings.lease_ttl)
        self.valid_until = self._deadline(sent)

    def _deadline(self, sent: float) -> float:
        """The local deadline of the leases after a beat sent at ``sent`` (monotonic)."""
        return sent + self.settings.lease_ttl - self.settings.lease_margin

    def _on_beat(self, sent: float, was_live: bool) -> None:
        """A heartbeat (called in the heartbeat's thread)."""
        if not was_live:
            self._lapses += 1
        if self._checked_lapses == self._lapses:
            self.valid_until = self._deadline(sent)
        elif self._loop is not None:
            self._loop.call_soon_threadsafe(self._check_now.set)

    async def _watch_leases(self) -> None:
        """Check the leases after each lapse of the heartbeat, and every ``check_interval``."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._check_now.wait(), self.settings.check_interval)
            self._check_now.clear()
            lapses = self._lapses
            try:
                await self._check_leases()
            except (psycopg.Error, OSError) as error:
                logger.warning("lease check failed (retrying): %r", error)
                continue
            self._checked_lapses = lapses

    async def _check_leases(self) -> None:
        """Cancel the agents whose leases are no longer this worker's."""
        held = [entry.lease for entry in self.running.values()]
        kept = await leases.still_held(self.pool, self.worker_id, held)
        for lease in held:
            if lease.key not in kept:
                self._lost(lease)

    def _lost(self, lease: Lease) -> None:
        """The lease is no longer this worker's: stop its agent if it still runs under it."""
        entry = self.running.get(lease.key)
        if entry is not None and entry.lease is lease:
            logger.info("lost the lease of %s: stopping it", lease.key)
            entry.task.cancel()

    def _start(self, lease: Lease) -> None:
        persona = PERSONAS.get(lease.key.agent_id)
        if persona is None or lease.key in self.running:
            return
        view = self._view(lease.key.thread_id)

        def lease_valid() -> bool:
            entry = self.running.get(lease.key)
            held = entry is not None and entry.lease is lease
            return held and time.monotonic() < self.valid_until

        agent = Agent(
            lease, persona, view, self.pool, self.llm, self.settings.agent, self.skips, lease_valid
        )
        task = asyncio.create_task(agent.run(), name=f"agent {lease.key}")
        self.running[lease.key] = Running(lease, agent, task)
        task.add_done_callback(lambda done: asyncio.ensure_future(self._finished(lease, done)))

    def _view(self, thread_id: uuid.UUID) -> ThreadView:
        assert self.users is not None
        if thread_id in self.views:
            view, count = self.views[thread_id]
            self.views[thread_id] = (view, count + 1)
            return view
        view = ThreadView(thread_id, self.shape_url, self.transport, self.registry, self.users)
        self.views[thread_id] = (view, 1)
        return view

    async def _drop_view(self, thread_id: uuid.UUID) -> None:
        view, count = self.views[thread_id]
        if count > 1:
            self.views[thread_id] = (view, count - 1)
            return
        del self.views[thread_id]
        await view.close()

    async def _finished(self, lease: Lease, task: asyncio.Task[None]) -> None:
        entry = self.running.get(lease.key)
        if entry is not None and entry.lease is lease:
            del self.running[lease.key]
        await self._drop_view(lease.key.thread_id)
        if task.cancelled():
            return
        error = task.exception()
        if isinstance(error, LeaseLost):
            # it ran out locally, or was taken over: give it back in case it is still ours
            logger.info("agent %s stopped: %s", lease.key, error)
            with contextlib.suppress(Exception):
                await leases.release(self.pool, lease)
            return
        if error is None or isinstance(error, AgentHalted):
            if error is not None:
                logger.info("agent %s stopped: %s", lease.key, error)
            return
        logger.error("agent %s crashed: %r", lease.key, error, exc_info=error)
        with contextlib.suppress(Exception):
            await self._crashed(lease, error)

    async def _crashed(self, lease: Lease, error: BaseException) -> None:
        """Count the crash, back off and give the lease back (quarantine after too many)."""
        settings = self.settings.agent
        async with self.pool.connection() as conn, conn.transaction():
            await leases.fence(conn, lease)
            cursor = await conn.execute(
                "UPDATE agents.leases SET failures = failures + 1"
                " WHERE thread_id = %s AND agent_id = %s RETURNING failures",
                (lease.key.thread_id, lease.key.agent_id),
            )
            row = await cursor.fetchone()
        failures = int(row[0]) if row else 1
        reason = f"crashed: {error!r}"[:500]
        if failures >= settings.max_failures:
            await turns.halt(self.pool, lease, "quarantined", reason)
            return
        delay = backoff_seconds(failures, None, settings.backoff_base, settings.backoff_cap)
        await turns.backoff_agent(self.pool, lease, delay, reason)
        await leases.release(self.pool, lease)


def open_pool(database_url: str, size: int = 10) -> AsyncConnectionPool[Any]:
    return AsyncConnectionPool(
        database_url, min_size=1, max_size=size, open=False, kwargs={"autocommit": True}
    )
