"""The slot record advances on a thread, and a position is confirmed only once it is durable.

The record's writes are held on a gate (the real write still happens after it), so the test can
look at what the tracker confirms while an advance is being written, and at what happens when a
new history is saved meanwhile: the new history is what stays, on disk and in memory.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd import flush_tracker
from syncd.flush_tracker import FlushTracker
from syncd.slot_record import SlotRecord


class HeldWrites:
    """Wraps ``SlotRecord.save``: each write waits for :meth:`release` (then happens)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self._real = SlotRecord.save

    def save(self, record: SlotRecord, storage_dir: Path) -> None:
        self.started.set()
        self.gate.wait(30)
        self._real(record, storage_dir)

    def release(self) -> None:
        self.gate.set()


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldWrites]:
    writes = HeldWrites()

    def save(record: SlotRecord, storage_dir: Path) -> None:
        writes.save(record, storage_dir)

    monkeypatch.setattr(SlotRecord, "save", save)
    monkeypatch.setattr(flush_tracker, "_SLOT_RECORD_INTERVAL", 0.0)
    yield writes
    writes.release()


async def _until(condition: object) -> None:
    for _ in range(1500):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def _advancing(tmp_path: Path, held: HeldWrites) -> FlushTracker:
    """A tracker whose record is at 100, with an advance to 500 held while being written."""
    tracker = FlushTracker(tmp_path, 0.05)
    held.release()
    tracker.save_slot_record(SlotRecord("slot", 100))
    held.gate.clear()
    held.started.clear()
    assert tracker.confirmable(500) == 100  # the advance is being written
    await asyncio.to_thread(held.started.wait, 30)
    return tracker


async def test_a_position_is_confirmed_once_its_record_is_durable(
    tmp_path: Path, held: HeldWrites
) -> None:
    tracker = await _advancing(tmp_path, held)
    assert tracker.confirmable(600) == 100  # one write at a time
    assert SlotRecord.load(tmp_path) == SlotRecord("slot", 100)
    held.release()
    await _until(lambda: tracker.confirmable(500) == 500)
    assert SlotRecord.load(tmp_path) == SlotRecord("slot", 500)
    await _until(lambda: tracker.confirmable(600) == 600)
    assert SlotRecord.load(tmp_path) == SlotRecord("slot", 600)
    tracker.close_group_sync()


async def test_a_new_history_is_not_overwritten_by_an_advance_of_the_old(
    tmp_path: Path, held: HeldWrites
) -> None:
    tracker = await _advancing(tmp_path, held)
    threading.Timer(0.2, held.release).start()  # the advance lands while the new one waits
    tracker.save_slot_record(SlotRecord("other", 40))
    await asyncio.sleep(0.2)  # the advance's completion reaches the event loop
    assert tracker.slot_record == SlotRecord("other", 40)
    assert SlotRecord.load(tmp_path) == SlotRecord("other", 40)
    assert tracker.confirmable(30) == 30
    tracker.close_group_sync()
