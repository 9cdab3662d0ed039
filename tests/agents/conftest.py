"""Fixtures for the agents: the offline Messages API served on loopback, a migrated Burn
database with a connection pool, and helpers to make threads."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from agents.fake_api import FakeApi, serve
from agents.personas import FRANKIE_ID, JERRY_ID, SARAH_ID
from web.config import Settings
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
