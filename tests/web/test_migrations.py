"""``python -m web migrate``: idempotent, safe to run concurrently, and the schema's rules."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from syncd.pgprovider import PostgresServer
from web.config import Settings
from web.migrate import LOCK_KEY, MigrationError, migrate

ROOT = Path(__file__).resolve().parent.parent.parent
MIGRATIONS = Settings().migrations_dir
TABLES = {"users", "threads", "memberships", "events", "facts", "agent_status"}
SARAH = uuid.UUID("00000000-0000-4000-8000-000000000001")


def run_cli(dsn: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "web", "migrate", "--database-url", dsn],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_migrate_twice_applies_once(pg_dsn: str) -> None:
    first = migrate(pg_dsn, MIGRATIONS)
    assert first == sorted(first) and first[0].startswith("003_")
    assert migrate(pg_dsn, MIGRATIONS) == []
    with psycopg.connect(pg_dsn) as conn:
        names = conn.execute("SELECT name FROM users WHERE kind = 'agent' ORDER BY name")
        assert [row[0] for row in names] == ["frankie", "jerry", "sarah"]


def test_two_processes_migrating_at_once_both_succeed(pg_dsn: str) -> None:
    processes = [run_cli(pg_dsn) for _ in range(2)]
    outputs = [process.communicate(timeout=120)[0].decode() for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT version, count(*) FROM web_migrations GROUP BY version")
        assert all(count == 1 for _, count in rows)
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (3,)


def test_migrate_waits_for_the_lock_before_touching_anything(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        process = run_cli(pg_dsn)
        try:
            waiting = (
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            while holder.execute(waiting).fetchone() != (1,):
                assert process.poll() is None, process.communicate()[0]
                time.sleep(0.02)
            ledger = holder.execute("SELECT to_regclass('web_migrations')").fetchone()
            assert ledger == (None,)
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
        output = process.communicate(timeout=120)[0].decode()
        assert process.returncode == 0, output
        assert "003_burn_schema.sql" in output


def test_an_edited_migration_is_refused(pg_dsn: str, tmp_path: Path) -> None:
    for path in MIGRATIONS.glob("*.sql"):
        (tmp_path / path.name).write_text(path.read_text())
    migrate(pg_dsn, tmp_path)
    edited = tmp_path / "004_burn_private.sql"
    edited.write_text(edited.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="004_burn_private"):
        migrate(pg_dsn, tmp_path)


def test_tables_are_published_with_full_replica_identity(pg_dsn: str) -> None:
    migrate(pg_dsn, MIGRATIONS, publication="burn_pub")
    with psycopg.connect(pg_dsn) as conn:
        published = conn.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = 'burn_pub'"
        ).fetchall()
        assert set(published) == {("public", table) for table in TABLES}
        identities = conn.execute(
            "SELECT relname, relreplident FROM pg_class WHERE relname = ANY(%s)", (list(TABLES),)
        ).fetchall()
        assert dict(identities) == dict.fromkeys(TABLES, "f")


def test_syncd_role_reads_the_app_tables_but_never_the_private_ones(
    pg_server: PostgresServer, pg_dsn: str
) -> None:
    """Set up as sql/001 describes (a role named ``syncd`` reading ``public``)."""
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'syncd'").fetchone()
        if exists is None:
            conn.execute(f"CREATE ROLE syncd LOGIN REPLICATION PASSWORD '{secrets.token_hex(8)}'")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("GRANT USAGE ON SCHEMA public TO syncd")
        conn.execute("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO syncd")
    migrate(pg_dsn, MIGRATIONS)
    with psycopg.connect(pg_dsn) as conn:
        for table in TABLES:
            query = "SELECT has_table_privilege('syncd', %s, 'SELECT')"
            assert conn.execute(query, (f"public.{table}",)).fetchone() == (True,)
        private = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'burn_private' AND c.relkind = 'r'"
        ).fetchall()
        assert {row[0] for row in private} >= {"credentials", "sessions"}
        query = "SELECT has_schema_privilege('syncd', 'burn_private', 'USAGE')"
        assert conn.execute(query).fetchone() == (False,)
        for (table,) in private:
            query = "SELECT has_table_privilege('syncd', %s, 'SELECT')"
            assert conn.execute(query, (f"burn_private.{table}",)).fetchone() == (False,)
        published = conn.execute(
            "SELECT count(*) FROM pg_publication_tables WHERE schemaname = 'burn_private'"
        ).fetchone()
        assert published == (0,)


# -- the schema's own rules (Postgres refuses what the API must never write) -------------------


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    migrate(pg_dsn, MIGRATIONS)
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        yield connection


def _thread_with_human(conn: psycopg.Connection[tuple[object, ...]]) -> tuple[uuid.UUID, uuid.UUID]:
    thread, human = uuid.uuid4(), uuid.uuid4()
    conn.execute("INSERT INTO users (id, name, kind) VALUES (%s, %s, 'human')", (human, "alice"))
    conn.execute("INSERT INTO threads (id, name) VALUES (%s, 'a thread')", (thread,))
    conn.execute(
        "INSERT INTO memberships (id, thread_id, user_id, role) VALUES (%s, %s, %s, 'owner')",
        (uuid.uuid4(), thread, human),
    )
    conn.execute(
        "INSERT INTO memberships (id, thread_id, user_id, role) VALUES (%s, %s, %s, 'producer')",
        (uuid.uuid4(), thread, SARAH),
    )
    return thread, human


def _event(
    conn: psycopg.Connection[tuple[object, ...]],
    thread: object,
    user: object,
    kind: str,
    data: object,
) -> None:
    conn.execute(
        "INSERT INTO events (id, thread_id, user_id, kind, data) VALUES (%s, %s, %s, %s, %s)",
        (uuid.uuid4(), thread, user, kind, Jsonb(data)),
    )


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        ("text", {"text": ""}),
        ("text", {"text": "   "}),
        ("text", {"text": 3}),
        ("text", {"text": "hi", "extra": 1}),
        ("text", ["hi"]),
        ("system", {"action": "hacked", "target": "thread"}),
        ("system", {"action": "joined"}),
        ("gossip", {"text": "hi"}),
    ],
)
def test_event_payloads_are_checked_per_kind(conn, kind, data) -> None:
    thread, human = _thread_with_human(conn)
    with pytest.raises(psycopg.errors.CheckViolation):
        _event(conn, thread, human, kind, data)


def test_who_may_write_which_event(conn) -> None:
    thread, human = _thread_with_human(conn)
    _event(conn, thread, human, "text", {"text": "hello"})
    _event(conn, thread, SARAH, "tool_use", {"id": "t1", "name": "do_nothing", "input": {}})
    with pytest.raises(psycopg.errors.CheckViolation, match="human"):
        _event(conn, thread, human, "tool_use", {"id": "t1", "name": "x", "input": {}})
    with pytest.raises(psycopg.errors.CheckViolation, match="agent"):
        _event(conn, thread, SARAH, "text", {"text": "hello"})
    outsider = uuid.UUID("00000000-0000-4000-8000-000000000002")
    with pytest.raises(psycopg.errors.CheckViolation, match="member"):
        _event(conn, thread, outsider, "system", {"action": "joined", "target": "thread"})
    with pytest.raises(psycopg.errors.CheckViolation, match="immutable"):
        conn.execute('UPDATE events SET data = \'{"text": "forged"}\'')


def test_roles_match_user_kinds_and_one_owner(conn) -> None:
    thread, _ = _thread_with_human(conn)
    bob = uuid.uuid4()
    conn.execute("INSERT INTO users (id, name, kind) VALUES (%s, 'bob', 'human')", (bob,))
    insert = "INSERT INTO memberships (id, thread_id, user_id, role) VALUES (%s, %s, %s, %s)"
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(insert, (uuid.uuid4(), thread, bob, "owner"))
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(insert, (uuid.uuid4(), thread, bob, "comedian"))
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(insert, (uuid.uuid4(), thread, bob, "admin"))
    conn.execute(insert, (uuid.uuid4(), thread, bob, "member"))
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(insert, (uuid.uuid4(), thread, bob, "member"))


def test_deleting_a_thread_cascades(conn) -> None:
    thread, human = _thread_with_human(conn)
    _event(conn, thread, human, "text", {"text": "I ride horses"})
    _event(conn, thread, SARAH, "tool_use", {"id": "t", "name": "extract_facts", "input": {}})
    source, tool = (row[0] for row in conn.execute("SELECT id FROM events ORDER BY seq").fetchall())
    conn.execute(
        "INSERT INTO facts (id, thread_id, subject_id, source_event_id, tool_use_event_id,"
        " predicate, object, category) VALUES (%s, %s, %s, %s, %s, 'rides', 'horses', 'hobby')",
        (uuid.uuid4(), thread, human, source, tool),
    )
    conn.execute("DELETE FROM threads WHERE id = %s", (thread,))
    for table in ("memberships", "events", "facts"):
        count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
        assert count.fetchone() == (0,), table


def test_deleting_a_user_removes_their_memberships_events_facts_and_secrets(conn) -> None:
    thread, human = _thread_with_human(conn)
    _event(conn, thread, human, "text", {"text": "I ride horses"})
    _event(conn, thread, SARAH, "tool_use", {"id": "t", "name": "extract_facts", "input": {}})
    source, tool = (row[0] for row in conn.execute("SELECT id FROM events ORDER BY seq"))
    conn.execute(
        "INSERT INTO facts (id, thread_id, subject_id, source_event_id, tool_use_event_id,"
        " predicate, object, category) VALUES (%s, %s, %s, %s, %s, 'rides', 'horses', 'hobby')",
        (uuid.uuid4(), thread, human, source, tool),
    )
    conn.execute(
        "INSERT INTO burn_private.credentials (user_id, password_hash) VALUES (%s, 'x')", (human,)
    )
    conn.execute(
        "INSERT INTO burn_private.sessions (id, user_id, expires_at) VALUES (%s, %s, now())",
        (uuid.uuid4(), human),
    )
    conn.execute("DELETE FROM users WHERE id = %s", (human,))
    for table in ("memberships", "events", "facts", "burn_private.credentials"):
        query = sql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(
            sql.Identifier(*table.split(".")),
            sql.Identifier("subject_id" if table == "facts" else "user_id"),
        )
        assert conn.execute(query, (human,)).fetchone() == (0,), table
    assert conn.execute("SELECT count(*) FROM burn_private.sessions").fetchone() == (0,)
    # the thread and the agent's own events stay
    assert conn.execute("SELECT count(*) FROM threads").fetchone() == (1,)
    assert conn.execute("SELECT user_id FROM events").fetchall() == [(SARAH,)]


def test_settings_come_from_flags_over_the_environment() -> None:
    from web.config import ConfigError, load_settings

    env = {"DATABASE_URL": "dbname=a", "WEB_PORT": "5000", "WEB_COOKIE_SECURE": "true"}
    loaded = load_settings(["--port", "6000"], env)
    assert (loaded.database_url, loaded.port, loaded.cookie_secure) == ("dbname=a", 6000, True)
    assert load_settings([], {**env, "WEB_DATABASE_URL": "dbname=b"}).database_url == "dbname=b"
    with pytest.raises(ConfigError, match="secret"):
        load_settings(["--secret", "short"], {})
    with pytest.raises(ConfigError, match="port"):
        load_settings([], {"WEB_PORT": "many"})
