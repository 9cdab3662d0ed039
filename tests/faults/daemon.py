"""A module-wide database and syncd child process for the hostile-request tests."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from syncd.pgprovider import PostgresServer, drop_database


@contextmanager
def scratch_database(server: PostgresServer, setup: str) -> Iterator[str]:
    """A new database on ``server`` prepared by the SQL ``setup``; dropped afterwards."""
    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(server.dsn, dbname=name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(setup.encode())
        yield dsn
    finally:
        drop_database(server.dsn, name)


def assert_json_error(answer: httpx.Response, status: int | None = None) -> object:
    """A 4xx (``status`` when given) whose body is JSON; returns the body."""
    if status is not None:
        assert answer.status_code == status, (answer.status_code, answer.text[:500])
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text[:500])
    assert answer.headers.get("content-type", "").startswith("application/json"), answer.headers
    return json.loads(answer.content)
