"""Fixtures for the web app: a migrated database, the app in-process, signed-up users."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette

from web.app import create_app, open_pool
from web.config import Settings
from web.migrate import migrate

SECRET = "test-secret-" + "x" * 32
SARAH = uuid.UUID("00000000-0000-4000-8000-000000000001")
JERRY = uuid.UUID("00000000-0000-4000-8000-000000000002")
FRANKIE = uuid.UUID("00000000-0000-4000-8000-000000000003")
AGENTS = {SARAH, JERRY, FRANKIE}


@pytest.fixture
def burn_dsn(pg_dsn: str) -> str:
    """A fresh database with the app's migrations applied."""
    migrate(pg_dsn, Settings().migrations_dir)
    return pg_dsn


@pytest.fixture
def settings(burn_dsn: str) -> Settings:
    return Settings(database_url=burn_dsn, secret=SECRET, pool_size=4)


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[AsyncConnectionPool[Any]]:
    the_pool = open_pool(settings)
    await the_pool.open(wait=True, timeout=30)
    try:
        yield the_pool
    finally:
        await the_pool.close()


class AppClient(httpx.AsyncClient):
    """An httpx client calling an app in-process; as a context manager it also runs the app's
    lifespan (the sign-out listener, and closing the relay to syncd on the way out)."""

    def __init__(self, app: Starlette, address: str) -> None:
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        super().__init__(transport=transport, base_url="http://testserver")
        self._lifespan = app.router.lifespan_context(app)

    async def __aenter__(self) -> AppClient:
        await self._lifespan.__aenter__()
        await super().__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            await super().__aexit__(*exc_info)
        finally:
            await self._lifespan.__aexit__(*exc_info)


def client_for(app: Starlette, address: str = "127.0.0.1") -> AppClient:
    """An httpx client calling ``app`` in-process, as if from ``address``."""
    return AppClient(app, address)


@pytest.fixture
async def api(settings: Settings, pool: AsyncConnectionPool[Any]) -> AsyncIterator[Api]:
    app = create_app(settings, pool=pool)
    async with client_for(app) as client:
        yield Api(client, settings, pool)


@dataclass
class User:
    """A signed-up user and the headers that authenticate as them."""

    id: uuid.UUID
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}


@dataclass
class Api:
    """The in-process app, with helpers."""

    client: httpx.AsyncClient
    settings: Settings
    pool: AsyncConnectionPool[Any]

    async def sign_up(self, name: str | None = None, password: str = "correct horse") -> User:
        name = name or "u" + secrets.token_hex(4)
        answer = await self.client.post(
            "/api/auth/sign-up", json={"name": name, "password": password}
        )
        assert answer.status_code == 201, answer.text
        self.client.cookies.clear()  # each request says who it is, with a bearer token
        body = answer.json()
        return User(uuid.UUID(body["user"]["id"]), body["user"]["name"], body["token"])

    async def post(self, user: User | None, path: str, body: Any) -> httpx.Response:
        headers = user.headers if user is not None else {}
        return await self.client.post(path, json=body, headers=headers)

    async def create_thread(self, user: User, name: str = "roast me") -> uuid.UUID:
        thread = uuid.uuid4()
        answer = await self.post(user, "/api/threads", {"id": str(thread), "name": name})
        assert answer.status_code == 200, answer.text
        return thread

    async def write(self, user: User, thread: uuid.UUID, verb: str, **body: Any) -> httpx.Response:
        body.setdefault("id", str(uuid.uuid4()))
        return await self.post(user, f"/api/threads/{thread}/{verb}", body)

    async def fetch(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(query.encode(), params)
            rows: list[tuple[Any, ...]] = await cursor.fetchall()
            return rows


def with_settings(settings: Settings, **changes: Any) -> Settings:
    return replace(settings, **changes)


Factory = Callable[..., Awaitable[Any]]
