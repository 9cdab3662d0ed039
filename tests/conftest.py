"""Fixtures for the whole suite: one Postgres per session, one fresh database per test."""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from syncd.pgprovider import PostgresServer, drop_database, provide_postgres

_log = logging.getLogger("tests.conftest")

PG_FIXTURES = {"pg_server", "pg_dsn", "pg_bindir"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use a Postgres fixture get the ``pg`` marker even when they forget it."""
    for item in items:
        if PG_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.pg)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """``$TEST_DATABASE_URL``, else a throw-away embedded cluster (fsync off)."""
    base = Path(tempfile.mkdtemp(prefix="syncd-test-pg-"))
    base.chmod(0o711)  # the server may run as another OS user
    started = time.monotonic()
    server = provide_postgres(base / "pgdata", env_var="TEST_DATABASE_URL", fast=True)
    _log.info("Postgres (%s) ready in %.2fs", server.provider, time.monotonic() - started)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base)


@pytest.fixture
def pg_dsn(pg_server: PostgresServer) -> Iterator[str]:
    """The conninfo of a new, empty database, dropped with its slots after the test."""
    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield make_conninfo(pg_server.dsn, dbname=name)
    drop_database(pg_server.dsn, name)


@pytest.fixture(scope="session")
def pg_bindir(pg_server: PostgresServer) -> Path:
    """A directory with the ``pg_recvlogical`` (and ``psql``) matching the server."""
    bindir = pg_server.bindir
    if bindir is None or not (bindir / "pg_recvlogical").is_file():
        pytest.skip("no pg_recvlogical matching the test server")
    return bindir
