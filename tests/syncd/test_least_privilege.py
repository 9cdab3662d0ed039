"""syncd under a role that owns no table: tables prepared by their owner with
``sql/002_publish_table.sql``, before start or while syncd runs."""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.rows import TupleRow

from shapes.errors import InvalidRequest
from syncd.catalog import RETRY_INTERVAL, PublicationManager, load_table
from tests.least_privilege import Roles, least_privilege_roles, psql, run_sql_script
from tests.syncd_process import SyncdProcess


@pytest.fixture
def roles(pg_dsn: str, pg_bindir: Path) -> Iterator[Roles]:
    """The two roles, with tables ``items`` (prepared) and ``later`` (not), owned by the owner."""
    with least_privilege_roles(pg_dsn, pg_bindir) as roles:
        with psycopg.connect(roles.owner_dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, title text)")
            conn.execute("CREATE TABLE later (id int PRIMARY KEY, title text)")
            conn.execute("INSERT INTO later VALUES (1, 'one')")
            conn.execute("CREATE TABLE unreadable (id int PRIMARY KEY)")
            conn.execute("REVOKE SELECT ON unreadable FROM PUBLIC")
        run_sql_script(pg_bindir, roles.owner_dsn, "002_publish_table.sql", prepare(roles))
        yield roles


def prepare(roles: Roles, table: str = "items") -> list[str]:
    return [f"table={table}", f"role={roles.syncd}"]


def shape(daemon: SyncdProcess, table: str) -> httpx.Response:
    return httpx.get(daemon.shape_url, params={"table": table, "offset": "-1"}, timeout=30)


