"""``ShapeState.commit`` with transactions in pieces (streamed transactions being replayed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shapes.offset import SNAPSHOT_END, LogOffset
from shapes.schema import Column, Table
from shapes.shape import CanonicalShape
from shapes.xid import Snapshot
from syncd.shape_state import (
    SNAPSHOT_LSN_UNKNOWN,
    ShapeState,
    snapshot_from_meta,
    snapshot_lsn_from_meta,
)
from syncd.storage import ShapeLog
from tests.syncd.logs import read_all_changes

END_LINE = b'{"headers":{"control":"snapshot-end","xmin":"1","xmax":"1","xip_list":[]}}'
TABLE = Table("public", "t", (Column("id", "int4", 23, pk_index=0),))


def make_shape(tmp_path: Path) -> ShapeState:
    shape_log = ShapeLog.create(tmp_path / "shape", 64)
    return ShapeState("h-1", CanonicalShape("public", "t"), TABLE, None, ("id",), shape_log)


def entries(first: int, count: int) -> list[tuple[int, bytes]]:
    return [(2 * k, b'{"i":%d}' % (first + k)) for k in range(count)]


SNAPSHOT_LSN = 1_000
"""Above every commit LSN these tests use: any of them may be in the snapshot."""


def ready(shape: ShapeState, info: Snapshot, snapshot_lsn: int = SNAPSHOT_LSN) -> None:
    shape.log.finish_snapshot(END_LINE)
    shape.finish_snapshot(info, snapshot_lsn)


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


async def test_only_commits_below_the_snapshot_position_are_checked(tmp_path: Path) -> None:
    shape = make_shape(tmp_path)
    ready(shape, Snapshot(10, 12, (11,)), snapshot_lsn=150)
    assert not shape.commit(100, 5, entries(0, 1))  # below the position and visible: skipped
    # At or above the position a transaction cannot be in the snapshot, whatever its xid says
    # (a 32-bit xid widened far from the snapshot's can look visible).
    assert shape.commit(150, 5, entries(0, 1))
    assert shape.commit(200, 9, entries(0, 1))
    assert shape.log.latest_offset == LogOffset(200, 0)


async def test_the_snapshot_position_is_stored_and_restored(tmp_path: Path) -> None:
    shape = make_shape(tmp_path)
    ready(shape, Snapshot(10, 12, (11,)), snapshot_lsn=150)
    shape.save_meta()
    meta = shape.log.read_meta()
    assert snapshot_lsn_from_meta(meta) == 150
    assert snapshot_from_meta(meta) == Snapshot(10, 12, (11,))


def test_metadata_without_the_position_keeps_its_filter_flag() -> None:
    assert snapshot_lsn_from_meta({"filtering": True}) == SNAPSHOT_LSN_UNKNOWN
    assert snapshot_lsn_from_meta({}) == SNAPSHOT_LSN_UNKNOWN
    assert snapshot_lsn_from_meta({"filtering": False}) == 0


async def test_an_unknown_position_is_learnt_from_the_first_later_transaction(
    tmp_path: Path,
) -> None:
    shape = make_shape(tmp_path)
    ready(shape, Snapshot(10, 12, (11,)), snapshot_lsn=SNAPSHOT_LSN_UNKNOWN)
    assert not shape.commit(100, 5, entries(0, 1))  # visible
    assert shape.commit(200, 11, entries(0, 1))  # in progress at the snapshot: not the end
    assert shape.snapshot_lsn == SNAPSHOT_LSN_UNKNOWN
    assert shape.commit(300, 12, entries(0, 1))  # started after the snapshot
    assert shape.snapshot_lsn == 300
    assert shape.commit(400, 5, entries(0, 1))  # a wrapped xid no longer counts as visible
