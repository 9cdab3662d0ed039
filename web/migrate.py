"""Applying the numbered SQL migrations in ``sql/``, once each, safely from many processes.

Layer: ``web``. A migration is a file ``NNN_name.sql`` numbered from :data:`FIRST_MIGRATION` on
(``001`` and ``002`` are setup scripts run by hand with ``psql``). Theory of operation:

* the whole run holds a session advisory lock, so two ``migrate`` processes (two app instances
  starting together) take turns; the second finds everything applied and does nothing;
* each migration runs in its own transaction together with the row that records it in
  ``web_migrations``, so a failed migration leaves no trace and is retried next time;
* the recorded checksum of an applied file is compared with the file: an edited migration is
  an error, not something silently skipped.

Use a direct connection (not a transaction-pooling proxy): the lock is held by the session.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

log = logging.getLogger("web.migrate")

FIRST_MIGRATION = 3
MIGRATION_FILE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
LOCK_KEY = 0x6275726E_6D696772  # "burnmigr"
LEDGER = """
CREATE TABLE IF NOT EXISTS web_migrations (
    version int PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """The migrations on disk disagree with the database."""


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    text: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file's text."""
        return hashlib.sha256(self.text.encode()).hexdigest()


def load_migrations(directory: Path) -> list[Migration]:
    """The migrations in ``directory``, in order."""
    found: list[Migration] = []
    for path in sorted(directory.iterdir()):
        match = MIGRATION_FILE.match(path.name)
        if match is None or int(match.group(1)) < FIRST_MIGRATION:
            continue
        found.append(Migration(int(match.group(1)), path.name, path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a number in {directory}")
    return found


def migrate(conninfo: str, directory: Path, *, publication: str = "syncd_publication") -> list[str]:
    """Apply every migration of ``directory`` not yet applied; returns the names applied."""
    migrations = load_migrations(directory)
    applied_now: list[str] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            conn.execute(LEDGER)
            rows = conn.execute("SELECT version, name, checksum FROM web_migrations").fetchall()
            applied = {int(version): (str(name), str(sum_)) for version, name, sum_ in rows}
            for migration in migrations:
                if migration.version in applied:
                    _check_unchanged(migration, *applied[migration.version])
                    continue
                _apply(conn, migration, publication)
                applied_now.append(migration.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return applied_now


def _check_unchanged(migration: Migration, name: str, checksum: str) -> None:
    if checksum != migration.checksum:
        raise MigrationError(f"{migration.name} was changed after it was applied (as {name})")


def _apply(conn: psycopg.Connection[tuple[object, ...]], migration: Migration, pub: str) -> None:
    with conn.transaction():
        conn.execute("SELECT set_config('burn.publication', %s, true)", (pub,))
        conn.execute(migration.text.encode())
        conn.execute(
            "INSERT INTO web_migrations (version, name, checksum) VALUES (%s, %s, %s)",
            (migration.version, migration.name, migration.checksum),
        )
    log.info("applied %s", migration.name)
