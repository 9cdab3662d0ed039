"""Slot loss is never silent.

When syncd's replication slot is dropped, recreated or loses its WAL, the transactions committed
in between can never be streamed again. syncd must say so at ERROR and send every client back to
a new snapshot (409), never carry on from the new slot as if nothing happened. Each test here
makes the gap contain deletes and updates of rows the consumers hold, so that a syncd that
carried on would leave them with deleted rows (or send updates and deletes of rows they lack),
which :class:`~tests.faults.checked_consumer.CheckedConsumer` and the final ``SELECT`` catch.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from syncd.pgprovider import PostgresServer, provide_postgres
from tests.faults.checked_consumer import CheckedConsumer, assert_rows_equal_select
from tests.syncd_process import SyncdProcess

pytestmark = [pytest.mark.pg, pytest.mark.slow]

TABLE = "items"
WHERES: list[str | None] = [None, "grp = 1", "n > 50", "grp IN (2, 3) AND n < 80"]
BROKEN = "history is broken"


def execute(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.encode())


def create_table(dsn: str) -> None:
    execute(
        dsn,
        f"CREATE TABLE {TABLE} (id int PRIMARY KEY, grp int, n int, title text)",
        f"INSERT INTO {TABLE} SELECT g, g % 5, g % 101, 't' || g FROM generate_series(1, 300) g",
    )


def write_gap(conn: psycopg.Connection[tuple[object, ...]], round_: int) -> None:
    """Transactions that a syncd carrying on over the gap would get wrong: deletes and updates
    of rows every consumer holds, and inserts."""
    base = 1000 * (round_ + 1)
    conn.execute(f"DELETE FROM {TABLE} WHERE id % 7 = {round_ % 7}".encode())
    conn.execute(f"UPDATE {TABLE} SET n = n + 1, title = 'gap' WHERE id % 5 = 0".encode())
    conn.execute(f"UPDATE {TABLE} SET grp = (grp + 1) % 5 WHERE id % 11 = 0".encode())
    conn.execute(
        f"INSERT INTO {TABLE} SELECT g, g % 5, g % 101, 'new' FROM generate_series("
        f"{base}, {base + 40}) g ON CONFLICT DO NOTHING".encode()
    )


class Writer:
    """Random inserts, updates and deletes in small transactions, in a thread, until stopped."""

    def __init__(self, dsn: str, seed: int) -> None:
        self.dsn = dsn
        self.rng = random.Random(seed)
        self.transactions = 0
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writer")

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.failure is not None:
            raise self.failure

    def _run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self._stop.is_set():
                    with conn.transaction():
                        for _ in range(self.rng.randint(1, 4)):
                            self._one(conn)
                    self.transactions += 1
                    self._stop.wait(0.005)
        except BaseException as exc:
            self.failure = exc

    def _one(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        id_ = self.rng.randint(1, 400)
        grp, n = self.rng.randint(0, 4), self.rng.randint(0, 100)
        kind = self.rng.choice(["insert", "update", "update", "delete"])
        if kind == "insert":
            conn.execute(
                f"INSERT INTO {TABLE} VALUES (%s, %s, %s, 'w') ON CONFLICT (id) DO UPDATE"
                " SET grp = excluded.grp, n = excluded.n, title = excluded.title",
                (id_, grp, n),
            )
        elif kind == "update":
            conn.execute(f"UPDATE {TABLE} SET grp = %s, n = %s WHERE id = %s", (grp, n, id_))
        else:
            conn.execute(f"DELETE FROM {TABLE} WHERE id = %s", (id_,))


@contextlib.contextmanager
def consumers_of(syncd: SyncdProcess) -> Iterator[list[CheckedConsumer]]:
    """One checked consumer per shape in :data:`WHERES`, caught up and following live."""
    made = []
    try:
        for where in WHERES:
            params = {"table": TABLE} if where is None else {"table": TABLE, "where": where}
            consumer = CheckedConsumer(syncd.shape_url, params, name=where or TABLE)
            made.append(consumer)
            consumer.catch_up()
            consumer.start()
        yield made
    finally:
        for consumer in made:
            consumer.close()


def slot_name(dsn: str) -> str:
    return f"syncd_{conninfo_to_dict(dsn)['dbname']}"


def drop_slot_of(conn: psycopg.Connection[tuple[object, ...]], slot: str) -> None:
    """Terminate the walsender holding ``slot`` and drop it (retrying while it exits);
    ``conn``, in autocommit mode, is connected to the slot's database."""
    for _ in range(500):
        conn.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
            " WHERE slot_name = %s AND active_pid IS NOT NULL",
            (slot,),
        )
        try:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            return
        except psycopg.errors.ObjectInUse:
            conn.execute("SELECT pg_sleep(0.01)")
    raise AssertionError(f"slot {slot} stayed in use")


