"""Tests of the replication client against a real Postgres (except the offline ones)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from syncd.pgoutput import (
    Begin,
    Commit,
    Delete,
    Insert,
    Message,
    Relation,
    StreamCommit,
    StreamStart,
    StreamStop,
    Update,
    parse_lsn,
)
from syncd.replication import (
    ReplicationSettings,
    ReplicationStream,
    drop_slot,
    replication_conninfo,
)

_M = TypeVar("_M", bound=Message)

SLOT = "syncd_test_slot"
PUB = "syncd_test_pub"


class Recorder:
    """A handler that records messages and confirms up to the last commit it accepts."""

    def __init__(self, accept: Callable[[Commit], bool] = lambda _commit: True) -> None:
        self.messages: list[Message] = []
        self.accept = accept
        self.durable_lsn = 0
        self.pending: int | None = None
        self.idle_calls: list[tuple[int, bool]] = []
        self.follow_keepalives = False
        self.accepting = True

    def on_message(self, msg: Message) -> None:
        self.messages.append(msg)
        if isinstance(msg, Commit | StreamCommit) and self.accepting:
            if isinstance(msg, Commit) and not self.accept(msg):
                self.accepting = False
                return
            self.pending = msg.end_lsn

    async def on_idle(self, received_lsn: int, in_transaction: bool) -> int:
        self.idle_calls.append((received_lsn, in_transaction))
        if self.pending is not None:
            self.durable_lsn = self.pending
            self.pending = None
        if self.follow_keepalives and self.accepting and not in_transaction:
            return received_lsn
        return self.durable_lsn

    def of_type(self, kind: type[_M]) -> list[_M]:
        return [m for m in self.messages if isinstance(m, kind)]

    def inserted_ids(self) -> list[object]:
        return [m.new[0] for m in self.of_type(Insert)]


async def wait_until(predicate: Callable[[], bool], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def running(stream: ReplicationStream) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(stream.run())
    try:
        yield task
    finally:
        await asyncio.wait_for(stream.stop(), 15)
        await asyncio.wait_for(task, 5)
        assert not stream.connected


async def sql(dsn: str, *statements: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            await conn.execute(statement)


async def slot_confirmed_lsn(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
            (SLOT,),
        )
        row = await cur.fetchone()
        assert row is not None and isinstance(row[0], str)
        return parse_lsn(row[0])


async def active_pid(dsn: str) -> int | None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (SLOT,)
        )
        row = await cur.fetchone()
        return None if row is None else row[0]


async def make_table(dsn: str) -> None:
    await sql(
        dsn,
        "CREATE TABLE t (id int PRIMARY KEY, v text, ts timestamptz, b bytea, i interval,"
        " f float8, d date)",
        "ALTER TABLE t REPLICA IDENTITY FULL",
        f"CREATE PUBLICATION {PUB} FOR TABLE t",
    )


def settings(dsn: str, **kwargs: object) -> ReplicationSettings:
    return ReplicationSettings(conninfo=dsn, slot=SLOT, publication=PUB, **kwargs)  # type: ignore[arg-type]


# --- offline ------------------------------------------------------------------------------


def test_replication_conninfo_merges_options() -> None:
    params = conninfo_to_dict(replication_conninfo("dbname=x options='-c wal_sender_timeout=2s'"))
    assert params["replication"] == "database"
    assert params["dbname"] == "x"
    options = str(params["options"])
    assert "-c TimeZone=UTC" in options and "-c DateStyle=ISO,DMY" in options
    assert options.endswith("-c wal_sender_timeout=2s")  # the caller's options win
    assert params["client_encoding"] == "UTF8"


def test_start_command() -> None:
    s = ReplicationSettings(
        "dbname=x",
        "my_slot",
        "it's",
        proto_version=2,
        streaming=True,
        messages=True,
        extra_options={"origin": "none"},
    )
    assert s.start_command(0x1_0000_0020) == (
        b"START_REPLICATION SLOT \"my_slot\" LOGICAL 1/20 (proto_version '2', "
        b"publication_names '\"it''s\"', streaming 'on', messages 'true', origin 'none')"
    )
    with pytest.raises(ValueError):
        ReplicationSettings("dbname=x", "Bad-Slot", "p")


async def test_unreachable_server_retries_until_stopped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="syncd.replication")
    stream = ReplicationStream(
        ReplicationSettings(
            "host=127.0.0.1 port=1 dbname=x user=x connect_timeout=2",
            SLOT,
            PUB,
            backoff_initial=0.01,
        ),
        Recorder(),
    )
    async with running(stream):
        await wait_until(lambda: stream.reconnects >= 3, within=10)
    assert stream.last_error is not None
    assert "cannot connect" in caplog.text


async def test_stop_before_run_returns_at_once() -> None:
    stream = ReplicationStream(ReplicationSettings("dbname=x", SLOT, PUB), Recorder())
    await stream.stop()
    await asyncio.wait_for(stream.run(), 1)


# --- with Postgres ------------------------------------------------------------------------


@pytest.mark.pg
async def test_stream_decodes_changes(pg_dsn: str) -> None:
    await make_table(pg_dsn)
    rec = Recorder()
    stream = ReplicationStream(settings(pg_dsn), rec)
    async with running(stream):
        await wait_until(lambda: stream.connected)
        await sql(
            pg_dsn,
            "INSERT INTO t VALUES (1, 'a', '2024-01-02 03:04:05+02', '\\x00ff', '1 day 2 hours',"
            " 0.1, '2024-03-04')",
            "UPDATE t SET v = 'b' WHERE id = 1",
            "DELETE FROM t WHERE id = 1",
        )
        await wait_until(lambda: len(rec.of_type(Commit)) == 3)
        await wait_until(lambda: stream.confirmed_lsn == rec.of_type(Commit)[-1].end_lsn)
    kinds = [type(m) for m in rec.messages]
    assert kinds == [
        Begin, Relation, Insert, Commit,
        Begin, Update, Commit,
        Begin, Delete, Commit,
    ]  # fmt: skip
    rel = rec.of_type(Relation)[0]
    assert (rel.namespace, rel.name) == ("public", "t")
    row = ("1", "a", "2024-01-02 01:04:05+00", "\\x00ff", "P1DT2H", "0.1", "2024-03-04")
    assert rec.of_type(Insert)[0] == Insert(rel.oid, row)
    upd = rec.of_type(Update)[0]
    assert (upd.old, upd.new, upd.old_kind) == (row, ("1", "b", *row[2:]), "O")
    assert rec.of_type(Delete)[0].old == ("1", "b", *row[2:])
    assert max(received for received, _ in rec.idle_calls) >= rec.of_type(Commit)[-1].commit_lsn
    # The final status reached the server before the connection closed.
    assert await slot_confirmed_lsn(pg_dsn) == rec.of_type(Commit)[-1].end_lsn
    assert await drop_slot(pg_dsn, SLOT)
    assert not await drop_slot(pg_dsn, SLOT)


@pytest.mark.pg
async def test_restart_resends_only_unconfirmed_transactions(pg_dsn: str) -> None:
    await make_table(pg_dsn)
    first = Recorder(accept=lambda _c: True)
    stream = ReplicationStream(settings(pg_dsn), first)
    async with running(stream):
        await wait_until(lambda: stream.connected)
        await sql(pg_dsn, "INSERT INTO t (id) VALUES (1)", "INSERT INTO t (id) VALUES (2)")
        await wait_until(lambda: len(first.of_type(Commit)) == 2)
        await wait_until(lambda: stream.confirmed_lsn == first.of_type(Commit)[-1].end_lsn)
        # From now on the handler receives but does not make anything durable.
        first.accepting = False
        await sql(pg_dsn, "INSERT INTO t (id) VALUES (3)", "INSERT INTO t (id) VALUES (4)")
        await wait_until(lambda: len(first.of_type(Commit)) == 4)
    assert first.inserted_ids() == ["1", "2", "3", "4"]
    confirmed = first.of_type(Commit)[1].end_lsn
    assert stream.confirmed_lsn == confirmed
    assert await slot_confirmed_lsn(pg_dsn) == confirmed

    second = Recorder()
    stream = ReplicationStream(settings(pg_dsn), second)
    assert stream.confirmed_lsn == 0
    async with running(stream):
        await wait_until(lambda: len(second.of_type(Commit)) == 2)
        assert stream.received_lsn >= second.of_type(Commit)[-1].commit_lsn
        await sql(pg_dsn, "INSERT INTO t (id) VALUES (5)")
        await wait_until(lambda: len(second.of_type(Commit)) == 3)
    assert second.inserted_ids() == ["3", "4", "5"]
    # Relation messages are sent again on a new connection, before the first change.
    assert isinstance(second.messages[1], Relation)


@pytest.mark.pg
async def test_reconnects_after_walsender_is_terminated(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="syncd.replication")
    await make_table(pg_dsn)
    rec = Recorder()
    stream = ReplicationStream(settings(pg_dsn, backoff_initial=0.05), rec)
    async with running(stream):
        await wait_until(lambda: stream.connected)
        await sql(pg_dsn, "INSERT INTO t (id) VALUES (1)")
        await wait_until(lambda: rec.inserted_ids() == ["1"])
        pid = await active_pid(pg_dsn)
        assert pid is not None
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_replication WHERE pid = %s", (pid,)
            )
            assert await cur.fetchone() == (True,)
            # Committed while the stream is (probably) disconnected.
            for i in range(2, 12):
                await conn.execute("INSERT INTO t (id) VALUES (%s)", (i,))
        await wait_until(lambda: stream.reconnects >= 1)
        await wait_until(lambda: {str(i) for i in range(1, 12)} <= set(rec.inserted_ids()))
        await wait_until(lambda: stream.connected)
        new_pid = await active_pid(pg_dsn)
        assert new_pid is not None and new_pid != pid
        await sql(pg_dsn, "INSERT INTO t (id) VALUES (12)")
        await wait_until(lambda: "12" in rec.inserted_ids())
    ids = rec.inserted_ids()
    # Nothing lost; whatever was not confirmed before the kill may come twice, in order.
    assert sorted(set(ids), key=lambda x: int(str(x))) == [str(i) for i in range(1, 13)]
    assert ids[-11:] == [str(i) for i in range(2, 13)]
    assert "disconnected" in caplog.text


@pytest.mark.pg
@pytest.mark.slow
async def test_keepalive_replies_keep_the_connection(pg_dsn: str) -> None:
    await make_table(pg_dsn)
    rec = Recorder()
    rec.follow_keepalives = True
    dsn = make_conninfo(pg_dsn, options="-c wal_sender_timeout=2s")
    # No periodic status (60 s, not capped): only the keepalive replies keep the connection.
    stream = ReplicationStream(settings(dsn, status_interval=60.0, cap_status_interval=False), rec)
    async with running(stream):
        await wait_until(lambda: stream.connected)
        pid = await active_pid(pg_dsn)
        await asyncio.sleep(5)
        assert stream.connected
        assert stream.reconnects == 0
        assert stream.keepalive_replies >= 2
        assert await active_pid(pg_dsn) == pid
        await sql(pg_dsn, "INSERT INTO t (id) VALUES (1)")
        await wait_until(lambda: rec.inserted_ids() == ["1"])
    # The handler confirmed keepalive positions (nothing pending), so the slot moved on.
    assert stream.confirmed_lsn >= rec.of_type(Commit)[-1].end_lsn


@pytest.mark.pg
async def test_streaming_large_transaction(pg_dsn: str) -> None:
    await make_table(pg_dsn)
    rec = Recorder()
    dsn = make_conninfo(pg_dsn, options="-c logical_decoding_work_mem=64kB")
    stream = ReplicationStream(settings(dsn, proto_version=2, streaming=True), rec)
    states: list[bool] = []
    original = rec.on_idle

    async def on_idle(received_lsn: int, in_transaction: bool) -> int:
        states.append(in_transaction)
        return await original(received_lsn, in_transaction)

    rec.on_idle = on_idle  # type: ignore[method-assign]
    async with running(stream):
        await wait_until(lambda: stream.connected)
        await sql(pg_dsn, "INSERT INTO t (id, v) SELECT g, 'x' FROM generate_series(1, 3000) g")
        await wait_until(lambda: bool(rec.of_type(StreamCommit)))
        await wait_until(lambda: stream.confirmed_lsn == rec.of_type(StreamCommit)[0].end_lsn)
    starts = rec.of_type(StreamStart)
    assert len(starts) >= 2 and starts[0].first
    assert len(rec.of_type(StreamStop)) == len(starts)
    assert len(rec.inserted_ids()) == 3000
    assert all(m.xid == starts[0].xid for m in rec.of_type(Insert))
    assert not stream.in_transaction
