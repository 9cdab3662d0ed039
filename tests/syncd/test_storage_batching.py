"""Storage paths used by the replication hot path: ``TransactionEntries``, deferred metadata
and ``GroupSync`` (one ``syncfs`` for many logs)."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shapes.offset import SNAPSHOT_END
from syncd import log_flush, storage
from syncd.storage import GroupSync, ShapeLog, TransactionEntries
from tests.syncd.logs import change_log_files, read_all_changes


def row(i: int, pad: int = 0) -> bytes:
    return b'{"i":%d,"p":"%s"}' % (i, b"x" * pad)


def entries_of(pairs: list[tuple[int, bytes]]) -> TransactionEntries:
    entries = TransactionEntries()
    for op, data in pairs:
        entries.append(op, data)
    return entries


def test_transaction_entries_is_a_sequence_of_pairs() -> None:
    entries = entries_of([(0, b"{}"), (2, b'{"a":1}')])
    assert len(entries) == 2
    assert entries[1] == (2, b'{"a":1}')
    assert entries[-1] == (2, b'{"a":1}')
    assert entries[0:1] == [(0, b"{}")]
    assert list(entries) == [(0, b"{}"), (2, b'{"a":1}')]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 60), min_size=1, max_size=8), min_size=1, max_size=8),
    st.integers(1, 200),
)
def test_entries_and_tuples_write_identical_logs(
    tmp_path_factory: pytest.TempPathFactory, txns: list[list[int]], chunk_bytes: int
) -> None:
    base = tmp_path_factory.mktemp("logs")
    plain = ShapeLog.create(base / "plain", chunk_bytes)
    split = ShapeLog.create(base / "split", chunk_bytes)
    for t, pads in enumerate(txns):
        pairs = [(2 * k, row(k, pad)) for k, pad in enumerate(pads)]
        plain.append_transaction(100 + t, pairs)
        split.append_transaction(100 + t, entries_of(pairs))
    plain.sync()
    split.sync()
    assert change_log_files(base / "plain") == change_log_files(base / "split")
    assert read_all_changes(split) == read_all_changes(plain)
    assert ShapeLog.open(base / "split", chunk_bytes).latest_offset == plain.latest_offset


@pytest.mark.parametrize("make", [list, entries_of])
@pytest.mark.parametrize(
    "ops", [[2, 2], [4, 2], [-1], [0, -3], [1 << 64], [0, 1 << 64], [3, 1 << 64, 2]]
)
def test_bad_ops_are_refused(tmp_path: Path, make: object, ops: list[int]) -> None:
    log = ShapeLog.create(tmp_path / "shape", 100)
    pairs = [(op, row(i)) for i, op in enumerate(ops)]
    with pytest.raises(ValueError):
        log.append_transaction(10, make(pairs))  # type: ignore[operator]
    assert log.latest_offset == SNAPSHOT_END
    log.append_transaction(10, [(0, row(0))])
    assert read_all_changes(log) == [row(0)]


def test_deferred_meta_is_installed_by_sync(tmp_path: Path) -> None:
    log = ShapeLog.create(tmp_path / "shape", 100)
    log.write_meta({"v": 1})
    log.write_meta({"v": 2}, defer=True)
    assert log.dirty
    assert log.read_meta() == {"v": 1}
    assert ShapeLog.open(tmp_path / "shape", 100).read_meta() == {"v": 1}  # as after a crash
    log.sync()
    assert not log.dirty
    assert log.read_meta() == {"v": 2}
    assert not (tmp_path / "shape" / "meta.json.tmp").exists()


def test_a_direct_meta_write_replaces_a_deferred_one(tmp_path: Path) -> None:
    log = ShapeLog.create(tmp_path / "shape", 100)
    log.write_meta({"v": 1}, defer=True)
    log.write_meta({"v": 2})
    assert not log.dirty
    log.sync()
    assert log.read_meta() == {"v": 2}


@pytest.mark.parametrize("count", [1, storage.GROUP_SYNC_MIN, 3 * storage.GROUP_SYNC_MIN])
def test_group_sync(tmp_path: Path, count: int) -> None:
    logs = [ShapeLog.create(tmp_path / f"s{i}", 64) for i in range(count)]
    clean = ShapeLog.create(tmp_path / "clean", 64)
    group = GroupSync(tmp_path, open_logs=2)
    try:
        fds_before = len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").exists() else 0
        for i, log in enumerate(logs):
            log.append_transaction(10, [(0, row(i, 40)), (2, row(i, 40))])  # closes a chunk
            if i % 2:
                log.write_meta({"i": i}, defer=True)
        assert all(log.dirty for log in logs)
        group.sync([*logs, clean])
        assert not any(log.dirty for log in logs)
        if fds_before:  # at most two logs keep their log and index descriptors
            assert len(os.listdir("/proc/self/fd")) <= fds_before + 4
        for i, log in enumerate(logs):
            assert log.read_meta() == ({"i": i} if i % 2 else {})
            reopened = ShapeLog.open(tmp_path / f"s{i}", 64)
            assert read_all_changes(reopened) == [row(i, 40), row(i, 40)]
        group.sync([])
    finally:
        group.close()
    logs[0].append_transaction(11, [(0, row(0))])
    group.sync(logs)  # closed: each log syncs itself
    assert not logs[0].dirty


def test_group_sync_reports_syncfs_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if log_flush._syncfs is None:
        pytest.skip("no syncfs")
    logs = [ShapeLog.create(tmp_path / f"s{i}", 64) for i in range(storage.GROUP_SYNC_MIN)]
    for log in logs:
        log.append_transaction(10, [(0, row(0))])
    group = GroupSync(tmp_path)
    monkeypatch.setattr(log_flush, "_syncfs", lambda fd: -1)
    try:
        with pytest.raises(OSError):
            group.sync(logs)
    finally:
        group.close()
    assert all(log.dirty for log in logs)  # not durable: the next flush tries again


def test_group_synced_logs_keep_their_descriptors(tmp_path: Path) -> None:
    logs = [ShapeLog.create(tmp_path / f"s{i}", 4096) for i in range(storage.GROUP_SYNC_MIN + 2)]
    group = GroupSync(tmp_path, open_logs=storage.GROUP_SYNC_MIN)
    try:
        for log in logs:
            log.append_transaction(10, [(0, row(0))])
        group.sync(logs)
        assert not any(log.dirty for log in logs)
        held = [log for log in logs if log.holds_descriptors]
        assert held == logs[: storage.GROUP_SYNC_MIN]  # the logs beyond the limit closed theirs
        for log in logs:
            log.append_transaction(11, [(0, row(1))])
        assert all(log.dirty for log in logs)
        group.sync(logs)
        assert not any(log.dirty for log in logs)
        for i in range(len(logs)):
            reopened = ShapeLog.open(tmp_path / f"s{i}", 4096)
            assert read_all_changes(reopened) == [row(0), row(1)]
    finally:
        group.close()
    assert not any(log.holds_descriptors for log in logs)


def test_logs_not_synced_for_a_while_make_room(tmp_path: Path) -> None:
    logs = [ShapeLog.create(tmp_path / f"s{i}", 4096) for i in range(2 * storage.GROUP_SYNC_MIN)]
    first, second = logs[: storage.GROUP_SYNC_MIN], logs[storage.GROUP_SYNC_MIN :]
    group = GroupSync(tmp_path, open_logs=storage.GROUP_SYNC_MIN, stale_after=0.0)
    try:
        for log in logs:
            log.append_transaction(10, [(0, row(0))])
        group.sync(first)
        group.sync(second)
        assert [log for log in logs if log.holds_descriptors] == second
    finally:
        group.close()


@pytest.mark.parametrize(
    ("soft", "expected"),
    [(1_024, 512), (20_000, 10_000), (65_536, 16_384), (100, 64)],
)
def test_synced_logs_keep_up_to_half_the_descriptor_limit(
    monkeypatch: pytest.MonkeyPatch, soft: int, expected: int
) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (soft, soft * 4))
    assert log_flush.default_open_logs() == expected


def test_an_unlimited_descriptor_limit_keeps_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    unlimited = resource.RLIM_INFINITY
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (unlimited, unlimited))
    assert log_flush.default_open_logs() == 16_384
