"""Flushes that wait for the disk off the event loop (``syncd.log_flush``, ``FlushTracker``):
what is written while a flush runs is never counted as durable by it."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from syncd import log_flush
from syncd.log_flush import GROUP_SYNC_MIN, plan_flush
from syncd.storage import GroupSync, ShapeLog
from tests.syncd.logs import read_all_changes
from tests.syncd.test_flush_failure import commit_to_each, group_tracker, ready_shapes

needs_syncfs = pytest.mark.skipif(log_flush._syncfs is None, reason="no syncfs")


def logs_with_one_append(directory: Path, count: int) -> list[ShapeLog]:
    logs = [ShapeLog.create(directory / f"s{i}", 4096) for i in range(count)]
    for i, log in enumerate(logs):
        log.append_transaction(10, [(0, b'{"i":%d}' % i)])
    return logs


@pytest.mark.parametrize("count", [1, GROUP_SYNC_MIN])
def test_appends_between_the_steps_keep_a_log_dirty(tmp_path: Path, count: int) -> None:
    logs = logs_with_one_append(tmp_path, count)
    group = GroupSync(tmp_path)
    try:
        plan = group.plan(logs)
        plan.make_durable()
        logs[0].append_transaction(11, [(0, b'{"late":1}')])  # after the flush's write-back
        plan.install_metadata()
        plan.finish()
    finally:
        group.close()
    assert logs[0].dirty
    assert not any(log.dirty for log in logs[1:])
    logs[0].sync()
    assert not logs[0].dirty
    assert read_all_changes(ShapeLog.open(tmp_path / "s0", 4096)) == [b'{"i":0}', b'{"late":1}']


@pytest.mark.parametrize("count", [1, GROUP_SYNC_MIN])
def test_metadata_rewritten_during_a_flush_waits_for_the_next(tmp_path: Path, count: int) -> None:
    logs = logs_with_one_append(tmp_path, count)
    logs[0].write_meta({"v": 1}, defer=True)
    group = GroupSync(tmp_path)
    try:
        plan = group.plan(logs)
        plan.make_durable()
        logs[0].write_meta({"v": 2}, defer=True)  # its bytes may postdate the flush
        assert not plan.install_metadata()
        plan.finish()
        assert logs[0].read_meta() == {}
        assert logs[0].dirty
        group.sync(logs)
    finally:
        group.close()
    assert logs[0].read_meta() == {"v": 2}
    assert not logs[0].dirty


@pytest.mark.parametrize("count", [1, GROUP_SYNC_MIN])
def test_a_log_deleted_during_a_flush_is_skipped(tmp_path: Path, count: int) -> None:
    logs = logs_with_one_append(tmp_path, count)
    for log in logs:
        log.write_meta({"v": 1}, defer=True)
    group = GroupSync(tmp_path)
    try:
        plan = group.plan(logs)
        logs[0].delete()
        plan.run()
    finally:
        group.close()
    assert not (tmp_path / "s0").exists()
    assert all(log.read_meta() == {"v": 1} for log in logs[1:])


def test_a_plan_without_a_group_syncs_each_log(tmp_path: Path) -> None:
    logs = logs_with_one_append(tmp_path, 3)
    logs[1].write_meta({"v": 1}, defer=True)
    plan = plan_flush(logs, None)
    assert not plan.empty
    plan.run()
    assert not any(log.dirty or log.holds_descriptors for log in logs)
    assert logs[1].read_meta() == {"v": 1}
    assert plan_flush(logs, None).empty


@needs_syncfs
async def test_the_tracker_flushes_on_its_own_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shapes = ready_shapes(tmp_path, 2 * GROUP_SYNC_MIN)
    tracker = group_tracker(tmp_path)
    entered, release = threading.Event(), threading.Event()
    real_syncfs = log_flush._syncfs

    def held_syncfs(fd: int) -> Any:
        entered.set()
        release.wait(10)
        return real_syncfs(fd)

    try:
        installed = shapes[1].log.read_meta()
        shapes[1].log.write_meta({"v": 1}, defer=True)
        commit_to_each(tracker, shapes)
        monkeypatch.setattr(log_flush, "_syncfs", held_syncfs)
        assert tracker.on_idle(120, True) == 0
        assert await asyncio.to_thread(entered.wait, 10)

        # The loop is free while the flush waits: more commits, a rewritten metadata file.
        assert shapes[0].commit(200, 6, [(0, b'{"i":2}')])
        tracker.dirty.add(shapes[0])
        tracker.committed(200, 220)
        shapes[1].log.write_meta({"v": 2}, defer=True)
        assert tracker.on_idle(220, True) == 0  # nothing is durable yet; no second flush

        release.set()
        await tracker.drain()
        assert tracker.durable_lsn == 120  # what was committed when the flush began
        assert [shape.log.dirty for shape in shapes[:3]] == [True, True, False]
        assert shapes[1].log.read_meta() == installed  # neither v1 (replaced) nor v2 yet

        # The next flush has two logs to sync: brief, so it is done when the idle call returns.
        assert tracker.on_idle(220, True) == 220
        assert not any(shape.log.dirty for shape in shapes)
        assert shapes[1].log.read_meta() == {"v": 2}
    finally:
        release.set()
        await tracker.drain()
        tracker.close_group_sync()


async def test_a_few_logs_are_flushed_at_once(tmp_path: Path) -> None:
    shapes = ready_shapes(tmp_path, GROUP_SYNC_MIN - 1)
    tracker = group_tracker(tmp_path)
    try:
        commit_to_each(tracker, shapes)
        # no hop to the flush thread: durable when the idle call returns
        assert tracker.on_idle(120, True) == 120
        assert not any(shape.log.dirty for shape in shapes)
        # and each log keeps its append descriptors for its next commit
        assert all(shape.log.holds_descriptors for shape in shapes)
    finally:
        await tracker.drain()
        tracker.close_group_sync()
    assert not any(shape.log.holds_descriptors for shape in shapes)
