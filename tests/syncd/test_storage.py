"""Tests of ``syncd.storage``: chunking, offset semantics, recovery after a crash, metadata."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shapes.offset import BEFORE_ALL, INF, SNAPSHOT_END, LogOffset
from syncd import log_format, storage
from syncd.log_files import REMOVED_SUFFIX, remove_tree_soon
from syncd.storage import ShapeLog, SnapshotIncomplete, StorageError
from tests.syncd.logs import change_log_files, read_all_changes

END_LINE = b'{"headers":{"control":"snapshot-end","xmin":"1","xmax":"1","xip_list":[]}}'

Tx = tuple[int, list[tuple[int, bytes]]]


def row(i: int) -> bytes:
    """A 7-byte JSON line for i < 10 (8 bytes with its newline)."""
    line = json.dumps({"i": i}, separators=(",", ":")).encode()
    assert len(line) == 7 or i >= 10
    return line


def off(tx: int, op: int) -> LogOffset:
    return LogOffset(tx, op)


def make_log(tmp_path: Path, chunk_bytes: int, rows: Sequence[bytes] = ()) -> ShapeLog:
    log = ShapeLog.create(tmp_path / "shape", chunk_bytes)
    log.append_snapshot_rows(rows)
    log.finish_snapshot(END_LINE)
    return log


# ---------------------------------------------------------------------- snapshot


def test_snapshot_chunk_boundaries(tmp_path: Path) -> None:
    # 8 bytes per row: the third row reaches 24 >= 20 and closes the chunk.
    log = make_log(tmp_path, 20, [row(i) for i in range(7)])
    assert log.snapshot_complete
    assert log.snapshot_chunk_count == 3
    assert log.read(BEFORE_ALL) == ([row(0), row(1), row(2)], off(0, 0))
    assert log.read(off(0, 0)) == ([row(3), row(4), row(5)], off(0, 1))
    assert log.read(off(0, 1)) == ([row(6), END_LINE], off(0, 2))
    # Past the last snapshot chunk with no changes: nothing, and the snapshot's end.
    assert log.read(off(0, 2)) == ([], SNAPSHOT_END)
    assert log.read(off(0, 7)) == ([], SNAPSHOT_END)
    assert log.read(SNAPSHOT_END) == ([], SNAPSHOT_END)


def test_snapshot_boundary_counts_the_newline(tmp_path: Path) -> None:
    # Two rows of 8 bytes reach exactly 16: boundary (reaching counts, not only exceeding).
    log = make_log(tmp_path, 16, [row(i) for i in range(3)])
    assert log.read(BEFORE_ALL) == ([row(0), row(1)], off(0, 0))
    assert log.read(off(0, 0)) == ([row(2), END_LINE], off(0, 1))
    # 15 bytes: still two rows per chunk; 17: three.
    log15 = ShapeLog.create(tmp_path / "s15", 15)
    log15.append_snapshot_rows([row(i) for i in range(3)])
    log15.finish_snapshot(END_LINE)
    assert log15.read(BEFORE_ALL)[0] == [row(0), row(1)]
    log17 = ShapeLog.create(tmp_path / "s17", 17)
    log17.append_snapshot_rows([row(i) for i in range(3)])
    log17.finish_snapshot(END_LINE)
    assert log17.read(BEFORE_ALL) == ([row(0), row(1), row(2)], off(0, 0))
    assert log17.read(off(0, 0)) == ([END_LINE], off(0, 1))


def test_snapshot_end_alone_in_its_own_chunk(tmp_path: Path) -> None:
    log = make_log(tmp_path, 20, [row(i) for i in range(6)])
    assert log.snapshot_chunk_count == 3
    assert log.read(off(0, 0)) == ([row(3), row(4), row(5)], off(0, 1))
    assert log.read(off(0, 1)) == ([END_LINE], off(0, 2))


def test_zero_row_snapshot(tmp_path: Path) -> None:
    log = make_log(tmp_path, 20)
    assert log.snapshot_chunk_count == 1
    assert log.read(BEFORE_ALL) == ([END_LINE], off(0, 0))
    assert log.read(off(0, 0)) == ([], SNAPSHOT_END)
    reopened = ShapeLog.open(tmp_path / "shape", 20)
    assert reopened.snapshot_complete
    assert reopened.read(BEFORE_ALL) == ([END_LINE], off(0, 0))


def test_snapshot_rows_split_over_calls_chunk_the_same(tmp_path: Path) -> None:
    rows = [row(i) for i in range(8)]
    whole = make_log(tmp_path / "a", 20, rows)
    split = ShapeLog.create(tmp_path / "b" / "shape", 20)
    for batch in ([rows[0]], rows[1:5], [], rows[5:]):
        split.append_snapshot_rows(batch)
    split.finish_snapshot(END_LINE)
    offsets = [BEFORE_ALL] + [off(0, k) for k in range(4)]
    assert [split.read(o) for o in offsets] == [whole.read(o) for o in offsets]


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sizes=st.lists(st.integers(0, 60), max_size=40),
    cuts=st.lists(st.integers(0, 40), max_size=6),
    chunk_bytes=st.integers(1, 120),
)
def test_snapshot_lines_in_blocks_chunk_as_rows_do(
    tmp_path: Path, sizes: list[int], cuts: list[int], chunk_bytes: int
) -> None:
    lines = [json.dumps({"i": i, "pad": "x" * size}).encode() for i, size in enumerate(sizes)]
    with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
        by_row = ShapeLog.create(Path(tmp) / "rows", chunk_bytes)
        by_row.append_snapshot_rows(lines)
        by_block = ShapeLog.create(Path(tmp) / "blocks", chunk_bytes)
        bounds = [0, *sorted(min(c, len(lines)) for c in cuts), len(lines)]
        for start, end in zip(bounds, bounds[1:], strict=False):
            by_block.append_snapshot_lines(b"".join(line + b"\n" for line in lines[start:end]))
        assert by_block.snapshot_chunks_closed == by_row.snapshot_chunks_closed
        for log in (by_row, by_block):
            log.finish_snapshot(END_LINE)
        assert by_block.snapshot_chunk_count == by_row.snapshot_chunk_count
        offsets = [BEFORE_ALL] + [off(0, k) for k in range(by_row.snapshot_chunk_count)]
        for offset in offsets:
            assert by_block.read(offset) == by_row.read(offset)
            plan = by_block.plan_read(offset)
            if plan.snapshot_chunk is not None:
                joined, position, done = by_block.read_snapshot_joined(
                    plan.snapshot_chunk, 0, 1 << 20
                )
                assert done and joined == [b",".join(by_row.read(offset)[0])]


def test_snapshot_lines_must_end_in_a_newline(tmp_path: Path) -> None:
    log = ShapeLog.create(tmp_path / "shape", 20)
    log.append_snapshot_lines(b"")
    with pytest.raises(ValueError):
        log.append_snapshot_lines(row(0) + b"\n" + row(1))
    with pytest.raises(RuntimeError):  # broken: it can only be discarded
        log.append_snapshot_lines(row(2) + b"\n")


def test_snapshot_chunks_are_served_while_the_snapshot_is_written(tmp_path: Path) -> None:
    log = ShapeLog.create(tmp_path / "shape", 20)
    with pytest.raises(SnapshotIncomplete):
        log.read(BEFORE_ALL)
    log.append_snapshot_rows([row(i) for i in range(4)])
    assert log.snapshot_chunk_count == 2
    assert not log.snapshot_complete
    assert log.read(BEFORE_ALL) == ([row(0), row(1), row(2)], off(0, 0))
    with pytest.raises(SnapshotIncomplete):
        log.read(off(0, 0))
    log.finish_snapshot(END_LINE)
    assert log.read(off(0, 0)) == ([row(3), END_LINE], off(0, 1))


def test_snapshot_survives_reopen(tmp_path: Path) -> None:
    make_log(tmp_path, 20, [row(i) for i in range(7)])
    log = ShapeLog.open(tmp_path / "shape", 20)
    assert log.snapshot_complete
    assert log.snapshot_chunk_count == 3
    assert log.read(off(0, 1)) == ([row(6), END_LINE], off(0, 2))
    with pytest.raises(RuntimeError):
        log.append_snapshot_rows([row(0)])
    with pytest.raises(RuntimeError):
        log.finish_snapshot(END_LINE)


def test_interrupted_snapshot_is_reported_incomplete(tmp_path: Path) -> None:
    log = ShapeLog.create(tmp_path / "shape", 20)
    log.append_snapshot_rows([row(i) for i in range(5)])
    log.append_transaction(10, [(0, row(1))])
    log.sync()
    reopened = ShapeLog.open(tmp_path / "shape", 20)
    assert not reopened.snapshot_complete
    # the closed chunk; the open one's rows were held in memory, never written
    assert reopened.snapshot_chunk_count == 1
    with pytest.raises(RuntimeError):
        reopened.append_snapshot_rows([row(6)])
    with pytest.raises(SnapshotIncomplete):
        reopened.read(BEFORE_ALL)


def test_snapshot_line_with_newline_is_rejected(tmp_path: Path) -> None:
    log = ShapeLog.create(tmp_path / "shape", 20)
    with pytest.raises(ValueError):
        log.finish_snapshot(b"{\n}")
    with pytest.raises(ValueError):
        log.append_snapshot_rows([row(0), row(1), row(2), row(3), b'{"a":\n1}'])
    # The snapshot is now broken: it can only be discarded.
    with pytest.raises(RuntimeError):
        log.append_snapshot_rows([row(4)])
    with pytest.raises(RuntimeError):
        log.finish_snapshot(END_LINE)


# ---------------------------------------------------------------------- change log


def test_log_chunk_boundaries_and_offsets(tmp_path: Path) -> None:
    log = make_log(tmp_path, 20)
    assert log.latest_offset == SNAPSHOT_END
    # 7 JSON bytes per entry; the third reaches 21 >= 20: boundary inside transaction 100.
    log.append_transaction(100, [(0, row(0)), (2, row(1)), (4, row(2)), (6, row(3)), (8, row(4))])
    log.append_transaction(200, [(0, row(5)), (2, row(6))])
    assert log.latest_offset == off(200, 2)

    # 0_k past the last snapshot chunk and 0_inf start the change log.
    first = ([row(0), row(1), row(2)], off(100, 4))
    assert log.read(off(0, 0)) == first
    assert log.read(off(0, 5)) == first
    assert log.read(SNAPSHOT_END) == first
    # The chunk that ends mid-transaction is followed by the rest of it.
    assert log.read(off(100, 4)) == ([row(3), row(4), row(5)], off(200, 0))
    # The last chunk is open: served up to the latest entry.
    assert log.read(off(200, 0)) == ([row(6)], off(200, 2))
    assert log.read(off(200, 2)) == ([], off(200, 2))

    # Strictly after, up to the end of the chunk holding the offset.
    assert log.read(off(100, 0)) == ([row(1), row(2)], off(100, 4))
    assert log.read(off(100, 2)) == ([row(2)], off(100, 4))
    assert log.read(off(100, 5)) == ([row(3), row(4), row(5)], off(200, 0))
    assert log.read(off(150, 0)) == ([row(5)], off(200, 0))
    # Beyond the latest offset: nothing, the request offset comes back.
    assert log.read(off(300, 0)) == ([], off(300, 0))

    # The open chunk grows as transactions arrive and closes once full.
    log.append_transaction(300, [(0, row(7))])
    assert log.read(off(200, 0)) == ([row(6), row(7)], off(300, 0))
    log.append_transaction(400, [(0, row(8)), (2, row(9))])
    assert log.read(off(200, 0)) == ([row(6), row(7), row(8)], off(400, 0))
    assert log.read(off(400, 0)) == ([row(9)], off(400, 2))


def test_the_chunk_index_is_made_when_the_first_chunk_closes(tmp_path: Path) -> None:
    directory = tmp_path / "shape"
    log = make_log(tmp_path, 20)
    index = directory / storage.INDEX_FILE
    log.append_transaction(100, [(0, row(0)), (2, row(1))])  # 14 bytes: the chunk stays open
    log.sync()
    assert not index.exists()
    # A restart neither needs it nor makes it.
    reopened = ShapeLog.open(directory, 20)
    assert not index.exists()
    assert reopened.read(SNAPSHOT_END) == ([row(0), row(1)], off(100, 2))
    reopened.append_transaction(200, [(0, row(2)), (2, row(3))])  # 21 bytes: the chunk closes
    reopened.sync()
    assert (
        change_log_files(directory)[1]
        == log_format._Boundary(
            off(200, 0), 3 * (log_format._HEADER_SIZE + 7), 2 * (log_format._HEADER_SIZE + 7), False
        ).encode()
    )
    assert reopened.read(SNAPSHOT_END) == ([row(0), row(1), row(2)], off(200, 0))
    assert ShapeLog.open(directory, 20).read(off(200, 0)) == ([row(3)], off(200, 2))


def test_sse_resume_offset_replays_the_rest_of_the_transaction(tmp_path: Path) -> None:
    log = make_log(tmp_path, 10_000)
    log.append_transaction(100, [(0, row(0))])
    log.append_transaction(200, [(0, row(1)), (2, row(2)), (3, row(3))])
    assert log.read(off(200, 0)) == ([row(2), row(3)], off(200, 3))
    assert log.read(off(100, 0)) == ([row(1), row(2), row(3)], off(200, 3))
    # A transaction whose first op is not 0 is entirely after <tx>_0.
    log.append_transaction(300, [(4, row(4)), (6, row(5))])
    assert log.read(off(300, 0)) == ([row(4), row(5)], off(300, 6))


def test_has_entries_after_and_latest(tmp_path: Path) -> None:
    log = make_log(tmp_path, 20, [row(1)])
    assert not log.has_entries_after(BEFORE_ALL)
    assert not log.has_entries_after(SNAPSHOT_END)
    log.append_transaction(100, [(0, row(0)), (2, row(1))])
    assert log.has_entries_after(BEFORE_ALL)
    assert log.has_entries_after(off(0, 3))
    assert log.has_entries_after(SNAPSHOT_END)
    assert log.has_entries_after(off(100, 0))
    assert not log.has_entries_after(off(100, 2))
    assert not log.has_entries_after(off(101, 0))
    assert log.latest_offset == off(100, 2)


@pytest.mark.parametrize(
    ("tx", "entries"),
    [
        (100, []),
        (50, [(0, b"{}")]),
        (100, [(0, b"{}")]),
        (101, [(2, b"{}"), (2, b"{}")]),
        (101, [(2, b"{}"), (0, b"{}")]),
        (101, [(-1, b"{}")]),
        (101, [(INF, b"{}")]),
        (1 << 64, [(0, b"{}")]),
    ],
)
def test_append_transaction_rejects_bad_input(
    tmp_path: Path, tx: int, entries: list[tuple[int, bytes]]
) -> None:
    log = make_log(tmp_path, 20)
    log.append_transaction(100, [(0, b"{}")])
    with pytest.raises(ValueError):
        log.append_transaction(tx, entries)
    # Nothing was written: the log is unchanged and accepts the next valid transaction.
    assert log.latest_offset == off(100, 0)
    log.append_transaction(101, [(0, b'{"a":1}')])
    assert read_all_changes(log) == [b"{}", b'{"a":1}']


def test_failed_write_leaves_the_log_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = make_log(tmp_path, 20)
    assert log.directory == tmp_path / "shape"
    assert log.chunk_bytes == 20
    log.append_transaction(100, [(0, row(0))])
    real_pwrite = os.pwrite

    def short_then_fail(fd: int, data: bytes, at: int) -> int:
        real_pwrite(fd, bytes(data)[:5], at)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwrite", short_then_fail)
    with pytest.raises(OSError, match="space"):
        log.append_transaction(200, [(0, row(1)), (2, row(2)), (4, row(3))])
    monkeypatch.undo()
    assert log.latest_offset == off(100, 0)
    assert read_all_changes(log) == [row(0)]
    log.append_transaction(200, [(0, row(1)), (2, row(2)), (4, row(3))])
    log.sync()
    reopened = ShapeLog.open(tmp_path / "shape", 20)
    assert read_all_changes(reopened) == [row(0), row(1), row(2), row(3)]
    assert reopened.read(SNAPSHOT_END) == ([row(0), row(1), row(2)], off(200, 2))


def test_first_transaction_must_have_positive_tx(tmp_path: Path) -> None:
    log = make_log(tmp_path, 20)
    with pytest.raises(ValueError):
        log.append_transaction(0, [(0, b"{}")])


def test_sync_dirty_and_file_descriptors(tmp_path: Path) -> None:
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.exists():
        pytest.skip("needs /proc")
    log = make_log(tmp_path, 20)
    before = len(os.listdir(fd_dir))
    assert not log.dirty
    log.sync()  # nothing to do
    log.append_transaction(100, [(0, row(0))])
    assert log.dirty
    log.append_transaction(101, [(0, row(1)), (2, row(2)), (4, row(3))])  # closes a chunk
    log.read(SNAPSHOT_END)
    assert len(os.listdir(fd_dir)) <= before + 2
    log.sync()
    assert not log.dirty
    assert len(os.listdir(fd_dir)) == before


def test_delete_removes_the_directory(tmp_path: Path) -> None:
    log = make_log(tmp_path, 20, [row(0)])
    log.write_meta({"a": 1})
    log.append_transaction(100, [(0, row(0))])
    log.delete()
    assert not (tmp_path / "shape").exists()  # its name is free at once
    deadline = time.monotonic() + 10
    while list(tmp_path.iterdir()):  # and its files go on a background thread
        assert time.monotonic() < deadline, list(tmp_path.iterdir())
        time.sleep(0.01)
    assert not (tmp_path / "shape").exists()


def test_a_removal_that_cannot_rename_removes_in_place(tmp_path: Path) -> None:
    blocked = tmp_path / "shape"
    blocked.mkdir()
    (blocked / "log.bin").write_bytes(b"x")
    (tmp_path / ("shape" + REMOVED_SUFFIX)).mkdir()  # the aside name is taken (not empty)
    (tmp_path / ("shape" + REMOVED_SUFFIX) / "f").write_bytes(b"y")
    remove_tree_soon(blocked)
    assert not blocked.exists()


def test_create_refuses_an_existing_log_and_open_a_missing_one(tmp_path: Path) -> None:
    make_log(tmp_path, 20)
    with pytest.raises(FileExistsError):
        ShapeLog.create(tmp_path / "shape", 20)
    with pytest.raises(StorageError):
        ShapeLog.open(tmp_path / "missing", 20)
    (tmp_path / "shape" / storage.INDEX_FILE).write_bytes(b"SYNCDIX\x7f")
    with pytest.raises(StorageError, match="version"):
        ShapeLog.open(tmp_path / "shape", 20)
    with pytest.raises(ValueError):
        ShapeLog.create(tmp_path / "other", 0)


def test_reads_in_a_thread_see_only_whole_transactions(tmp_path: Path) -> None:
    log = make_log(tmp_path, 300)
    expected: list[bytes] = []
    tx_ends: set[LogOffset] = set()
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                offset = SNAPSHOT_END
                seen: list[bytes] = []
                while True:
                    lines, end = log.read(offset)
                    if not lines:
                        break
                    seen += lines
                    offset = end
                assert seen == expected[: len(seen)]
                assert offset == SNAPSHOT_END or offset in tx_ends
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for tx in range(1, 400):
            entries = [(op, json.dumps({"tx": tx, "op": op}).encode()) for op in range(tx % 7 + 1)]
            expected.extend(e for _, e in entries)
            tx_ends.add(off(tx, entries[-1][0]))
            log.append_transaction(tx, entries)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert read_all_changes(log) == expected


def test_large_chunk_read(tmp_path: Path) -> None:
    log = make_log(tmp_path, 1 << 20)
    line = json.dumps({"value": "x" * 130}).encode()
    for tx in range(1, 101):
        log.append_transaction(tx, [(op, line) for op in range(0, 200, 2)])
    lines, end = log.read(SNAPSHOT_END)
    assert len(lines) * len(line) >= 1 << 20
    last = len(lines) - 1
    assert end == off(last // 100 + 1, last % 100 * 2)
    assert read_all_changes(log) == [line] * 10_000


# ---------------------------------------------------------------------- model-based reads


class Entry(NamedTuple):
    offset: LogOffset
    json: bytes
    last: bool


def flatten(txs: Sequence[Tx]) -> list[Entry]:
    return [
        Entry(off(tx, op), data, i == len(entries) - 1)
        for tx, entries in txs
        for i, (op, data) in enumerate(entries)
    ]


def model_boundaries(entries: Sequence[Entry], chunk_bytes: int) -> list[LogOffset]:
    ends: list[LogOffset] = []
    acc = 0
    for e in entries:
        acc += len(e.json)
        if acc >= chunk_bytes:
            ends.append(e.offset)
            acc = 0
    return ends


def model_read(
    entries: Sequence[Entry], ends: Sequence[LogOffset], offset: LogOffset
) -> tuple[list[bytes], LogOffset]:
    """What a read from a change-log offset (0_inf or real) gives (``docs/protocol.md``)."""
    after = [e for e in entries if e.offset > offset]
    if not after:
        return [], offset
    chunk_end = next((end for end in ends if end > offset), after[-1].offset)
    return [e.json for e in after if e.offset <= chunk_end], chunk_end


@st.composite
def histories(draw: st.DrawFn) -> list[Tx]:
    txs: list[Tx] = []
    lsn = 0
    for _ in range(draw(st.integers(0, 14))):
        lsn += draw(st.integers(1, 1 << 40))
        ops = sorted(draw(st.sets(st.integers(0, 40), min_size=1, max_size=6)))
        entries = []
        for op in ops:
            pad = "x" * draw(st.integers(0, 30))
            # Ends in a number, so bytes of garbage hardly ever complete a cut-off line.
            entries.append((op, json.dumps({"pad": pad, "tx": lsn, "op": op}).encode()))
        txs.append((lsn, entries))
    return txs


def interesting_offsets(entries: Sequence[Entry]) -> list[LogOffset]:
    offsets = [SNAPSHOT_END]
    for e in entries:
        tx, op = e.offset
        offsets += [e.offset, off(tx, 0), off(tx - 1, INF), off(tx, op + 1)]
    if entries:
        offsets.append(off(entries[-1].offset.tx + 1, 0))
    return offsets


@settings(max_examples=150, deadline=None)
@given(txs=histories(), chunk_bytes=st.integers(1, 150))
def test_reads_match_the_protocol_model(txs: list[Tx], chunk_bytes: int) -> None:
    entries = flatten(txs)
    ends = model_boundaries(entries, chunk_bytes)
    with tempfile.TemporaryDirectory() as tmp:
        log = make_log(Path(tmp), chunk_bytes)
        for tx, tx_entries in txs:
            log.append_transaction(tx, tx_entries)
        reopened = ShapeLog.open(Path(tmp) / "shape", chunk_bytes)
        for offset in interesting_offsets(entries):
            expected = model_read(entries, ends, offset)
            assert log.read(offset) == expected, offset
            assert reopened.read(offset) == expected, offset
        assert log.latest_offset == reopened.latest_offset
        assert log.latest_offset == (entries[-1].offset if entries else SNAPSHOT_END)
        log.sync()


# ---------------------------------------------------------------------- crash recovery


def write_history(directory: Path, chunk_bytes: int, txs: Sequence[Tx]) -> ShapeLog:
    log = ShapeLog.create(directory, chunk_bytes)
    log.append_snapshot_rows([row(i) for i in range(3)])
    log.finish_snapshot(END_LINE)
    for tx, entries in txs:
        log.append_transaction(tx, entries)
    log.sync()
    return log


garbage = st.one_of(
    st.just(b""),
    st.binary(min_size=1, max_size=100),
    st.integers(1, 100).map(lambda n: bytes(n)),  # zero-filled blocks, as after an OS crash
)


def damage(path: Path, data: st.DataObject, label: str, durable: int = 0) -> None:
    """Cut ``path`` at a random position and append random garbage, as a crash might.

    The first ``durable`` bytes were fsynced before anything else and stay intact.
    """
    size = path.stat().st_size
    cut = data.draw(st.one_of(st.just(size), st.integers(durable, size)), label=f"{label} cut")
    extra = data.draw(garbage, label=f"{label} garbage")
    with open(path, "r+b") as f:
        f.truncate(cut)
        f.seek(cut)
        f.write(extra)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(txs=histories(), chunk_bytes=st.integers(1, 150), data=st.data())
def test_recovery_reproduces_the_uninterrupted_log(
    txs: list[Tx], chunk_bytes: int, data: st.DataObject
) -> None:
    entries = flatten(txs)
    with tempfile.TemporaryDirectory() as tmp:
        reference = write_history(Path(tmp) / "reference", chunk_bytes, txs)
        crashed_dir = Path(tmp) / "crashed"
        write_history(crashed_dir, chunk_bytes, txs)
        log_size = (crashed_dir / storage.LOG_FILE).stat().st_size
        damage(crashed_dir / storage.LOG_FILE, data, "log")
        # The index (made when the first chunk closes) writes its header in the block of its
        # first records, and a crash keeps a block's first sector whole: its 8 bytes survive
        # whatever else is cut or garbled. (A lost or zeroed index: the tests below.)
        if (crashed_dir / storage.INDEX_FILE).exists():
            damage(crashed_dir / storage.INDEX_FILE, data, "index", durable=8)
        log_intact = (crashed_dir / storage.LOG_FILE).read_bytes()[:log_size] == (
            Path(tmp) / "reference" / storage.LOG_FILE
        ).read_bytes()

        recovered = ShapeLog.open(crashed_dir, chunk_bytes)

        # What survives is a prefix of whole transactions...
        latest = recovered.latest_offset
        kept = [(tx, es) for tx, es in txs if tx <= latest.tx]
        assert latest == (off(kept[-1][0], kept[-1][1][-1][0]) if kept else SNAPSHOT_END)
        assert read_all_changes(recovered) == [e.json for e in flatten(kept)]
        # ...and all of it when the log itself was not cut.
        if log_intact:
            assert latest == reference.latest_offset

        # Postgres replays the rest; the result equals a log that never crashed, byte for byte.
        for tx, tx_entries in txs[len(kept) :]:
            recovered.append_transaction(tx, tx_entries)
        recovered.sync()
        for offset in interesting_offsets(entries):
            assert recovered.read(offset) == reference.read(offset), offset
        assert change_log_files(crashed_dir) == change_log_files(Path(tmp) / "reference")
        assert recovered.read(BEFORE_ALL) == reference.read(BEFORE_ALL)

        # A clean reopen changes nothing.
        again = ShapeLog.open(crashed_dir, chunk_bytes)
        assert again.latest_offset == reference.latest_offset
        assert read_all_changes(again) == [e.json for e in entries]


def test_recovery_cuts_a_half_written_transaction(tmp_path: Path) -> None:
    log = make_log(tmp_path, 20)
    log.append_transaction(100, [(0, row(0)), (2, row(1))])
    log.append_transaction(200, [(0, row(2)), (2, row(3)), (4, row(4)), (6, row(5))])
    log.sync()
    log_path = tmp_path / "shape" / storage.LOG_FILE
    index_path = tmp_path / "shape" / storage.INDEX_FILE
    index_before = index_path.read_bytes()
    # Boundaries after 200_0 and 200_6. Drop the last record of transaction 200: its other
    # records and the boundary after 200_0 must go too.
    with open(log_path, "r+b") as f:
        f.truncate(log_path.stat().st_size - 28)
    recovered = ShapeLog.open(tmp_path / "shape", 20)
    assert recovered.latest_offset == off(100, 2)
    assert read_all_changes(recovered) == [row(0), row(1)]
    assert log_path.stat().st_size == 2 * 28
    assert index_path.stat().st_size < len(index_before)
    recovered.append_transaction(200, [(0, row(2)), (2, row(3)), (4, row(4)), (6, row(5))])
    recovered.sync()
    assert index_path.read_bytes() == index_before
    assert recovered.read(off(100, 2)) == ([row(2)], off(200, 0))


@pytest.mark.parametrize("left", [None, b"", b"SYN", b"\x00" * 50])
def test_recovery_restores_a_lost_index(tmp_path: Path, left: bytes | None) -> None:
    log = make_log(tmp_path, 20)
    for tx in range(1, 30):
        log.append_transaction(tx, [(0, row(tx % 10)), (2, row(tx % 10))])
    log.sync()
    index_path = tmp_path / "shape" / storage.INDEX_FILE
    index_before = index_path.read_bytes()
    if left is None:  # its name never reached the disk
        index_path.unlink()
    else:
        index_path.write_bytes(left)
    recovered = ShapeLog.open(tmp_path / "shape", 20)
    assert index_path.read_bytes() == index_before
    assert recovered.latest_offset == off(29, 2)


# ---------------------------------------------------------------------- metadata


def test_meta_roundtrip(tmp_path: Path) -> None:
    log = make_log(tmp_path, 20)
    assert log.read_meta() == {}
    meta = {"definition": {"table": "items"}, "xmin": "755", "xip": [1, 2]}
    log.write_meta(meta)
    assert log.read_meta() == meta
    assert ShapeLog.open(tmp_path / "shape", 20).read_meta() == meta
    assert sorted(os.listdir(tmp_path / "shape")).count("meta.json.tmp") == 0


def test_meta_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = make_log(tmp_path, 20)
    log.write_meta({"version": 1})

    def crash(*args: object) -> None:
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        log.write_meta({"version": 2, "big": "x" * 100_000})
    monkeypatch.undo()
    # The old metadata is intact; the half-done temporary file is ignored and replaced later.
    assert ShapeLog.open(tmp_path / "shape", 20).read_meta() == {"version": 1}
    log.write_meta({"version": 3})
    assert log.read_meta() == {"version": 3}
    assert not (tmp_path / "shape" / "meta.json.tmp").exists()


def test_reads_near_the_tail_start_at_recent_transactions(tmp_path: Path) -> None:
    """Remembered transaction starts only shorten the scan: every read answers the same."""
    log = ShapeLog.create(tmp_path / "tail", 1 << 20)
    log.finish_snapshot(b'{"headers":{"control":"snapshot-end"}}')
    for tx in range(1, 600):
        ops = list(range(0, 2 * (tx % 4 + 1), 2))
        log.append_transaction(tx * 10, [(op, b'{"n":%d}' % (tx * 100 + op)) for op in ops])
    offsets = [
        LogOffset(tx * 10 + d, op) for tx in range(0, 600, 7) for d in (0, 5) for op in (0, 2, 9)
    ]
    remembered = [log.read(offset) for offset in offsets]
    log._reader.tx_starts = (0, [])  # as after a restart: scan from each chunk's start
    assert [log.read(offset) for offset in offsets] == remembered


def test_repeated_reads_at_the_tail_follow_new_commits(tmp_path: Path) -> None:
    log = make_log(tmp_path, 1 << 20)
    log.append_transaction(100, [(0, row(0))])
    first = log.read(off(100, 0))
    assert first == ([], off(100, 0))
    log.append_transaction(200, [(0, row(1)), (2, row(2))])
    woken = [log.read(off(100, 0)) for _ in range(3)]  # three live readers at the same offset
    assert woken == [([row(1), row(2)], off(200, 2))] * 3
    woken[0][0].append(b"mutated by one reader")
    assert log.read(off(100, 0)) == ([row(1), row(2)], off(200, 2))
    log.append_transaction(300, [(0, row(3))])
    assert log.read(off(100, 0)) == ([row(1), row(2), row(3)], off(300, 0))
    assert log.read(off(200, 2)) == ([row(3)], off(300, 0))
