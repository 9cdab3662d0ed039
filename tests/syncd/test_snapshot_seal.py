"""Sealing snapshots of many logs together (``syncd.snapshot_seal``): what a restart finds.

Each seal is checked the way a restart reads it: the log reopened from its directory has a
complete snapshot with every row, and ``meta.json`` holds the metadata given to the seal.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd import log_flush
from syncd.log_flush import GroupSync
from syncd.snapshot_seal import make_seals_durable, seal_snapshots, write_seals
from syncd.storage import ShapeLog, StorageError, snapshot_sealed

END_LINE = b'{"headers":{"control":"snapshot-end"}}'


def _with_rows(directory: Path, rows: int) -> ShapeLog:
    log = ShapeLog.create(directory, 256)
    log.append_snapshot_rows(b'{"row":%d,"pad":"%s"}' % (i, b"x" * 40) for i in range(rows))
    return log


def _reopened_rows(directory: Path) -> list[bytes]:
    log = ShapeLog.open(directory, 256)
    try:
        assert log.snapshot_complete
        lines: list[bytes] = []
        for k in range(log.snapshot_chunk_count):
            position, done = 0, False
            while not done:
                piece, position, done = log.read_snapshot_piece(k, position, 1 << 20)
                lines += piece
        return lines
    finally:
        log.close_descriptors()


@pytest.mark.parametrize("together", [False, True], ids=["each-alone", "one-syncfs"])
def test_a_sealed_batch_is_complete_after_reopening(tmp_path: Path, together: bool) -> None:
    if together and log_flush._syncfs is None:
        pytest.skip("no syncfs")
    logs = [_with_rows(tmp_path / f"s{i}", rows=i * 7) for i in range(10)]
    seals = [log.snapshot_seal(END_LINE, {"status": "ready", "n": i}) for i, log in enumerate(logs)]
    group = GroupSync(tmp_path, open_logs=0)
    try:
        seal_snapshots(seals, group.syncfs if together else None)
    finally:
        group.close()
    for i, log in enumerate(logs):
        assert log.snapshot_complete
        assert log.read_meta() == {"status": "ready", "n": i}
        expected = [b'{"row":%d,"pad":"%s"}' % (n, b"x" * 40) for n in range(i * 7)]
        assert _reopened_rows(log.directory) == [*expected, END_LINE]
        assert not list(log.directory.glob("*.tmp"))


def test_a_log_deleted_during_its_seal_is_dropped_alone(tmp_path: Path) -> None:
    logs = [_with_rows(tmp_path / f"s{i}", rows=5) for i in range(3)]
    seals = [log.snapshot_seal(END_LINE, {"status": "ready"}) for log in logs]
    logs[1].delete()  # as the event loop does for a shape removed while its seal is queued
    seal_snapshots(seals)
    assert [seal.dropped for seal in seals] == [False, True, False]
    assert not logs[1].directory.exists()
    for i in (0, 2):
        assert len(_reopened_rows(logs[i].directory)) == 6


def test_a_failed_syncfs_seals_nothing(tmp_path: Path) -> None:
    logs = [_with_rows(tmp_path / f"s{i}", rows=5) for i in range(8)]
    seals = [log.snapshot_seal(END_LINE, {"status": "ready"}) for log in logs]

    def failing() -> None:
        raise OSError(5, "Input/output error")

    with pytest.raises(OSError):
        seal_snapshots(seals, failing)
    for log in logs:
        assert not log.snapshot_complete
        assert log.read_meta() == {}  # a restart discards the shape
        with pytest.raises(RuntimeError):  # no rows may follow the end line
            log.append_snapshot_rows([b"{}"])


def test_a_seal_with_metadata_records_the_chunk_count_there(tmp_path: Path) -> None:
    log = _with_rows(tmp_path / "s", rows=20)  # several chunks of 256 bytes
    seal_snapshots([log.snapshot_seal(END_LINE, {"status": "ready"})])
    chunks = log.snapshot_chunk_count
    assert chunks > 1
    # No snapshot.done (and no index until a chunk of changes closes).
    assert sorted(p.name for p in log.directory.iterdir()) == [
        "log.bin",
        "meta.json",
        *(f"snapshot-{k:08d}.jsonl" for k in range(chunks)),
    ]
    assert log.read_meta() == {"status": "ready"}
    reopened = ShapeLog.open(log.directory, 256)
    assert reopened.snapshot_complete and reopened.snapshot_chunk_count == chunks
    # The caller's later writes keep the count, and may not use the log's key.
    reopened.write_meta({"status": "ready", "views": 2})
    with pytest.raises(ValueError, match="reserved"):
        reopened.write_meta({"log": 1})
    again = ShapeLog.open(log.directory, 256)
    assert again.snapshot_complete and again.snapshot_chunk_count == chunks
    assert again.read_meta() == {"status": "ready", "views": 2}
    assert len(_reopened_rows(log.directory)) == 21


def test_metadata_written_before_the_seal_leaves_the_snapshot_incomplete(tmp_path: Path) -> None:
    log = _with_rows(tmp_path / "s", rows=3)
    log.write_meta({"status": "creating"})
    reopened = ShapeLog.open(log.directory, 256)
    assert not reopened.snapshot_complete
    assert reopened.read_meta() == {"status": "creating"}


def test_a_malformed_count_in_the_metadata_is_refused(tmp_path: Path) -> None:
    log = _with_rows(tmp_path / "s", rows=3)
    seal_snapshots([log.snapshot_seal(END_LINE, {"status": "ready"})])
    (log.directory / "meta.json").write_text('{"status": "ready", "log": {"snapshot_chunks": 0}}')
    with pytest.raises(StorageError, match="malformed"):
        ShapeLog.open(log.directory, 256)


def test_a_watcher_sees_a_sealed_snapshot_either_way(tmp_path: Path) -> None:
    with_meta = _with_rows(tmp_path / "with-meta", rows=3)
    without = _with_rows(tmp_path / "without", rows=3)
    assert not snapshot_sealed(with_meta.directory) and not snapshot_sealed(without.directory)
    seal_snapshots([with_meta.snapshot_seal(END_LINE, {"status": "ready"})])
    without.finish_snapshot(END_LINE)  # snapshot.done, as stores written before meta held it
    assert snapshot_sealed(with_meta.directory) and snapshot_sealed(without.directory)
    assert not snapshot_sealed(tmp_path / "missing")


def test_a_small_snapshot_is_written_into_files_made_with_its_log(tmp_path: Path) -> None:
    # The seal's writes run on the event loop because they need no new file: the first chunk
    # and meta.json.tmp are made, empty, with the log.
    log = _with_rows(tmp_path / "s", rows=2)  # held in memory: written with the end line
    made = {p.name: p.stat().st_ino for p in log.directory.iterdir()}
    assert made.keys() == {"log.bin", "snapshot-00000000.jsonl", "meta.json.tmp"}
    assert all(p.stat().st_size == 0 for p in log.directory.iterdir())
    # Made but never sealed: a restart finds no metadata and an incomplete snapshot.
    unsealed = ShapeLog.open(log.directory, 256)
    assert unsealed.read_meta() == {} and not unsealed.snapshot_complete
    seals = [log.snapshot_seal(END_LINE, {"status": "ready"})]
    write_seals(seals)
    assert {p.name: p.stat().st_ino for p in log.directory.iterdir()} == made
    make_seals_durable(seals)
    assert sorted(p.name for p in log.directory.iterdir()) == [
        "log.bin",
        "meta.json",
        "snapshot-00000000.jsonl",
    ]
    assert (log.directory / "meta.json").stat().st_ino == made["meta.json.tmp"]
    assert log.read_meta() == {"status": "ready"}
    assert len(_reopened_rows(log.directory)) == 3  # two rows and the end line


def test_only_a_small_last_chunk_written_here_reads_on_the_event_loop(tmp_path: Path) -> None:
    small = _with_rows(tmp_path / "small", rows=2)
    large = ShapeLog.create(tmp_path / "large", 1 << 20)
    large.append_snapshot_rows(b'{"row":%d,"pad":"%s"}' % (i, b"x" * 200) for i in range(400))
    assert not small.snapshot_chunk_is_small(0)  # not sealed yet
    seal_snapshots([small.snapshot_seal(END_LINE, {"status": "ready"})])
    seal_snapshots([large.snapshot_seal(END_LINE, {"status": "ready"})])
    assert small.snapshot_chunk_is_small(0)
    assert large.snapshot_chunk_count == 1 and not large.snapshot_chunk_is_small(0)  # ~90 kB
    assert not ShapeLog.open(small.directory, 256).snapshot_chunk_is_small(0)  # read elsewhere
