"""A throw-away Postgres with a fresh database, for one benchmark run."""

from __future__ import annotations

import atexit
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from syncd.pgprovider import PostgresServer, drop_database, provide_postgres

_REMOVED_AT_EXIT: list[Path] = []


def remove_at_exit(path: Path) -> None:
    """Remove ``path`` when the benchmark process ends, not between two benchmarks: on ext4
    without a journal, the kernel passes over the inodes freed in the last half minute when it
    allocates one, so the tens of thousands of files a benchmark leaves (its Postgres cluster,
    its shapes) made the next one's new files cost several times the system CPU (the storage
    paragraph of ``docs/operate.md``), and ``shape-creation`` measured what ran before it."""
    if not _REMOVED_AT_EXIT:
        atexit.register(_remove_all)
    _REMOVED_AT_EXIT.append(path)


def _remove_all() -> None:
    while _REMOVED_AT_EXIT:
        shutil.rmtree(_REMOVED_AT_EXIT.pop(), ignore_errors=True)


@dataclass(frozen=True)
class BenchDatabase:
    base: Path
    """The run's temporary directory: Postgres' data, and room for syncd's storage and logs."""
    server: PostgresServer
    dsn: str
    """Conninfo of the fresh database."""


def create_rows_table(conn: psycopg.Connection[Any], table: str, first: int, last: int) -> None:
    """``table (id int PRIMARY KEY, body text)`` holding the rows ``first``..``last``, each
    ``body`` ``'row <id>'``."""
    name = sql.Identifier(table)
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(name))
    conn.execute(
        sql.SQL(
            "INSERT INTO {} SELECT g, 'row ' || g FROM generate_series(%s::int, %s::int) g"
        ).format(name),
        (first, last),
    )


@contextmanager
def bench_database(name: str, *, keep: bool = False) -> Iterator[BenchDatabase]:
    """A temporary directory, a fast throw-away Postgres in it (or ``BENCH_DATABASE_URL``) and
    a new database; the database dropped and the server stopped afterwards, the directory
    removed when the process ends (:func:`remove_at_exit`) or kept when ``keep``."""
    base = Path(tempfile.mkdtemp(prefix=f"syncd-bench-{name}-"))
    base.chmod(0o711)  # the server may run as another OS user
    server = provide_postgres(base / "pgdata", env_var="BENCH_DATABASE_URL", fast=True)
    dbname = f"bench_{name}_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        try:
            yield BenchDatabase(base, server, make_conninfo(server.dsn, dbname=dbname))
        finally:
            drop_database(server.dsn, dbname)
    finally:
        server.stop()
        if keep:
            print(f"kept {base}", flush=True)
        else:
            remove_at_exit(base)