def test_a_table_prepared_while_syncd_runs_is_served_without_a_restart(
    roles: Roles, pg_bindir: Path, tmp_path: Path
) -> None:
    daemon = SyncdProcess(roles.syncd_dsn, tmp_path / "storage")
    daemon.start()
    try:
        assert shape(daemon, "items").status_code == 200
        with psycopg.connect(roles.owner_dsn, autocommit=True) as conn:  # published, not granted
            conn.execute("ALTER PUBLICATION syncd_publication ADD TABLE unreadable")
            conn.execute("ALTER TABLE unreadable REPLICA IDENTITY FULL")
        unreadable = shape(daemon, "unreadable")
        assert unreadable.status_code == 400, unreadable.text
        [message] = unreadable.json()["errors"]["table"]
        assert "may not read the table" in message and "sql/002_publish_table.sql" in message
        refused = shape(daemon, "later")
        assert refused.status_code == 400, refused.text
        [message] = refused.json()["errors"]["table"]
        assert "sql/002_publish_table.sql" in message
        command = message.split("sql/002_publish_table.sql: ", 1)[1].removesuffix("; then retry")
        assert command == (
            f"psql -v table=later -v role={roles.syncd} -f sql/002_publish_table.sql <database>"
        )
        # the owner runs the command the answer gives
        args = shlex.split(command.removesuffix(" <database>"))[1:]
        done = psql(pg_bindir, roles.owner_dsn, *args)
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 5 * RETRY_INTERVAL
        while (answer := shape(daemon, "later")).status_code == 400:
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.1)
        assert answer.status_code == 200, answer.text
        assert [m["value"]["title"] for m in answer.json() if "key" in m] == ["one"]
        with psycopg.connect(roles.owner_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO later VALUES (2, 'two')")
        assert wait_for_row(daemon, answer, "2") == "two"
    finally:
        daemon.stop()


def wait_for_row(daemon: SyncdProcess, first: httpx.Response, key: str) -> str:
    """Follow the shape of ``first`` live until the row with id ``key`` arrives."""
    params = {
        "table": "later",
        "handle": first.headers["electric-handle"],
        "offset": first.headers["electric-offset"],
    }
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        answer = httpx.get(daemon.shape_url, params={**params, "live": "true"}, timeout=30)
        assert answer.status_code == 200, answer.text
        params["offset"] = answer.headers["electric-offset"]
        for message in answer.json():
            if message.get("value", {}).get("id") == key:
                return str(message["value"]["title"])
    raise AssertionError("the row never arrived")


def test_the_prepare_script_takes_the_publication_and_runs_twice(
    roles: Roles, pg_bindir: Path
) -> None:
    variables = [*prepare(roles, "later"), "publication=other_publication"]
    for _ in range(2):
        run_sql_script(pg_bindir, roles.owner_dsn, "002_publish_table.sql", variables)
    with psycopg.connect(roles.admin_dsn) as conn:
        published = conn.execute(
            "SELECT pubname::text, tablename::text FROM pg_publication_tables ORDER BY 1, 2"
        ).fetchall()
        identity = conn.execute("SELECT relreplident FROM pg_class WHERE relname = 'later'")
        readable = conn.execute(
            "SELECT has_table_privilege(%s, 'later', 'SELECT')", [roles.syncd]
        ).fetchone()
        assert identity.fetchone() == ("f",)
    assert published == [("other_publication", "later"), ("syncd_publication", "items")]
    assert readable == (True,)


def test_the_prepare_script_says_who_must_own_the_publication(
    roles: Roles, pg_bindir: Path
) -> None:
    with psycopg.connect(roles.admin_dsn, autocommit=True) as conn:
        conn.execute("CREATE PUBLICATION admins_publication")
    variables = [*prepare(roles, "later"), "publication=admins_publication"]
    args = [arg for variable in variables for arg in ("-v", variable)]
    done = psql(pg_bindir, roles.owner_dsn, *args, "-f", "sql/002_publish_table.sql")
    assert done.returncode != 0
    assert "only its owner may add tables to it" in done.stderr
    assert f"ALTER PUBLICATION admins_publication OWNER TO {roles.owner}" in done.stderr


class CountingConnection:
    """An async connection that counts the statements run through ``execute``."""

    def __init__(self, conn: psycopg.AsyncConnection[TupleRow]) -> None:
        self.conn = conn
        self.info = conn.info
        self.statements = 0

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        self.statements += 1
        await asyncio.sleep(0.01)  # concurrent callers overlap
        return await self.conn.execute(*args, **kwargs)


async def test_a_refused_table_is_tried_at_most_once_a_second(roles: Roles) -> None:
    now = [0.0]
    manager = PublicationManager("syncd_publication", clock=lambda: now[0])
    async with await psycopg.AsyncConnection.connect(roles.syncd_dsn, autocommit=True) as conn:
        table = await load_table(conn, "public", "later")
        counting = CountingConnection(conn)
        with pytest.raises(InvalidRequest, match="002_publish_table.sql"):
            await manager.add_table(counting, table)  # type: ignore[arg-type]
        tried = counting.statements
        assert tried == 2  # the publication read again, then ALTER PUBLICATION
        attempts = [manager.add_table(counting, table) for _ in range(20)]  # type: ignore[arg-type]
        results = await asyncio.gather(*attempts, return_exceptions=True)
        assert all(isinstance(r, InvalidRequest) for r in results)
        assert counting.statements == tried  # refused from memory
        now[0] += RETRY_INTERVAL
        attempts = [manager.add_table(counting, table) for _ in range(20)]  # type: ignore[arg-type]
        results = await asyncio.gather(*attempts, return_exceptions=True)
        assert all(isinstance(r, InvalidRequest) for r in results)
        assert counting.statements == 2 * tried  # one shared attempt
        with psycopg.connect(roles.owner_dsn, autocommit=True) as owner:
            owner.execute(
                sql.SQL("ALTER PUBLICATION syncd_publication ADD TABLE later; {}").format(
                    sql.SQL("ALTER TABLE later REPLICA IDENTITY FULL")
                )
            )
        now[0] += RETRY_INTERVAL
        await manager.add_table(counting, await load_table(conn, "public", "later"))  # type: ignore[arg-type]


async def test_a_request_sharing_a_cancelled_attempt_prepares_the_table_itself(
    pg_dsn: str,
) -> None:
    manager = PublicationManager("syncd_publication")
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await conn.execute("CREATE TABLE shared (id int PRIMARY KEY)")
        await manager.ensure_publication(conn)
        table = await load_table(conn, "public", "shared")
        counting = CountingConnection(conn)
        first = asyncio.ensure_future(manager.add_table(counting, table))  # type: ignore[arg-type]
        await asyncio.sleep(0)  # the first request is preparing the table
        second = asyncio.ensure_future(manager.add_table(counting, table))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        first.cancel()  # its client went away
        await second
        assert first.cancelled()
        cur = await conn.execute(
            "SELECT relreplident::text FROM pg_class c JOIN pg_publication_tables p"
            " ON p.tablename = c.relname WHERE c.relname = 'shared'"
        )
        assert await cur.fetchall() == [("f",)]
