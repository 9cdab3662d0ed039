"""Tests of transactions appended to a shape log in pieces (``append_transaction(final=False)``)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shapes.offset import SNAPSHOT_END, LogOffset
from syncd import log_format, log_writer, storage
from syncd.storage import ShapeLog
from tests.syncd.logs import change_log_files, read_all_changes

END_LINE = b'{"headers":{"control":"snapshot-end","xmin":"1","xmax":"1","xip_list":[]}}'


def entry(i: int) -> bytes:
    return json.dumps({"i": i}, separators=(",", ":")).encode()


def new_log(directory: Path, chunk_bytes: int) -> ShapeLog:
    log = ShapeLog.create(directory, chunk_bytes)
    log.finish_snapshot(END_LINE)
    return log


def txn(first: int, count: int) -> list[tuple[int, bytes]]:
    return [(2 * k, entry(first + k)) for k in range(count)]


def last_flags(directory: Path) -> list[tuple[int, int, bool]]:
    """``(tx, op, last)`` of every record in ``log.bin``."""
    data = (directory / storage.LOG_FILE).read_bytes()
    out = []
    at = 0
    while at < len(data):
        tx, op, flags, size = log_format._RECORD.unpack_from(data, at)
        out.append((tx, op, bool(flags & 1)))
        at += log_format._HEADER_SIZE + size
    return out


def test_pieces_stay_invisible_until_the_last(tmp_path: Path) -> None:
    log = new_log(tmp_path / "s", 40)
    log.append_transaction(100, txn(0, 2))
    entries = txn(10, 9)
    log.append_transaction(200, entries[:4], final=False)
    assert log.open_transaction == 200
    assert log.latest_offset == LogOffset(100, 2)
    assert not log.has_entries_after(LogOffset(100, 2))
    assert read_all_changes(log) == [entry(0), entry(1)]
    log.append_transaction(200, entries[4:8], final=False)
    assert read_all_changes(log) == [entry(0), entry(1)]
    log.append_transaction(200, entries[8:])
    assert log.open_transaction is None
    assert log.latest_offset == LogOffset(200, 16)
    assert read_all_changes(log) == [entry(0), entry(1)] + [e for _, e in entries]
    # Only the transaction's final record carries the last-of-transaction flag.
    flags = last_flags(tmp_path / "s")
    assert [f for f in flags if f[2]] == [(100, 2, True), (200, 16, True)]


def test_pieces_give_the_same_files_as_one_append(tmp_path: Path) -> None:
    whole = new_log(tmp_path / "whole", 30)
    pieces = new_log(tmp_path / "pieces", 30)
    entries = txn(0, 25)
    for log in (whole, pieces):
        log.append_transaction(50, txn(100, 3))
    whole.append_transaction(60, entries)
    for start in range(0, 24, 5):
        pieces.append_transaction(60, entries[start : min(start + 5, 24)], final=False)
    pieces.append_transaction(60, entries[24:])
    for log in (whole, pieces):
        log.append_transaction(70, txn(200, 2))
        log.sync()
    assert change_log_files(tmp_path / "pieces") == change_log_files(tmp_path / "whole")


def test_open_transaction_rules(tmp_path: Path) -> None:
    log = new_log(tmp_path / "s", 40)
    log.append_transaction(100, txn(0, 3), final=False)
    with pytest.raises(ValueError, match="still open"):
        log.append_transaction(101, txn(0, 1))
    with pytest.raises(ValueError, match="increase"):
        log.append_transaction(100, [(4, entry(9))])  # op 4 was already written
    with pytest.raises(ValueError):
        log.append_transaction(100, [])
    log.append_transaction(100, [(6, entry(3))])
    assert log.latest_offset == LogOffset(100, 6)


def test_abort_transaction_drops_the_pieces(tmp_path: Path) -> None:
    log = new_log(tmp_path / "s", 20)
    log.append_transaction(100, txn(0, 2))
    log.sync()
    files = change_log_files(tmp_path / "s")
    log.append_transaction(200, txn(10, 6), final=False)
    log.abort_transaction()
    assert log.open_transaction is None
    assert change_log_files(tmp_path / "s") == files
    # The same transaction (as Postgres sends it again) or a later one can follow.
    log.append_transaction(200, txn(10, 6))
    assert read_all_changes(log) == [entry(i) for i in (0, 1, *range(10, 16))]


def test_failed_piece_abandons_the_whole_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = new_log(tmp_path / "s", 20)
    log.append_transaction(100, txn(0, 1))
    log.append_transaction(200, txn(10, 3), final=False)

    def fail(*_args: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(log_writer, "_pwritev_all", fail)
    with pytest.raises(OSError, match="space"):
        log.append_transaction(200, [(6, entry(13))])
    monkeypatch.undo()
    assert log.open_transaction is None
    assert log.latest_offset == LogOffset(100, 0)
    log.append_transaction(200, txn(10, 4))
    log.sync()
    assert read_all_changes(ShapeLog.open(tmp_path / "s", 20)) == [
        entry(i) for i in (0, 10, 11, 12, 13)
    ]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunk_bytes=st.integers(1, 120),
    before=st.integers(0, 4),
    size=st.integers(1, 40),
    piece=st.integers(1, 10),
    written=st.integers(0, 40),
    cut=st.integers(0, 60),
)
def test_recovery_drops_an_unfinished_transaction(
    chunk_bytes: int, before: int, size: int, piece: int, written: int, cut: int
) -> None:
    """A crash before the final piece: reopening keeps exactly the earlier transactions, and
    replaying the transaction gives the files of a writer that never crashed."""
    earlier = [(10 + k, txn(100 * k, 1 + k % 3)) for k in range(before)]
    big = txn(10_000, size)
    written = min(written, size - 1)
    with tempfile.TemporaryDirectory() as tmp:
        reference = new_log(Path(tmp) / "reference", chunk_bytes)
        crashed = new_log(Path(tmp) / "crashed", chunk_bytes)
        for log in (reference, crashed):
            for tx, entries in earlier:
                log.append_transaction(tx, entries)
        reference.append_transaction(99, big)
        reference.sync()
        for start in range(0, written, piece):
            crashed.append_transaction(99, big[start : min(start + piece, written)], final=False)
        crashed.sync()
        log_path = Path(tmp) / "crashed" / storage.LOG_FILE
        # The crash may also have cut the log anywhere in the unfinished transaction.
        committed = sum(log_format._HEADER_SIZE + len(e) for _, es in earlier for _, e in es)
        with open(log_path, "r+b") as f:
            f.truncate(max(committed, log_path.stat().st_size - cut))

        recovered = ShapeLog.open(Path(tmp) / "crashed", chunk_bytes)
        assert recovered.latest_offset == (
            LogOffset(earlier[-1][0], earlier[-1][1][-1][0]) if earlier else SNAPSHOT_END
        )
        assert log_path.stat().st_size == committed
        assert read_all_changes(recovered) == [e for _, es in earlier for _, e in es]
        for start in range(0, size - 1, piece):
            recovered.append_transaction(99, big[start : min(start + piece, size - 1)], final=False)
        recovered.append_transaction(99, big[size - 1 :])
        recovered.sync()
        assert change_log_files(Path(tmp) / "crashed") == change_log_files(Path(tmp) / "reference")
        assert read_all_changes(recovered) == read_all_changes(reference)
