"""Mistakes made while setting syncd up end within seconds, with one line that names the cause
and the fix (no traceback), and leave nothing behind in the database."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from syncd.embed import EmbeddedSyncd
from syncd.pgprovider import PostgresServer, provide_postgres
from syncd.preflight import StartupError
from tests.syncd_process import ROOT, free_port

FAST = 5.0
"""Seconds within which every mistake is answered (start-up of the interpreter included)."""
PASSWORD = "right-password"


def run_syncd(*args: str, env: dict[str, str] | None = None) -> tuple[int, list[str], float]:
    """``python -m syncd`` with ``args``: exit status, output lines and seconds taken."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "syncd", "--port", str(free_port()), *args],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = (done.stdout + done.stderr).splitlines()
    return done.returncode, lines, time.monotonic() - started


def one_line(lines: list[str], *expected: str) -> str:
    """The one output line that says it all (every ``expected`` part), and no traceback."""
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    [line] = [line for line in lines if all(part in line for part in expected)]
    return line


@pytest.fixture(scope="module")
def replica_server() -> Iterator[PostgresServer]:
    """A Postgres of its own with ``wal_level = replica`` whose TCP connections need a password
    (the session's server trusts everyone and decodes logically)."""
    base = Path(tempfile.mkdtemp(prefix="syncd-test-replica-"))
    base.chmod(0o711)  # the server may run as another OS user
    server = provide_postgres(base / "pgdata", env_var=None, fast=True)
    try:
        if server.provider == "docker":
            pytest.skip("a Postgres in Docker cannot be restarted with other settings")
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET wal_level = replica")
            conn.execute(f"ALTER ROLE postgres PASSWORD '{PASSWORD}'")
            hba = conn.execute("SHOW hba_file").fetchone()
        assert hba is not None
        Path(hba[0]).write_text("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
        server.stop()
        server = provide_postgres(base / "pgdata", env_var=None, fast=True)
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def tcp_url(server: PostgresServer, password: str) -> str:
    """A URL of the server over TCP, as user ``postgres`` with ``password``."""
    with psycopg.connect(server.dsn) as conn:
        port = conn.execute("SHOW port").fetchone()
    assert port is not None
    return f"postgresql://postgres:{password}@127.0.0.1:{port[0]}/postgres"


def test_a_malformed_database_url() -> None:
    for url, cause in (
        ("not a url", "the database URL is malformed"),
        ("postgresql://localhost:notaport/db", "the database URL's port is not a number"),
    ):
        status, lines, seconds = run_syncd("--database-url", url)
        assert status == 1 and seconds < FAST
        one_line(lines, cause, "postgresql://user:password@host:5432/database")


def test_nothing_listening_on_the_port() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    status, lines, seconds = run_syncd("--database-url", url)
    assert status == 1 and seconds < FAST
    one_line(lines, "cannot connect to Postgres at 127.0.0.1:", "check the host and port")


def test_a_role_that_does_not_exist(pg_dsn: str) -> None:
    status, lines, seconds = run_syncd("--database-url", make_conninfo(pg_dsn, user="nobody"))
    assert status == 1 and seconds < FAST
    one_line(lines, 'role "nobody" does not exist', "check the user and password")


def test_a_wrong_password(replica_server: PostgresServer) -> None:
    status, lines, seconds = run_syncd("--database-url", tcp_url(replica_server, "wrong"))
    assert status == 1 and seconds < FAST
    line = one_line(lines, "password authentication failed", "check the user and password")
    assert "wrong" not in line  # the password is never shown


def test_wal_level_not_logical_creates_nothing(replica_server: PostgresServer) -> None:
    url = tcp_url(replica_server, PASSWORD)
    status, lines, seconds = run_syncd("--database-url", url)
    assert status == 1 and seconds < FAST
    one_line(lines, "wal_level = replica", "ALTER SYSTEM SET wal_level = logical", "restart")
    with psycopg.connect(replica_server.dsn) as conn:
        publications = conn.execute("SELECT pubname FROM pg_publication").fetchall()
        slots = conn.execute("SELECT slot_name FROM pg_replication_slots").fetchall()
    assert publications == [] and slots == []


async def test_an_embedded_syncd_raises_the_same_error(
    replica_server: PostgresServer, tmp_path: Path
) -> None:
    embedded = EmbeddedSyncd(replica_server.dsn, tmp_path / "storage")
    with pytest.raises(StartupError, match="ALTER SYSTEM SET wal_level = logical"):
        await embedded.start()
    with pytest.raises(StartupError, match="malformed"):
        await EmbeddedSyncd("not a url", tmp_path / "storage").start()


def test_a_role_without_replication_or_publication(pg_dsn: str) -> None:
    database = conninfo_to_dict(pg_dsn)["dbname"]
    role = f"plain_{database}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        url = make_conninfo(pg_dsn, user=role)
        status, lines, _ = run_syncd("--database-url", url)
        assert status == 1
        one_line(lines, f"role {role} may not use replication", f"ALTER ROLE {role} REPLICATION")
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f'ALTER ROLE "{role}" REPLICATION')
        status, lines, _ = run_syncd("--database-url", url)
        assert status == 1
        one_line(lines, "publication syncd_publication does not exist", "002_publish_table.sql")
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f'DROP ROLE "{role}"')


def test_a_bad_log_level() -> None:
    status, lines, seconds = run_syncd("--database-url", "dbname=x", "--log-level", "verbose")
    assert status == 2 and seconds < FAST
    [line] = lines
    assert line.startswith("python -m syncd: argument --log-level: invalid choice: 'VERBOSE'")
    assert line.endswith("see python -m syncd --help") and "DEBUG" in line
    status, lines, _ = run_syncd(env={"SYNCD_DATABASE_URL": "dbname=x", "SYNCD_LOG_LEVEL": "loud"})
    assert status == 2
    assert lines == ["syncd: SYNCD_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"]
    status, lines, _ = run_syncd("--database-url", "dbname=x", "--log-level", "debug", "--help")
    assert status == 0
