"""The daemon as a whole: CLI, reconnection, acknowledgement, privileges."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from syncd.daemon import raise_open_file_limit
from tests.shape_reader import ShapeCursor, catch_up
from tests.syncd_process import ROOT, SyncdProcess


def test_the_open_file_limit_is_raised_to_the_hard_limit() -> None:
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(soft, 256)
    if hard != resource.RLIM_INFINITY and hard <= lowered:
        pytest.skip("the hard limit leaves nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        raised = raise_open_file_limit()
        now, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert raised == (lowered, now)
        assert now == hard or (hard == resource.RLIM_INFINITY and now >= lowered)
        assert raise_open_file_limit() is None  # nothing left to raise
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncd", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_lists_every_setting() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for variable in ("SYNCD_DATABASE_URL", "SYNCD_STORAGE_DIR", "SYNCD_SLOT", "SYNCD_SECRET"):
        assert variable in result.stdout


def test_bad_configuration_is_a_clear_cli_error() -> None:
    result = run_cli("--port", "not-a-number", env={"SYNCD_DATABASE_URL": "dbname=x"})
    assert result.returncode == 2
    assert "invalid value for SYNCD_PORT" in result.stderr
    result = run_cli(env={"PATH": "/usr/bin"})
    assert result.returncode == 2
    assert "no database" in result.stderr


@pytest.fixture
def syncd(pg_dsn: str, tmp_path: Path) -> Iterator[SyncdProcess]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, title text)")
        conn.execute("INSERT INTO items SELECT g, 't' || g FROM generate_series(1, 10) g")
    daemon = SyncdProcess(pg_dsn, tmp_path / "storage")
    daemon.start()
    yield daemon
    daemon.stop()


def insert(dsn: str, id_: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO items VALUES (%s, 'x')", (id_,))


def wait_for_key(client: httpx.Client, daemon: SyncdProcess, cursor: ShapeCursor, key: str) -> None:
    deadline = time.monotonic() + 30
    while key not in cursor.rows:
        assert time.monotonic() < deadline, f"{key} never arrived"
        catch_up(client, daemon.shape_url, cursor)
        time.sleep(0.05)


def test_replication_reconnects_after_the_walsender_dies(syncd: SyncdProcess, pg_dsn: str) -> None:
    cursor = ShapeCursor({"table": "items"})
    with httpx.Client(timeout=30) as client:
        catch_up(client, syncd.shape_url, cursor)
        insert(pg_dsn, 100)
        wait_for_key(client, syncd, cursor, '"public"."items"/"100"')
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE slot_name = %s AND active_pid IS NOT NULL",
                (syncd.settings["slot"],),
            ).fetchall()
        assert killed == [(True,)]
        insert(pg_dsn, 101)
        wait_for_key(client, syncd, cursor, '"public"."items"/"101"')
    assert cursor.refetches == 0


def test_flushed_position_is_acknowledged(syncd: SyncdProcess, pg_dsn: str) -> None:
    cursor = ShapeCursor({"table": "items"})
    with httpx.Client(timeout=30) as client:
        catch_up(client, syncd.shape_url, cursor)
        insert(pg_dsn, 200)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            written = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
            assert written is not None
            deadline = time.monotonic() + 30
            while True:
                row = conn.execute(
                    "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots"
                    " WHERE slot_name = %s",
                    (str(written[0]), syncd.settings["slot"]),
                ).fetchone()
                if row == (True,):
                    break
                assert time.monotonic() < deadline, "the slot was never advanced"
                time.sleep(0.1)


def test_missing_privilege_for_replica_identity_is_a_clear_error(
    pg_dsn: str, tmp_path: Path
) -> None:
    database = conninfo_to_dict(pg_dsn)["dbname"]
    role = f"limited_{database}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, title text)")
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(str(database)), sql.Identifier(role)
            )
        )
        conn.execute(sql.SQL("GRANT SELECT ON items TO {}").format(sql.Identifier(role)))
    daemon = SyncdProcess(make_conninfo(pg_dsn, user=role), tmp_path / "storage")
    daemon.start()
    try:
        answer = httpx.get(daemon.shape_url, params={"table": "items", "offset": "-1"}, timeout=30)
    finally:
        daemon.stop()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("DROP PUBLICATION IF EXISTS syncd_publication")
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    assert answer.status_code == 400
    [message] = answer.json()["errors"]["table"]
    assert "REPLICA IDENTITY FULL" in message
    assert "items" in message
