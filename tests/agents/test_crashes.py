"""Worker processes killed with SIGKILL at points of an agent's cycle, and a worker paused past
its lease: agents move to a live worker within 5 s, nothing is written twice, no model call is
repeated once its reply was recorded, and a paused worker writes nothing when it wakes."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from agents.fake_api import FakeApi, Fault
from agents.faults import POINTS
from agents.personas import SARAH_ID
from tests.agents.conftest import fetch, make_thread, wait_until
from tests.agents.worker_process import WorkerProcess
from tests.syncd_process import SyncdProcess

Pool = AsyncConnectionPool[Any]
TTL = 2.5
TAKEOVER_LIMIT = 5.0
KILLS = int(os.environ.get("AGENTS_TEST_KILLS") or 12)
"""Kills per run (each worker dies at one of the six points with equal chance); raise it with
``AGENTS_TEST_KILLS`` for a longer soak."""
Spawn = Callable[..., WorkerProcess]


@pytest.fixture
def syncd(burn_dsn: str, tmp_path: Path) -> Iterator[SyncdProcess]:
    process = SyncdProcess(burn_dsn, tmp_path / "storage", long_poll_timeout=5)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def spawn(
    burn_dsn: str, syncd: SyncdProcess, base_url: str, tmp_path: Path
) -> AsyncIterator[Spawn]:
    started: list[WorkerProcess] = []

    def start(name: str, **env: Any) -> WorkerProcess:
        settings = {
            "AGENTS_LEASE_TTL": TTL,
            "AGENTS_SCAN_INTERVAL": 0.2,
            "AGENTS_DEBOUNCE_SECONDS": 0.05,
            "AGENTS_TIMEOUT_SECONDS": 20,
            "AGENTS_CALLS_PER_MINUTE": 10_000,
            "AGENTS_TOKEN_BUDGET": 10**12,
            **env,
        }
        worker = WorkerProcess(name, burn_dsn, syncd.url, base_url, tmp_path, **settings)
        worker.start()
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()


async def post(pool: Pool, thread: uuid.UUID, user: uuid.UUID, text: str) -> uuid.UUID:
    event = uuid.uuid4()
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO events (id, thread_id, user_id, kind, data)"
            " VALUES (%s, %s, %s, 'text', jsonb_build_object('text', %s::text))",
            (event, thread, user, text),
        )
    return event


async def held_by(pool: Pool, worker: str) -> int:
    rows = await fetch(
        pool, "SELECT count(*) FROM agents.leases WHERE worker = %s AND status = 'active'", worker
    )
    return int(rows[0][0])


async def settled(pool: Pool) -> bool:
    """Every active agent has handled its thread's last event and no reply awaits its effects."""
    rows = await fetch(
        pool,
        "SELECT (SELECT count(*) FROM agents.leases l WHERE l.status = 'active' AND l.position <"
        "   (SELECT max(seq) FROM events e WHERE e.thread_id = l.thread_id AND e.status = 'final'))"
        " + (SELECT count(*) FROM agents.turns t JOIN agents.leases l USING (thread_id, agent_id)"
        "    WHERE t.status = 'replied' AND l.status = 'active')"
        " + (SELECT count(*) FROM events e JOIN agents.leases l"
        "    ON l.thread_id = e.thread_id AND l.agent_id = e.user_id"
        "    WHERE e.status = 'streaming' AND l.status = 'active')",
    )
    return bool(rows[0][0] == 0)


async def check_exactly_once(pool: Pool, fake: FakeApi) -> None:
    # each agent event is the effect of exactly one performed turn, and vice versa
    rows = await fetch(
        pool,
        "SELECT (SELECT count(*) FROM events e JOIN users u ON u.id = e.user_id"
        "        WHERE u.kind = 'agent'),"
        "       (SELECT count(*) FROM agents.turns WHERE status = 'done'),"
        "       (SELECT count(*) FROM agents.turns t JOIN events e ON e.id = t.effect_event_id"
        "        WHERE t.status = 'done')",
    )
    assert rows[0][0] == rows[0][1] == rows[0][2] > 0
    # facts: exactly those of the recorded replies
    rows = await fetch(
        pool,
        "SELECT (SELECT count(*) FROM facts),"
        " (SELECT coalesce(sum(jsonb_array_length(reply->'content'->0->'input'->'facts')), 0)"
        "  FROM agents.turns WHERE status = 'done'"
        "  AND reply->'content'->0->>'name' = 'extract_facts')",
    )
    assert rows[0][0] == rows[0][1]
    # no call after a turn's reply was recorded, and at most one recorded reply per turn
    rows = await fetch(
        pool,
        "SELECT count(*) FROM agents.llm_calls c JOIN agents.llm_calls r"
        " ON r.turn_id = c.turn_id AND r.status = 'replied' AND r.id <> c.id"
        " WHERE c.started_at >= r.finished_at OR c.status = 'replied'",
    )
    assert rows == [(0,)]
    calls = await fetch(pool, "SELECT count(*) FROM agents.llm_calls")
    assert len(fake.requests) <= calls[0][0]


