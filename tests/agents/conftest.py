"""Fixtures for the agents: the offline Messages API served on loopback, a migrated Burn
database with a connection pool, and helpers to make threads."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from agents.agent import AgentSettings
from agents.decide import Rules
from agents.fake_api import FakeApi, serve
from agents.llm import LlmClient
from agents.personas import FRANKIE_ID, JERRY_ID, SARAH_ID
from agents.settings import LlmSettings
from agents.worker import Worker, WorkerSettings
from shapes.client import HttpxTransport
from syncd.embed import EmbeddedSyncd
from tests.web.conftest import Api, client_for
from web.app import create_app
from web.app import open_pool as open_web_pool
from web.config import Settings
from web.config import Settings as WebSettings
from web.migrate import migrate

AGENT_ROLES = ((SARAH_ID, "producer"), (JERRY_ID, "comedian"), (FRANKIE_ID, "comedian"))


@pytest.fixture
def fake() -> FakeApi:
    return FakeApi(seed=7)


@pytest.fixture
async def base_url(fake: FakeApi) -> AsyncIterator[str]:
    async with serve(fake) as url:
        yield url


@pytest.fixture
def burn_dsn(pg_dsn: str) -> str:
    """A fresh database with the app's migrations (the agents' tables included) applied."""
    migrate(pg_dsn, Settings().migrations_dir)
    return pg_dsn


@pytest.fixture
async def pool(burn_dsn: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    the_pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        burn_dsn, min_size=1, max_size=8, open=False, kwargs={"autocommit": True}
    )
    await the_pool.open(wait=True, timeout=30)
    try:
        yield the_pool
    finally:
        await the_pool.close()


async def make_thread(
    pool: AsyncConnectionPool[Any], owner_name: str | None = None, *, agents: bool = True
) -> tuple[uuid.UUID, uuid.UUID]:
    """A thread with a human owner (and the three agents); returns (thread id, owner id)."""
    thread, owner = uuid.uuid4(), uuid.uuid4()
    name = owner_name or "u" + owner.hex[:8]
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO users (id, name, kind) VALUES (%s, %s, 'human')", (owner, name)
        )
        await conn.execute("INSERT INTO threads (id, name) VALUES (%s, 'roast')", (thread,))
        await conn.execute(
            "INSERT INTO memberships (id, thread_id, user_id, role) VALUES (%s, %s, %s, 'owner')",
            (uuid.uuid4(), thread, owner),
        )
        if agents:
            for agent, role in AGENT_ROLES:
                await conn.execute(
                    "INSERT INTO memberships (id, thread_id, user_id, role)"
                    " VALUES (%s, %s, %s, %s)",
                    (uuid.uuid4(), thread, agent, role),
                )
    return thread, owner


async def wait_until(
    condition: Callable[[], Awaitable[bool]], limit: float = 60.0, pause: float = 0.05
) -> None:
    """Poll ``condition`` until it holds; fail after ``limit`` seconds (a hang, not a speed
    requirement)."""
    deadline = asyncio.get_running_loop().time() + limit
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {limit}s: {condition}")
        await asyncio.sleep(pause)


async def fetch(pool: AsyncConnectionPool[Any], query: str, *params: Any) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(query.encode(), params)
        rows: list[tuple[Any, ...]] = await cursor.fetchall()
        return rows


@dataclass
class Runtime:
    """Embedded syncd, the web app in-process, the fake Messages API and in-process workers."""

    pool: AsyncConnectionPool[Any]
    syncd: EmbeddedSyncd
    api: Api
    llm: LlmClient
    workers: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    def start_worker(self, name: str, **settings: Any) -> Worker:
        agent = settings.pop("agent", AgentSettings(rules=Rules(debounce_seconds=0.05)))
        worker = Worker(
            self.pool,
            self.syncd.shape_url,
            HttpxTransport(self.syncd.default_client),
            self.llm,
            WorkerSettings(worker_id=name, agent=agent, **settings),
        )
        self.workers[name] = asyncio.create_task(worker.run())
        return worker

    async def stop_worker(self, name: str) -> None:
        task = self.workers.pop(name)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def stop(self) -> None:
        for name in list(self.workers):
            await self.stop_worker(name)


@pytest.fixture
async def runtime(
    burn_dsn: str, pool: AsyncConnectionPool[Any], base_url: str, tmp_path: Path
) -> AsyncIterator[Runtime]:
    web_settings = WebSettings(database_url=burn_dsn, secret="test-secret-" + "x" * 32)
    web_pool = open_web_pool(web_settings)
    await web_pool.open(wait=True, timeout=30)
    database = conninfo_to_dict(burn_dsn).get("dbname", "x")
    llm = LlmClient(
        LlmSettings(api_key="test", base_url=base_url, max_retries=0, timeout_seconds=5.0)
    )
    try:
        async with (
            EmbeddedSyncd(burn_dsn, tmp_path / "storage", slot=f"s_{database}") as syncd,
            client_for(create_app(web_settings, pool=web_pool)) as client,
        ):
            the_runtime = Runtime(pool, syncd, Api(client, web_settings, web_pool), llm)
            try:
                yield the_runtime
            finally:
                await the_runtime.stop()
    finally:
        await llm.aclose()
        await web_pool.close()
