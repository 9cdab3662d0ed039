"""A table or column dropped while syncd is reading it: 409 must-refetch, then the 400.

Each test makes syncd's query wait at the exact moment it matters: the test holds an ``ACCESS
EXCLUSIVE`` lock on the table, sends the request, waits until Postgres shows syncd's statement
waiting for that lock, then drops the table (or a column) in the same transaction and commits.
The waiting statement then finds the table gone. The request must be answered as for a shape
the schema change invalidated (409), and the next request must get the 400 of a missing table
(or column): syncd forgets what it knew of the table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from syncd.pgprovider import PostgresServer
from tests.faults.daemon import assert_json_error, scratch_database
from tests.syncd_process import SyncdProcess

SETUP = """
CREATE TABLE snap (id int PRIMARY KEY, v text);
CREATE TABLE fresh (id int PRIMARY KEY, v text);
CREATE TABLE sub (id int PRIMARY KEY, v text);
CREATE TABLE col (id int PRIMARY KEY, v text);
INSERT INTO snap SELECT g, 'v' || g FROM generate_series(1, 5) g;
INSERT INTO fresh SELECT g, 'v' || g FROM generate_series(1, 5) g;
INSERT INTO sub SELECT g, 'v' || g FROM generate_series(1, 5) g;
INSERT INTO col SELECT g, 'v' || g FROM generate_series(1, 5) g;
"""
MUST_REFETCH = [{"headers": {"control": "must-refetch"}}]


@pytest.fixture(scope="module")
def module_dsn(pg_server: PostgresServer) -> Iterator[str]:
    with scratch_database(pg_server, SETUP) as dsn:
        yield dsn


@pytest.fixture(scope="module")
def syncd(module_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncdProcess]:
    base: Path = tmp_path_factory.mktemp("vanishing")
    daemon = SyncdProcess(
        module_dsn,
        base / "storage",
        long_poll_timeout=1,
        schema_check_interval=3600,  # only the failed queries themselves notice the change
        slot="syncd_vanishing",  # slot names are cluster-wide: one per concurrent daemon
    )
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60.0) as http:
        yield http


def read_to_end(syncd: SyncdProcess, client: httpx.Client, table: str) -> tuple[str, str]:
    """Follow ``table``'s plain shape to its end: ``(handle, offset)``."""
    answer = client.get(syncd.shape_url, params={"table": table, "offset": "-1"})
    assert answer.status_code == 200, answer.text
    handle = answer.headers["electric-handle"]
    while "electric-up-to-date" not in answer.headers:
        offset = answer.headers["electric-offset"]
        query = {"table": table, "offset": offset, "handle": handle}
        answer = client.get(syncd.shape_url, params=query)
        assert answer.status_code == 200, answer.text
    return handle, answer.headers["electric-offset"]


def wait_for_lock_waiter(dsn: str, statement: str, timeout: float = 30.0) -> None:
    """Return once a session of this database waits for a lock while running a statement
    that contains ``statement``."""
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND position(%s in query) > 0"
    )
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(query, (statement,)).fetchone()
            if row is not None and row[0] > 0:
                return
            time.sleep(0.02)
    raise AssertionError(f"nothing waited for a lock in {statement!r}")


def drop_while_waiting(
    dsn: str, table: str, ddl: str, statement: str, send: Callable[[], httpx.Response]
) -> httpx.Response:
    """Lock ``table``, ``send`` the request, run ``ddl`` once ``statement`` waits for the
    lock, commit, and return the request's answer."""
    with ThreadPoolExecutor(max_workers=1) as pool, psycopg.connect(dsn) as locker:
        locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        answer: Future[httpx.Response] = pool.submit(send)
        wait_for_lock_waiter(dsn, statement)
        locker.execute(ddl)
        locker.commit()
        return answer.result(timeout=60)


def assert_must_refetch(answer: httpx.Response) -> None:
    assert answer.status_code == 409, (answer.status_code, answer.text)
    assert answer.json() == MUST_REFETCH


def assert_missing_table(answer: httpx.Response, table: str) -> None:
    body: Any = assert_json_error(answer, 400)
    assert body["errors"]["table"][0].startswith(f'Table "public"."{table}" does not exist')


def test_table_dropped_during_the_snapshot(
    syncd: SyncdProcess, client: httpx.Client, module_dsn: str
) -> None:
    # the table is published by a first shape, so the second one's snapshot meets the lock
    handle, offset = read_to_end(syncd, client, "snap")
    query = {"table": "snap", "offset": "-1", "where": "id > 1"}
    answer = drop_while_waiting(
        module_dsn,
        "snap",
        "DROP TABLE snap",
        'FROM "public"."snap"',
        lambda: client.get(syncd.shape_url, params=query),
    )
    assert_must_refetch(answer)
    assert_missing_table(client.get(syncd.shape_url, params=query), "snap")
    # the first shape was invalidated too: its handle leads to the same 400
    old = client.get(syncd.shape_url, params={"table": "snap", "offset": offset, "handle": handle})
    assert_missing_table(old, "snap")


def test_table_dropped_while_its_shape_is_created(
    syncd: SyncdProcess, client: httpx.Client, module_dsn: str
) -> None:
    query = {"table": "fresh", "offset": "-1"}
    answer = drop_while_waiting(
        module_dsn,
        "fresh",
        "DROP TABLE fresh",
        "ALTER PUBLICATION",
        lambda: client.get(syncd.shape_url, params=query),
    )
    assert_must_refetch(answer)
    assert_missing_table(client.get(syncd.shape_url, params=query), "fresh")


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_table_dropped_during_a_subset_query(
    syncd: SyncdProcess, client: httpx.Client, module_dsn: str, method: str
) -> None:
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS sub (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO sub VALUES (1, 'a') ON CONFLICT DO NOTHING")
    handle, offset = read_to_end(syncd, client, "sub")
    at_end = {"table": "sub", "offset": offset, "handle": handle}

    def send() -> httpx.Response:
        if method == "GET":
            return client.get(syncd.shape_url, params={**at_end, "subset__where": "id > 0"})
        return client.post(syncd.shape_url, params=at_end, json={"where": "id > 0"})

    answer = drop_while_waiting(module_dsn, "sub", "DROP TABLE sub", 'FROM "public"."sub"', send)
    assert_must_refetch(answer)
    assert_missing_table(send(), "sub")  # the shape is gone, and so is its table
    assert_missing_table(
        client.get(syncd.shape_url, params={"table": "sub", "offset": "-1"}), "sub"
    )


def test_column_dropped_during_the_snapshot(
    syncd: SyncdProcess, client: httpx.Client, module_dsn: str
) -> None:
    read_to_end(syncd, client, "col")
    query = {"table": "col", "offset": "-1", "where": "v <> 'x'"}
    answer = drop_while_waiting(
        module_dsn,
        "col",
        "ALTER TABLE col DROP COLUMN v",
        'FROM "public"."col"',
        lambda: client.get(syncd.shape_url, params=query),
    )
    assert_must_refetch(answer)
    body: Any = assert_json_error(client.get(syncd.shape_url, params=query), 400)
    assert "where" in body["errors"], body
    assert client.get(syncd.shape_url, params={"table": "col", "offset": "-1"}).status_code == 200
