"""Benchmark ``agent-reaction``: from a person's message to the agent's request to the model.

Everything runs as in production, each in its own process: Postgres, syncd, the offline
Messages API (``python -m agents fake-api``) and one agents worker (``python -m agents run``,
no debounce, no streaming), on a database migrated by ``python -m web migrate``. One thread
has a person and Sarah. For each of ``--agent-messages`` (200) messages, one at a time, the
benchmark commits the message and takes the time from its ``COMMIT`` to the arrival of Sarah's
request at the fake (wall clocks of one machine). A plain subscriber (a Python
:class:`~shapes.client.ShapeStream` following the thread's events over long-poll) measures, in
the same run, the delay of the same change to any client: the baseline.

It prints p50 and p99 of both and::

    BENCH agent-reaction value=<p50 ms> unit=ms baseline=<subscriber p50 ms> ratio=<b/v>

The reaction includes what the runtime adds on purpose: the consistent cut across the
agent's three shapes and the turn's claim transaction before the call.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psycopg
from psycopg.conninfo import make_conninfo

from bench.children import free_port, stop_child, wait_http
from bench.cluster import bench_database
from bench.large_txn import ROOT, _Daemon
from bench.stats import summary
from shapes.client import ShapeDefinition, ShapeStream

SARAH = "00000000-0000-4000-8000-000000000001"
TARGET_P50_MS = 20.0


def child(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as log_file:
        return subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )


def make_thread(dsn: str) -> tuple[str, str]:
    thread, person = str(uuid.uuid4()), str(uuid.uuid4())
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(
            "INSERT INTO users (id, name, kind) VALUES (%s, 'bencher', 'human')", (person,)
        )
        conn.execute("INSERT INTO threads (id, name) VALUES (%s, 'bench')", (thread,))
        conn.execute(
            "INSERT INTO memberships (id, thread_id, user_id, role) VALUES"
            " (gen_random_uuid(), %s, %s, 'owner'), (gen_random_uuid(), %s, %s, 'producer')",
            (thread, person, thread, SARAH),
        )
    return thread, person


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure(
    dsn: str, shape_url: str, api_url: str, thread: str, person: str, messages: int
) -> tuple[list[float], list[float]]:
    reactions: list[float] = []
    deliveries: list[float] = []
    where = f"thread_id = '{thread}'"
    async with (
        httpx.AsyncClient(timeout=30) as http,
        ShapeStream(shape_url, ShapeDefinition.of("events", where=where)) as stream,
        await psycopg.AsyncConnection.connect(
            committing_synchronously(dsn), autocommit=True
        ) as conn,
    ):
        batches = stream.batches()
        await anext(batches)  # the snapshot
        await settle(conn, thread)
        for n in range(messages):
            seen = len((await http.get(f"{api_url}/_fake/requests")).json())
            event = str(uuid.uuid4())
            await conn.execute(
                "INSERT INTO events (id, thread_id, user_id, kind, data)"
                " VALUES (%s, %s, %s, 'text', jsonb_build_object('text', %s::text))",
                (event, thread, person, f"Message {n}: I have {n} houseplants."),
            )
            committed = time.time()
            while not any(m.get("value", {}).get("id") == event for m in await anext(batches)):
                pass
            deliveries.append((time.time() - committed) * 1000)
            while True:
                new = (await http.get(f"{api_url}/_fake/requests", params={"since": seen})).json()
                if new:
                    reactions.append((new[0]["received"] - committed) * 1000)
                    break
                await asyncio.sleep(0.002)
            await settle(conn, thread)
    return reactions, deliveries


async def settle(conn: psycopg.AsyncConnection[tuple[object, ...]], thread: str) -> None:
    """Wait until Sarah has handled every event of the thread (no call in flight)."""
    while True:
        cursor = await conn.execute(
            "SELECT (SELECT position FROM agents.leases WHERE thread_id = %s AND agent_id = %s)"
            " >= (SELECT coalesce(max(seq), 0) FROM events WHERE thread_id = %s)",
            (thread, SARAH, thread),
        )
        row = await cursor.fetchone()
        if row is not None and row[0]:
            return
        await asyncio.sleep(0.01)


def run_agent_reaction(messages: int, *, keep: bool = False) -> None:
    with bench_database("agents", keep=keep) as db:
        env = dict(os.environ, WEB_DATABASE_URL=db.dsn)
        subprocess.run([sys.executable, "-m", "web", "migrate"], cwd=ROOT, env=env, check=True)
        syncd = _Daemon(db.dsn, db.base / "storage", "bench_agents", None, db.base / "syncd.log")
        syncd.start(60)
        api_port = free_port()
        api_url = f"http://127.0.0.1:{api_port}"
        fake = child(["-m", "agents", "fake-api", "--port", str(api_port)], env, db.base / "f.log")
        try:
            wait_http(fake, f"{api_url}/_fake/requests")
            reactions, deliveries = run_worker(db.dsn, db.base, syncd.url, api_url, messages)
        finally:
            stop_child(fake)
            syncd.stop()
        report(messages, reactions, deliveries)


def run_worker(
    dsn: str, base: Path, syncd_url: str, api_url: str, messages: int
) -> tuple[list[float], list[float]]:
    """Make the thread, run one worker and measure (the worker is stopped afterwards)."""
    thread, person = make_thread(dsn)
    worker = child(
        ["-m", "agents", "run"], worker_env(dsn, syncd_url, api_url), base / "worker.log"
    )
    try:
        return asyncio.run(measure(dsn, syncd_url + "/v1/shape", api_url, thread, person, messages))
    finally:
        stop_child(worker)


def committing_synchronously(dsn: str) -> str:
    """``dsn`` for sessions whose commits reach replication at once, as on a production server.

    The benchmarks' throw-away cluster commits asynchronously by default (its WAL writer then
    hands commits to replication every few milliseconds); people's messages and the agents'
    writes commit the default way here, so that their delays are what a deployment sees."""
    return make_conninfo(dsn, options="-c synchronous_commit=on")


def worker_env(dsn: str, syncd_url: str, api_url: str) -> dict[str, str]:
    """A worker's environment: no debounce, no streaming, no retries, no budget in the way."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AGENTS_", "ANTHROPIC_"))},
        "AGENTS_DATABASE_URL": committing_synchronously(dsn),
        "AGENTS_SYNCD_URL": syncd_url,
        "ANTHROPIC_BASE_URL": api_url,
        "AGENTS_DEBOUNCE_SECONDS": "0",
        "AGENTS_STREAM": "false",
        "AGENTS_MAX_RETRIES": "0",
        "AGENTS_CALLS_PER_MINUTE": "100000",
        "AGENTS_TOKEN_BUDGET": str(10**12),
        "AGENTS_LOG_LEVEL": "WARNING",
    }


def report(messages: int, reactions: list[float], deliveries: list[float]) -> None:
    p50, baseline = statistics.median(reactions), statistics.median(deliveries)
    print(
        f"agent-reaction: {messages} messages; reaction p50 {p50:.1f} ms,"
        f" p99 {percentile(reactions, 0.99):.1f} ms (target p50 <= {TARGET_P50_MS:.0f} ms);"
        f" plain subscriber p50 {baseline:.1f} ms, p99 {percentile(deliveries, 0.99):.1f} ms",
        flush=True,
    )
    print(summary("agent-reaction", p50, "ms", baseline, baseline / p50), flush=True)
