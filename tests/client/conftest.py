"""Fixtures of the client tests that need a live daemon of their own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.syncd_process import SyncdProcess


@pytest.fixture
def syncd(pg_dsn: str, tmp_path: Path) -> Iterator[SyncdProcess]:
    """A syncd child process over a database with ``items (id, grp, title)``."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, grp int NOT NULL, title text)")
    daemon = SyncdProcess(pg_dsn, tmp_path / "storage")
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