@contextlib.contextmanager
def connections_refused(dsn: str) -> Iterator[None]:
    """No new connection to the test database (syncd cannot recreate its slot meanwhile)."""
    database = sql.Identifier(str(conninfo_to_dict(dsn)["dbname"]))
    admin = make_conninfo(dsn, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(database))
        try:
            yield
        finally:
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(database))


def assert_all_converged(consumers: list[CheckedConsumer], dsn: str) -> None:
    for consumer in consumers:
        consumer.stop()
        assert_rows_equal_select(consumer, dsn, TABLE, consumer.params.get("where"))
        assert consumer.refetches >= 1, f"{consumer.name} was never sent back to a snapshot"


def wait_for_refetches(consumers: list[CheckedConsumer]) -> None:
    """Until every consumer went through a 409 (or one of them failed)."""
    deadline = time.monotonic() + 120
    while any(c.refetches == 0 for c in consumers):
        for consumer in consumers:
            if consumer.failure is not None:
                raise consumer.failure
        assert time.monotonic() < deadline, "not every consumer was sent back to a snapshot"
        time.sleep(0.05)


def error_lines(syncd: SyncdProcess) -> list[str]:
    return [
        line
        for line in syncd.log_path.read_text(errors="replace").splitlines()
        if " ERROR " in line and BROKEN in line
    ]


@pytest.fixture
def syncd(pg_dsn: str, tmp_path: Path) -> Iterator[SyncdProcess]:
    create_table(pg_dsn)
    daemon = SyncdProcess(pg_dsn, tmp_path / "storage", long_poll_timeout=1, chunk_bytes=8192)
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.mark.parametrize("recreated_by", ["syncd", "someone else"])
def test_slot_dropped_under_write_load(syncd: SyncdProcess, pg_dsn: str, recreated_by: str) -> None:
    """The walsender is terminated and the slot dropped while writes go on; what commits before
    there is a slot again is lost to syncd: every consumer must get a 409 and converge. syncd
    either finds no slot and creates it, or finds one that someone else created meanwhile,
    ahead of what syncd confirmed."""
    with consumers_of(syncd) as consumers:
        with Writer(pg_dsn, seed=8) as writer, psycopg.connect(pg_dsn, autocommit=True) as gap:
            while writer.transactions < 50:
                gap.execute("SELECT pg_sleep(0.01)")
            with connections_refused(pg_dsn):
                drop_slot_of(gap, slot_name(pg_dsn))
                write_gap(gap, 0)
                if recreated_by != "syncd":
                    gap.execute(
                        "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')",
                        (slot_name(pg_dsn),),
                    )
            wait_for_refetches(consumers)
            write_gap(gap, 1)
        assert_all_converged(consumers, pg_dsn)
    assert error_lines(syncd), syncd.log_tail()


def test_restart_with_a_recreated_slot(syncd: SyncdProcess, pg_dsn: str) -> None:
    """syncd stopped, its slot dropped and created again by someone else with writes before
    and after, syncd started on the same storage: the stored shapes must not carry on."""
    with consumers_of(syncd) as consumers:
        with Writer(pg_dsn, seed=9), psycopg.connect(pg_dsn, autocommit=True) as gap:
            syncd.stop()
            drop_slot_of(gap, slot_name(pg_dsn))
            write_gap(gap, 0)
            gap.execute(
                "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')",
                (slot_name(pg_dsn),),
            )
            write_gap(gap, 1)
            syncd.start()
            wait_for_refetches(consumers)
        assert_all_converged(consumers, pg_dsn)
    assert error_lines(syncd), syncd.log_tail()


