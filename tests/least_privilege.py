"""Roles for the least-privilege set-up: a table owner and a syncd role made by
``sql/001_syncd_role.sql``, both dropped afterwards (roles belong to the whole cluster)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.syncd_process import ROOT


@dataclass(frozen=True)
class Roles:
    """The two roles of one test database and how to connect as each."""

    admin_dsn: str
    owner: str
    syncd: str

    @property
    def owner_dsn(self) -> str:
        return make_conninfo(self.admin_dsn, user=self.owner)

    @property
    def syncd_dsn(self) -> str:
        return make_conninfo(self.admin_dsn, user=self.syncd)


def psql(bindir: Path, dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``psql`` (no ``.psqlrc``) from the repository root; never raises on failure."""
    return subprocess.run(
        [str(bindir / "psql"), "-X", "-d", dsn, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def run_sql_script(bindir: Path, dsn: str, script: str, variables: Sequence[str]) -> str:
    """Run ``sql/<script>`` with ``-v`` ``variables``; its notices, or AssertionError."""
    args = [arg for variable in variables for arg in ("-v", variable)]
    done = psql(bindir, dsn, *args, "-f", f"sql/{script}")
    assert done.returncode == 0, done.stderr
    return done.stderr


@contextmanager
def least_privilege_roles(dsn: str, bindir: Path) -> Iterator[Roles]:
    """An owner role that may create tables and publications in ``dsn``'s database, and a
    syncd role from ``sql/001_syncd_role.sql``; both dropped with what they own on exit."""
    database = str(conninfo_to_dict(dsn)["dbname"])
    roles = Roles(dsn, owner=f"owner_{database}", syncd=f"syncd_{database}")
    owner = sql.Identifier(roles.owner)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(owner))
        conn.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(sql.Identifier(database), owner)
        )
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(owner))
    try:
        run_sql_script(
            bindir, dsn, "001_syncd_role.sql", ["password=unused", f"role={roles.syncd}"]
        )
        yield roles
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for name in (roles.owner, roles.syncd):
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name])
                if exists.fetchone() is not None:
                    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
                    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
