"""A flush that cannot make the shape logs durable stops syncd instead of confirming later.

Linux reports a write-back error once: a ``syncfs()`` after a failed one succeeds even though
the failed data may never reach the disk. So the first failure must stick.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shapes.schema import Column, Table
from shapes.shape import CanonicalShape
from shapes.xid import Snapshot
from syncd import log_flush
from syncd.flush_tracker import FlushFailed, FlushTracker
from syncd.replication import _RETRYABLE
from syncd.shape_state import ShapeState
from syncd.storage import GroupSync, ShapeLog

END_LINE = b'{"headers":{"control":"snapshot-end","xmin":"1","xmax":"1","xip_list":[]}}'
TABLE = Table("public", "t", (Column("id", "int4", 23, pk_index=0),))


def ready_shapes(directory: Path, count: int) -> list[ShapeState]:
    shapes = []
    for i in range(count):
        shape_log = ShapeLog.create(directory / f"s{i}", 4096)
        shape_log.finish_snapshot(END_LINE)
        shape = ShapeState(f"h-{i}", CanonicalShape("public", "t"), TABLE, None, ("id",), shape_log)
        shape.finish_snapshot(Snapshot(1, 1, ()), 0)
        shapes.append(shape)
    return shapes


def group_tracker(directory: Path) -> FlushTracker:
    """A tracker that flushes many logs with one ``syncfs()`` and never waits between flushes."""
    tracker = FlushTracker(directory, flush_interval=0.0)
    tracker.group_sync = GroupSync(directory)
    return tracker


def commit_to_each(tracker: FlushTracker, shapes: list[ShapeState]) -> None:
    """One transaction (commit LSN 100, ending at 120) appended to every shape's log."""
    for shape in shapes:
        assert shape.commit(100, 5, [(0, b'{"i":1}')])
        tracker.dirty.add(shape)
    tracker.committed(100, 120)


@pytest.mark.skipif(log_flush._syncfs is None, reason="no syncfs")
async def test_a_failed_flush_sticks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shapes = ready_shapes(tmp_path, 2 * log_flush.GROUP_SYNC_MIN)
    tracker = group_tracker(tmp_path)
    try:
        commit_to_each(tracker, shapes)
        monkeypatch.setattr(log_flush, "_syncfs", lambda fd: -1)
        assert tracker.on_idle(120, True) == 0  # the flush runs on its own thread
        await tracker.drain()
        assert tracker.failure is not None
        with pytest.raises(FlushFailed):
            tracker.on_idle(120, True)
        assert tracker.durable_lsn == 0
        monkeypatch.undo()  # the next syncfs would succeed: it must not be trusted
        with pytest.raises(FlushFailed):
            tracker.on_idle(120, True)
        with pytest.raises(FlushFailed):
            tracker.flush_dirty()
        assert tracker.durable_lsn == 0
    finally:
        tracker.close_group_sync()


def test_the_stream_does_not_retry_a_failed_flush() -> None:
    assert not isinstance(FlushFailed("x"), _RETRYABLE)