@contextlib.contextmanager
def own_cluster(directory: Path) -> Iterator[PostgresServer]:
    """A throw-away Postgres of this test's own (settings and crashes touch nobody else)."""
    directory.mkdir()
    directory.chmod(0o711)  # the server may run as another OS user
    server = provide_postgres(directory / "data", env_var="SYNCD_FAULTS_OWN_CLUSTER", fast=True)
    try:
        yield server
    finally:
        server.stop()


def wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, f"postmaster {pid} did not exit"
        time.sleep(0.05)


def test_postgres_crash_is_not_a_slot_loss(tmp_path: Path) -> None:
    """The other side: after an immediate shutdown (a crash) Postgres resumes the slot from its
    last checkpointed position, behind what syncd confirmed, and sends transactions again. That
    history is intact: no ERROR, no 409, and the consumers still see every change once."""
    with own_cluster(tmp_path / "pg") as server:
        execute(server.dsn, "CREATE DATABASE crash")
        dsn = make_conninfo(server.dsn, dbname="crash")
        create_table(dsn)
        daemon = SyncdProcess(dsn, tmp_path / "storage", long_poll_timeout=1)
        daemon.start()
        try:
            with consumers_of(daemon) as consumers:
                with Writer(dsn, seed=10) as writer:
                    while writer.transactions < 30:
                        time.sleep(0.01)
                assert server.pid is not None
                os.kill(server.pid, signal.SIGQUIT)  # immediate shutdown: no checkpoint
                wait_gone(server.pid)
                restarted = provide_postgres(
                    tmp_path / "pg" / "data", env_var="SYNCD_FAULTS_OWN_CLUSTER", fast=True
                )
                try:
                    if restarted.dsn != server.dsn:
                        pytest.skip("Postgres came back on another port")
                    with Writer(dsn, seed=11) as writer:
                        while writer.transactions < 30:
                            time.sleep(0.01)
                    for consumer in consumers:
                        consumer.stop()
                        assert_rows_equal_select(consumer, dsn, TABLE, consumer.params.get("where"))
                        assert consumer.refetches == 0, f"{consumer.name} was sent a 409"
                finally:
                    restarted.stop()
            assert not error_lines(daemon), daemon.log_tail()
        finally:
            daemon.stop()


def test_slot_whose_wal_was_removed(tmp_path: Path) -> None:
    """``max_slot_wal_keep_size`` lets Postgres remove WAL a stopped syncd's slot still needs;
    the slot is invalidated (``wal_status = 'lost'``). syncd must drop it, start a new one and
    send every client back to a snapshot, not retry the dead slot forever."""
    with own_cluster(tmp_path / "pg") as server:
        execute(server.dsn, "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        execute(server.dsn, "SELECT pg_reload_conf()", "CREATE DATABASE lost")
        dsn = make_conninfo(server.dsn, dbname="lost")
        create_table(dsn)
        execute(dsn, "CREATE TABLE filler (id serial, pad text)")
        daemon = SyncdProcess(dsn, tmp_path / "storage", long_poll_timeout=1)
        daemon.start()
        try:
            with consumers_of(daemon) as consumers:
                daemon.stop()
                with psycopg.connect(dsn, autocommit=True) as conn:
                    write_gap(conn, 0)
                    for _ in range(6):
                        conn.execute("INSERT INTO filler (pad) VALUES (repeat('x', 100))")
                        conn.execute("SELECT pg_switch_wal()")
                    conn.execute("CHECKPOINT")
                    row = conn.execute(
                        "SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s",
                        (slot_name(dsn),),
                    ).fetchone()
                    assert row == ("lost",), f"the slot was not invalidated: {row}"
                    write_gap(conn, 1)
                daemon.start()
                wait_for_refetches(consumers)
                assert_all_converged(consumers, dsn)
            assert error_lines(daemon), daemon.log_tail()
        finally:
            daemon.stop()
