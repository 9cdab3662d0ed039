"""Bounded reads of a shape log (``read_piece``, ``plan_read``, ``read_snapshot_piece``) agree
with the whole-chunk :meth:`ShapeLog.read`, whatever the entry sizes, chunk size and piece size."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shapes.offset import SNAPSHOT_END, LogOffset
from syncd.storage import ShapeLog
from tests.syncd.logs import read_all_changes

END_LINE = b'{"headers":{"control":"snapshot-end","xmin":"1","xmax":"1","xip_list":[]}}'

transactions = st.lists(st.lists(st.integers(0, 300), min_size=1, max_size=6), max_size=12)


def entry(i: int, size: int) -> bytes:
    return json.dumps({"i": i, "pad": "x" * size}, separators=(",", ":")).encode()


def build(directory: Path, chunk_bytes: int, sizes: list[list[int]]) -> list[LogOffset]:
    """A log of the given transactions (entry sizes); the offsets of its entries."""
    log = ShapeLog.create(directory, chunk_bytes)
    log.finish_snapshot(END_LINE)
    offsets = []
    n = 0
    for t, txn in enumerate(sizes):
        entries = []
        for op, size in enumerate(txn):
            entries.append((op, entry(n, size)))
            offsets.append(LogOffset(100 + t, op))
            n += 1
        log.append_transaction(100 + t, entries)
    log.sync()
    return offsets


def pieces_after(
    log: ShapeLog, offset: LogOffset, max_bytes: int, until: LogOffset | None = None
) -> list[list[bytes]]:
    out: list[list[bytes]] = []
    position = None
    while True:
        piece = log.read_piece(offset, max_bytes, position, until=until)
        if not piece.items:
            assert piece.end == (offset if offset.tx > 0 else SNAPSHOT_END)
            return out
        assert piece.end > offset
        assert len(piece.items) == 1 or sum(map(len, piece.items)) <= max_bytes + 400
        out.append(piece.items)
        offset, position = piece.end, piece.position


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=transactions, chunk_bytes=st.integers(1024, 3000), max_bytes=st.integers(1, 900))
def test_pieces_equal_whole_chunk_reads(
    sizes: list[list[int]], chunk_bytes: int, max_bytes: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        offsets = build(Path(tmp) / "s", chunk_bytes, sizes)
        log = ShapeLog.open(Path(tmp) / "s", chunk_bytes)
        for start in [SNAPSHOT_END, LogOffset(0, 0), *offsets]:
            expected = read_all_changes(log, max(start, SNAPSHOT_END))
            pieces = pieces_after(log, start, max_bytes)
            assert [item for piece in pieces for item in piece] == expected
            whole, end = log.read(start)
            plan = log.plan_read(start)
            assert plan.snapshot_chunk is None
            assert plan.end == end
            assert plan.empty == (not whole)
            # the same chunk, in pieces that stop at its end
            chunk = pieces_after(log, plan.after, max_bytes, until=plan.end)
            assert [item for piece in chunk for item in piece] == whole


def test_an_open_transaction_is_never_read(tmp_path: Path) -> None:
    log = ShapeLog.create(tmp_path / "s", 1024)
    log.finish_snapshot(END_LINE)
    log.append_transaction(100, [(0, entry(0, 10))])
    log.append_transaction(200, [(0, entry(1, 10)), (1, entry(2, 10))], final=False)
    piece = log.read_piece(SNAPSHOT_END, 10_000)
    assert piece.items == [entry(0, 10)]
    assert log.read_piece(piece.end, 10_000, piece.position).items == []


@settings(max_examples=30, deadline=None)
@given(
    rows=st.lists(st.integers(0, 500), min_size=1, max_size=40),
    max_bytes=st.integers(1, 2000),
)
def test_snapshot_pieces_equal_snapshot_chunks(rows: list[int], max_bytes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = ShapeLog.create(Path(tmp) / "s", 1024)
        log.append_snapshot_rows(entry(i, size) for i, size in enumerate(rows))
        log.finish_snapshot(END_LINE)
        offset = LogOffset(-1, 0)
        while True:
            plan = log.plan_read(offset)
            whole, end = log.read(offset)
            assert plan.end == end
            if plan.snapshot_chunk is None:
                break
            lines: list[bytes] = []
            position, done = 0, False
            while not done:
                piece, position, done = log.read_snapshot_piece(
                    plan.snapshot_chunk, position, max_bytes
                )
                assert piece
                lines += piece
            assert lines == whole
            offset = end


def test_a_snapshot_line_longer_than_the_piece_and_the_read_block_comes_whole(
    tmp_path: Path,
) -> None:
    log = ShapeLog.create(tmp_path / "s", 1 << 20)
    rows = [entry(0, 10), entry(1, 200_000), entry(2, 10)]  # the middle one spans 4 blocks
    log.append_snapshot_rows(rows)
    log.finish_snapshot(END_LINE)
    lines: list[bytes] = []
    position, done = 0, False
    while not done:
        piece, position, done = log.read_snapshot_piece(0, position, 5)
        assert len(piece) == 1
        lines += piece
    assert lines[:3] == rows
