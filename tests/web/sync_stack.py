"""What the sync-route tests share: syncd and web app processes on a migrated database, users
signed up over HTTP, and Postgres as the oracle of what each user may see.
"""

from __future__ import annotations

import contextlib
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from syncd.pgprovider import PostgresServer, drop_database
from tests.syncd_process import SyncdProcess
from tests.web.conftest import SECRET
from tests.web.web_process import WebProcess
from web.config import Settings
from web.migrate import migrate
from web.sync import SYNC_TABLES, SyncTable

TABLES = {table.table: table for table in SYNC_TABLES}


def agent_status_table_exists(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT to_regclass('public.agent_status')").fetchone() != (None,)


def row_id(table: str, row: dict[str, Any]) -> str:
    """What identifies a row of ``table``: its id (``agent_status``: thread and agent)."""
    if table == "agent_status":
        return f"{row['thread_id']}/{row['agent_id']}"
    return str(row["id"])


def visible_ids(dsn: str, table: SyncTable, user: uuid.UUID) -> set[str]:
    """The ids of ``table``'s rows ``user`` may see, as Postgres decides the scope."""
    key = "thread_id::text || '/' || agent_id::text" if table.table == "agent_status" else "id"
    where = table.where.replace("$1", "%(user)s::uuid")
    query = f"SELECT {key}::text FROM {table.table} WHERE {where}"
    with psycopg.connect(dsn) as conn:
        return {row[0] for row in conn.execute(query.encode(), {"user": str(user)}).fetchall()}


@dataclass
class Person:
    """A user signed up over HTTP, with their session token."""

    id: uuid.UUID
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}


@dataclass
class Stack:
    """syncd and web processes on one migrated database."""

    dsn: str
    syncd: SyncdProcess
    webs: list[WebProcess]
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30.0))

    @property
    def web(self) -> WebProcess:
        return self.webs[0]

    def url(self, table: str, web: int = 0) -> str:
        return self.webs[web].url + "/api/sync/" + table

    def sign_up(self) -> Person:
        name = "u" + uuid.uuid4().hex[:8]
        answer = self.http.post(
            self.web.url + "/api/auth/sign-up", json={"name": name, "password": "correct horse"}
        )
        assert answer.status_code == 201, answer.text
        self.http.cookies.clear()
        body = answer.json()
        return Person(uuid.UUID(body["user"]["id"]), name, body["token"])

    def write(self, person: Person, path: str, web: int = 0, **body: Any) -> int:
        body.setdefault("id", str(uuid.uuid4()))
        answer = self.http.post(self.webs[web].url + path, json=body, headers=person.headers)
        assert answer.status_code == 200, answer.text
        txid: int = answer.json()["txid"]
        return txid

    def create_thread(self, person: Person) -> uuid.UUID:
        thread = uuid.uuid4()
        self.write(person, "/api/threads", id=str(thread), name="roast me")
        return thread

    def post(self, person: Person, thread: uuid.UUID, text: str) -> int:
        return self.write(person, f"/api/threads/{thread}/messages", text=text)

    def sign_out(self, person: Person, web: int = 0) -> None:
        answer = self.http.post(self.webs[web].url + "/api/auth/sign-out", headers=person.headers)
        assert answer.status_code == 204, answer.text

    def sql(self, query: str, *params: Any) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(query.encode(), params)

    def set_agent_status(self, thread: uuid.UUID, state: str = "running") -> None:
        """A status row for Sarah in ``thread`` (as the agents' worker writes it)."""
        self.sql(
            "INSERT INTO agent_status (thread_id, agent_id, state) VALUES"
            " (%s, '00000000-0000-4000-8000-000000000001', %s)"
            " ON CONFLICT (thread_id, agent_id) DO UPDATE SET state = EXCLUDED.state",
            thread,
            state,
        )


def start_stack(
    dsn: str, tmp_path: Path, *, webs: int = 1, long_poll_timeout: float = 20
) -> Iterator[Stack]:
    """syncd and ``webs`` web processes; every process is stopped afterwards."""
    syncd = SyncdProcess(dsn, tmp_path / "storage", long_poll_timeout=long_poll_timeout)
    started: list[WebProcess] = []
    syncd.start()
    try:
        for _ in range(webs):
            web = WebProcess(
                dsn, tmp_path, SECRET, syncd_url=syncd.url, sign_up_client_limit=10_000
            )
            web.start()
            started.append(web)
        stack = Stack(dsn, syncd, started)
        try:
            yield stack
        finally:
            stack.http.close()
    finally:
        for web in started:
            web.stop()
        syncd.stop()


@contextlib.contextmanager
def burn_database(server: PostgresServer) -> Iterator[str]:
    """A new migrated database on ``server`` (for a stack shared by a module's tests)."""
    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(server.dsn, dbname=name)
    try:
        migrate(dsn, Settings().migrations_dir)
        yield dsn
    finally:
        drop_database(server.dsn, name)


def needs_agent_status(dsn: str) -> None:
    if not agent_status_table_exists(dsn):
        pytest.skip("the agent_status table is not migrated yet")
