"""Slot history: when does a replication slot continue what syncd confirmed, and what the
stream does when it does not (the end-to-end cases are in tests/faults/test_slot_loss.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest

from syncd.pgoutput import Commit
from syncd.replication import (
    ReplicationStream,
    SlotFound,
    SlotHistoryLost,
    drop_slot,
    history_gap,
)
from syncd.slot_record import SlotRecord
from tests.syncd.test_replication import (
    SLOT,
    Recorder,
    make_table,
    running,
    settings,
    slot_confirmed_lsn,
    sql,
    wait_until,
)


def found(confirmed: int, **kwargs: object) -> SlotFound:
    fields: dict[str, object] = {
        "name": "s",
        "confirmed_lsn": confirmed,
        "restart_lsn": confirmed,
        "wal_status": "reserved",
        "wal_end": confirmed + 100,
        "system_id": "7",
    }
    fields.update(kwargs)
    return SlotFound(**fields)  # type: ignore[arg-type]


def test_a_slot_at_or_behind_the_confirmed_position_continues_the_history() -> None:
    assert history_gap(found(1000), 1000, system_id="7", slot_name="s") is None
    # Behind: after a crash Postgres resumes from its last checkpointed position.
    assert history_gap(found(900), 1000, system_id="7", slot_name="s") is None
    # Nothing known yet (first start): a new slot is the start of the history.
    assert history_gap(found(1000, created=True), None) is None


@pytest.mark.parametrize(
    ("slot", "words"),
    [
        (found(1000, created=True), "created afresh"),
        (found(1001), "ahead"),
        (found(1000, wal_end=900), "restored from a backup"),
        (found(1000, system_id="8"), "another cluster"),
        (found(1000, name="other"), "belongs to slot s"),
        (found(1000, created=True, lost="wal_status is 'lost'"), "could no longer be read"),
    ],
)
def test_broken_histories_are_named(slot: SlotFound, words: str) -> None:
    gap = history_gap(slot, 1000, system_id="7", slot_name="s")
    assert gap is not None and words in gap


def test_a_lost_slot_breaks_even_an_unknown_history() -> None:
    assert history_gap(found(10, created=True, lost="gone"), None) is not None


def test_slot_record_round_trip_and_unreadable_record(tmp_path: Path) -> None:
    assert SlotRecord.load(tmp_path) is None
    record = SlotRecord("s", 1234, "7")
    record.save(tmp_path)
    assert SlotRecord.load(tmp_path) == record
    assert record.advanced(1000) == record
    assert record.advanced(2000).confirmed_lsn == 2000
    (tmp_path / "slot.json").write_text("{not json")
    assert SlotRecord.load(tmp_path) is None


@pytest.mark.pg
async def test_stream_without_on_slot_stops_when_its_slot_is_dropped(pg_dsn: str) -> None:
    """A handler that cannot start over must not be fed a new slot's changes as if they
    continued the old one: run() ends with SlotHistoryLost and nothing more is confirmed."""
    await make_table(pg_dsn)
    rec = Recorder()
    stream = ReplicationStream(settings(pg_dsn, backoff_initial=0.05), rec)
    task = asyncio.create_task(stream.run())
    try:
        await wait_until(lambda: stream.connected)
        await sql(pg_dsn, "INSERT INTO t (id) VALUES (1)")
        await wait_until(lambda: rec.inserted_ids() == ["1"])
        await wait_until(lambda: stream.confirmed_lsn == rec.of_type(Commit)[-1].end_lsn)
        assert await drop_slot(pg_dsn, SLOT, terminate=True)
        with pytest.raises(SlotHistoryLost, match="created afresh"):
            await asyncio.wait_for(task, 30)
    finally:
        await stream.stop()
    assert rec.inserted_ids() == ["1"]
    assert stream.history_breaks == 1


class StartingOver(Recorder):
    """A handler that drops its state when the slot's history breaks."""

    def __init__(self) -> None:
        super().__init__()
        self.slots: list[SlotFound] = []

    def on_slot(self, slot: SlotFound) -> bool:
        self.slots.append(slot)
        if len(self.slots) == 1:
            return False
        self.messages.clear()
        self.durable_lsn = 0
        self.pending = None
        return True


@pytest.mark.pg
async def test_stream_with_on_slot_starts_over_from_the_new_slot(pg_dsn: str) -> None:
    await make_table(pg_dsn)
    rec = StartingOver()
    stream = ReplicationStream(settings(pg_dsn, backoff_initial=0.05), rec)
    async with running(stream):
        await wait_until(lambda: stream.connected)
        await sql(pg_dsn, "INSERT INTO t (id) VALUES (1)")
        await wait_until(lambda: rec.inserted_ids() == ["1"])
        assert await drop_slot(pg_dsn, SLOT, terminate=True)
        await wait_until(lambda: len(rec.slots) == 2 and stream.connected)
        await sql(pg_dsn, "INSERT INTO t (id) VALUES (2)")
        await wait_until(lambda: rec.inserted_ids() == ["2"])
        await wait_until(lambda: stream.confirmed_lsn == rec.of_type(Commit)[-1].end_lsn)
    assert rec.slots[1].created
    assert stream.history_breaks == 1
    assert await slot_confirmed_lsn(pg_dsn) == stream.confirmed_lsn


@pytest.mark.pg
async def test_stream_drops_and_recreates_a_slot_whose_wal_is_lost(pg_dsn: str) -> None:
    """A slot reported as ``wal_status = 'lost'`` is dropped and created again, and the
    handler hears why. (Invalidating a slot for real needs its own cluster: see
    tests/faults/test_slot_loss.py; here the stream is told the slot's WAL is gone.)"""
    await make_table(pg_dsn)
    rec = StartingOver()
    stream = ReplicationStream(settings(pg_dsn, backoff_initial=0.05), rec)
    async with running(stream):
        await wait_until(lambda: stream.connected)
        stream._unusable = "test: the WAL is gone"  # as after the error class of a lost slot
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            await conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE slot_name = %s",
                (SLOT,),
            )
        await wait_until(lambda: len(rec.slots) == 2 and stream.connected)
    assert rec.slots[1].lost == "test: the WAL is gone"
    assert rec.slots[1].created
