from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from syncd import pgprovider
from syncd.pgprovider import (
    PostgresProviderError,
    PostgresServer,
    drop_database,
    provide_postgres,
)

pytestmark = pytest.mark.pg

UNSET = "SYNCD_TEST_UNSET_DATABASE_URL"
own_servers = pytest.mark.skipif(
    bool(os.environ.get("TEST_DATABASE_URL")),
    reason="TEST_DATABASE_URL is given: no servers of our own",
)


@pytest.fixture
def scratch(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.delenv(UNSET, raising=False)
    base = Path(tempfile.mkdtemp(prefix="syncd-test-"))
    base.chmod(0o711)
    yield base
    shutil.rmtree(base)


def scalar(dsn: str, query: str) -> object:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def pid_gone(pid: int) -> bool:
    return not pgprovider._alive(pid)


def test_wal_level_is_logical_and_a_slot_can_be_created(pg_dsn: str) -> None:
    assert scalar(pg_dsn, "SHOW wal_level") == "logical"
    lsn = scalar(pg_dsn, "SELECT lsn FROM pg_create_logical_replication_slot('s1', 'pgoutput')")
    assert lsn is not None


def test_pg_dsn_is_a_fresh_database(pg_dsn: str) -> None:
    assert str(scalar(pg_dsn, "SELECT current_database()")).startswith("t_")
    assert scalar(pg_dsn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0


def test_pg_bindir_has_a_matching_pg_recvlogical(
    pg_server: PostgresServer, pg_bindir: Path
) -> None:
    server_major = int(str(scalar(pg_server.dsn, "SHOW server_version_num"))) // 10000
    assert (pg_bindir / "pg_recvlogical").is_file()
    assert pgprovider._major(pg_bindir) >= server_major


def test_drop_database_ends_sessions_and_drops_slots(pg_server: PostgresServer) -> None:
    name = f"t_drop_{secrets.token_hex(4)}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(pg_server.dsn, dbname=name)
    with psycopg.connect(dsn, autocommit=True) as session:
        session.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [name])
        drop_database(pg_server.dsn, name)
        with pytest.raises(psycopg.OperationalError):
            session.execute("SELECT 1")  # terminated
    with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
        databases = admin.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [name])
        assert databases.fetchone() == (0,)
        slots = admin.execute(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", [name]
        )
        assert slots.fetchone() == (0,)


@own_servers
def test_stop_then_restart_keeps_the_data(scratch: Path) -> None:
    data_dir = scratch / "pgdata"
    server = provide_postgres(data_dir, env_var=UNSET, fast=True)
    assert scalar(server.dsn, "SHOW max_replication_slots") == "64"
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('hello')")
    pid_file = (data_dir / "postmaster.pid").read_text()
    assert server.pid is not None
    server.stop()
    assert pid_gone(server.pid)
    server.stop()  # idempotent
    # a killed run leaves its postmaster.pid behind
    (data_dir / "postmaster.pid").write_text(pid_file)
    with provide_postgres(data_dir, env_var=UNSET, fast=True) as again:
        assert again.pid != server.pid
        assert scalar(again.dsn, "SELECT v FROM kept") == "hello"
    assert again.pid is not None and pid_gone(again.pid)


@own_servers
def test_a_postmaster_left_by_an_earlier_run_is_replaced(scratch: Path) -> None:
    data_dir = scratch / "pgdata"
    orphan = provide_postgres(data_dir, env_var=UNSET, fast=True)  # as if its owner was killed
    with provide_postgres(data_dir, env_var=UNSET, fast=True) as server:
        assert orphan.pid is not None and pid_gone(orphan.pid)
        orphan.stop()  # must not touch the new server
        assert scalar(server.dsn, "SELECT 1") == 1
    assert server.pid is not None and pid_gone(server.pid)


@own_servers
def test_a_long_data_dir_gets_a_short_socket_dir(scratch: Path) -> None:
    data_dir = scratch / ("d" * 60) / ("e" * 60) / "pgdata"
    with provide_postgres(data_dir, env_var=UNSET, fast=True) as server:
        host = Path(str(conninfo_to_dict(server.dsn)["host"]))
        assert host != data_dir and host.name.startswith("syncd-pg-")
        assert len(os.fsencode(host / ".s.PGSQL.65535")) <= pgprovider.SUN_PATH_MAX
        assert scalar(server.dsn, "SHOW wal_level") == "logical"
    assert not host.exists()


@own_servers
def test_local_binaries_are_the_fallback(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not pgprovider._local_bindirs():
        pytest.skip("no local PostgreSQL binaries")
    broken = scratch / "broken-bin"
    broken.mkdir()
    for name in ("initdb", "pg_ctl", "postgres"):
        (broken / name).write_text("#!/bin/sh\nexit 1\n")
        (broken / name).chmod(0o755)
    monkeypatch.setattr(pgprovider, "_pixeltable_bindirs", lambda: [broken])
    with provide_postgres(scratch / "pgdata", env_var=UNSET, fast=True) as server:
        assert server.provider == "local"
        assert scalar(server.dsn, "SHOW wal_level") == "logical"


def test_env_var_mode_uses_the_given_server(
    pg_server: PostgresServer, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = conninfo_to_dict(pg_server.dsn)
    url = f"postgresql://{params['user']}@/{params['dbname']}?host={params['host']}"
    url += f"&port={params['port']}"
    monkeypatch.setenv("SYNCD_TEST_DATABASE_URL", url)
    server = provide_postgres(scratch / "unused", env_var="SYNCD_TEST_DATABASE_URL")
    assert server.provider == "env"
    assert "=" in server.dsn and "://" not in server.dsn
    server.stop()  # a no-op: the server is not ours
    assert scalar(server.dsn, "SELECT 1") == 1
    assert not (scratch / "unused").exists()


def test_env_var_mode_reports_an_unreachable_server(
    scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = pgprovider._free_port(None)
    monkeypatch.setenv("SYNCD_TEST_DATABASE_URL", f"host=127.0.0.1 port={port} connect_timeout=2")
    with pytest.raises(PostgresProviderError, match="cannot connect"):
        provide_postgres(scratch, env_var="SYNCD_TEST_DATABASE_URL")