@pytest.mark.slow
@pytest.mark.timeout(800)
async def test_kill_9_at_points_of_the_cycle(pool: Pool, fake: FakeApi, spawn: Spawn) -> None:
    """Three workers die (SIGKILL, from inside) at random points of the cycle and are replaced
    at once; a fourth, which never dies, and the others take over the dead one's agents."""
    threads = [await make_thread(pool) for _ in range(3)]
    spawn("standby")
    armed = iter(range(1000))

    def spawn_armed() -> WorkerProcess:
        n = next(armed)
        return spawn(
            f"armed{n}",
            AGENTS_CRASH_AT=",".join(POINTS),
            AGENTS_CRASH_PROBABILITY=0.3,
            AGENTS_CRASH_SEED=n,
        )

    workers = [spawn_armed() for _ in range(3)]
    takeovers: list[float] = []
    watchers: list[asyncio.Task[None]] = []

    async def watch_takeover(dead: str, died_at: float) -> None:
        async def moved() -> bool:
            return await held_by(pool, dead) == 0

        await wait_until(moved, limit=60)
        takeovers.append(time.monotonic() - died_at)

    kills = 0
    message = 0
    started = time.monotonic()
    while kills < KILLS:
        assert time.monotonic() - started < 400, f"only {kills} kills"
        thread, owner = threads[message % len(threads)]
        message += 1
        await post(pool, thread, owner, f"Fact number {message}: I own {message} kettles.")
        await asyncio.sleep(0.5)
        for index, worker in enumerate(workers):
            if worker.exited():
                assert worker.process is not None
                assert worker.process.returncode == -signal.SIGKILL, worker.log_tail()
                kills += 1
                logging.getLogger(__name__).warning(
                    "kill %d: %s at %.1fs", kills, worker.name, time.monotonic() - started
                )
                watchers.append(asyncio.create_task(watch_takeover(worker.name, time.monotonic())))
                workers[index] = spawn_armed()
    await asyncio.gather(*watchers)
    for worker in workers:
        worker.stop()
    killed_at = time.monotonic()
    spawn("clean")
    try:
        await wait_until(lambda: settled(pool), limit=120)
    except AssertionError:
        dump = await fetch(
            pool,
            "SELECT l.agent_id, l.status, l.worker, l.position, l.failures, s.state, s.reason,"
            " (SELECT max(seq) FROM events e WHERE e.thread_id = l.thread_id)"
            " FROM agents.leases l LEFT JOIN agent_status s USING (thread_id, agent_id)",
        )
        dump += await fetch(
            pool,
            "SELECT 'turn', agent_id, trigger_seq, status, attempts FROM agents.turns"
            " WHERE status = 'replied' UNION ALL SELECT 'event', user_id, seq, status, 0"
            " FROM events WHERE status = 'streaming'",
        )
        raise AssertionError(str(dump)) from None
    logging.getLogger(__name__).warning(
        "%d kills in %.0fs, settled in %.0fs; takeovers %s",
        kills,
        killed_at - started,
        time.monotonic() - killed_at,
        sorted(round(t, 1) for t in takeovers),
    )
    await check_exactly_once(pool, fake)
    quarantined = await fetch(pool, "SELECT count(*) FROM agents.leases WHERE status <> 'active'")
    assert quarantined == [(0,)]
    assert max(takeovers) <= TAKEOVER_LIMIT, takeovers


async def test_a_paused_worker_writes_nothing(pool: Pool, fake: FakeApi, spawn: Spawn) -> None:
    thread, owner = await make_thread(pool)
    fake.inject(Fault("delay", persona="sarah", seconds=2 * TTL + 3))
    paused = spawn("paused")

    async def runs_sarah() -> bool:
        return await held_by(pool, "paused") == 3

    await wait_until(runs_sarah)
    said = await post(pool, thread, owner, "I breed competitive pigeons.")

    async def asked() -> bool:
        return any(r.persona == "sarah" for r in fake.requests)

    await wait_until(asked)
    paused.signal(signal.SIGSTOP)  # its response is held by the fake meanwhile
    spawn("taker")

    async def done_by_taker() -> bool:
        rows = await fetch(
            pool,
            "SELECT l.worker FROM agents.turns t JOIN agents.leases l USING (thread_id, agent_id)"
            " WHERE t.trigger_event_id = %s AND t.status = 'done'",
            said,
        )
        return rows == [("taker",)]

    await wait_until(done_by_taker, limit=60)
    paused.signal(signal.SIGCONT)  # it now gets its (delayed) reply, under a stale epoch

    async def gave_up() -> bool:
        return "lost the lease" in paused.log_tail(200) or "ran out locally" in paused.log_tail(200)

    await wait_until(gave_up, limit=30)
    await asyncio.sleep(1.0)  # room for any write it might still attempt
    # Only the calls for this message: once awake, the paused worker may be handed Sarah again
    # (the workers share the agents fairly) and answer later events under a new epoch.
    calls = await fetch(
        pool,
        "SELECT worker, status FROM agents.llm_calls"
        " WHERE agent_id = %s AND caused_by = %s ORDER BY started_at",
        SARAH_ID,
        said,
    )
    assert [c for c in calls if c[0] == "paused"] == [("paused", "sent")]  # never recorded
    assert ("taker", "replied") in calls
    # one turn for the message, performed under the taker's epoch; every final event of
    # Sarah's is the effect of one performed turn (a later turn may be streaming meanwhile)
    turn = await fetch(
        pool, "SELECT epoch, status FROM agents.turns WHERE trigger_event_id = %s", said
    )
    epochs = await fetch(
        pool,
        "SELECT worker, epoch FROM agents.llm_calls WHERE caused_by = %s ORDER BY started_at",
        said,
    )
    assert epochs[0][0] == "paused" and epochs[-1][0] == "taker"
    assert turn == [(epochs[-1][1], "done")] and epochs[-1][1] > epochs[0][1]
    rows = await fetch(
        pool,
        "SELECT (SELECT count(*) FROM events WHERE user_id = %s AND status = 'final'),"
        " (SELECT count(*) FROM agents.turns t JOIN events e ON e.id = t.effect_event_id"
        "  WHERE t.agent_id = %s AND t.status = 'done')",
        SARAH_ID,
        SARAH_ID,
    )
    assert rows[0][0] == rows[0][1] >= 1
