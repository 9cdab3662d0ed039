"""``ShapeState.commit`` with transactions in pieces (streamed transactions being replayed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shapes.offset import SNAPSHOT_END, LogOffset
from shapes.schema import Column, Table
from shapes.shape import CanonicalShape
from shapes.xid import Snapshot
from syncd.shape_state import ShapeState
from syncd.storage import ShapeLog
from tests.syncd.logs import read_all_changes

END_LINE = b'{"headers":{"control":"snapshot-end","xmin":"1","xmax":"1","xip_list":[]}}'
TABLE = Table("public", "t", (Column("id", "int4", 23, pk_index=0),))


def make_shape(tmp_path: Path) -> ShapeState:
    shape_log = ShapeLog.create(tmp_path / "shape", 64)
    return ShapeState("h-1", CanonicalShape("public", "t"), TABLE, None, ("id",), shape_log)


def entries(first: int, count: int) -> list[tuple[int, bytes]]:
    return [(2 * k, b'{"i":%d}' % (first + k)) for k in range(count)]


def ready(shape: ShapeState, info: Snapshot) -> None:
    shape.log.finish_snapshot(END_LINE)
    shape.finish_snapshot(info)


async def test_pieces_of_a_ready_shape(tmp_path: Path) -> None:
    shape = make_shape(tmp_path)
    ready(shape, Snapshot(10, 10, ()))
    big = entries(0, 10)
    assert shape.commit(100, 20, big[:4], final=False)
    assert shape.commit(100, 20, big[4:9], final=False)
    assert shape.log.latest_offset == SNAPSHOT_END
    with pytest.raises(RuntimeError):
        shape.commit(200, 21, entries(50, 1))
    assert shape.commit(100, 20, big[9:])
    assert shape.log.latest_offset == LogOffset(100, 18)
    assert read_all_changes(shape.log) == [e for _, e in big]


async def test_a_visible_transaction_is_skipped_in_every_piece(tmp_path: Path) -> None:
    shape = make_shape(tmp_path)
    ready(shape, Snapshot(10, 12, (11,)))
    assert not shape.commit(100, 5, entries(0, 3), final=False)  # xid 5: in the snapshot
    assert not shape.commit(100, 5, [(6, b"{}")])
    assert shape.commit(200, 11, entries(0, 2), final=False)  # in progress at the snapshot
    assert shape.commit(200, 11, [(4, b"{}")])
    assert shape.log.latest_offset == LogOffset(200, 4)


async def test_snapshot_that_finishes_between_pieces(tmp_path: Path) -> None:
    shape = make_shape(tmp_path)
    shape.commit(50, 30, entries(900, 1))  # buffered while the snapshot runs
    big = entries(0, 6)
    assert not shape.commit(100, 31, big[:2], final=False)  # collected in memory
    ready(shape, Snapshot(30, 30, ()))  # applies the buffered transaction 50 now
    assert shape.log.latest_offset == LogOffset(50, 0)
    assert not shape.commit(100, 31, big[2:5], final=False)
    assert shape.commit(100, 31, big[5:])
    assert read_all_changes(shape.log) == [b'{"i":900}'] + [e for _, e in big]


async def test_pieces_of_a_shape_still_snapshotting_are_buffered_whole(tmp_path: Path) -> None:
    shape = make_shape(tmp_path)
    big = entries(0, 5)
    assert not shape.commit(100, 31, big[:3], final=False)
    assert not shape.commit(100, 31, big[3:])
    assert shape.first_buffered_lsn == 100
    ready(shape, Snapshot(30, 30, ()))
    assert read_all_changes(shape.log) == [e for _, e in big]


async def test_abandoned_pieces_leave_the_log(tmp_path: Path) -> None:
    shape = make_shape(tmp_path)
    ready(shape, Snapshot(10, 10, ()))
    shape.commit(100, 20, entries(0, 4), final=False)
    shape.abandon_pieces()
    assert shape.log.open_transaction is None
    assert shape.commit(100, 20, entries(0, 4))
    assert shape.log.latest_offset == LogOffset(100, 6)
