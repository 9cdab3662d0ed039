"""Snapshot visibility: which streamed transactions a snapshot already contains."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from syncd.snapshot import XID_SPACE, SnapshotInfo


def test_parse_text_form() -> None:
    info = SnapshotInfo.parse("100:105:100,102")
    assert info == SnapshotInfo(100, 105, (100, 102))
    assert SnapshotInfo.parse("7:7:") == SnapshotInfo(7, 7, ())


def test_visibility_rules() -> None:
    info = SnapshotInfo(100, 105, (100, 102))
    assert info.is_visible(99)  # committed before the snapshot
    assert not info.is_visible(100)  # in progress at the snapshot
    assert info.is_visible(101)
    assert not info.is_visible(102)
    assert not info.is_visible(105)  # started after
    assert info.is_after(105) and not info.is_after(104)


def test_32_bit_xids_are_widened_across_the_epoch() -> None:
    epoch = 3 << 32
    info = SnapshotInfo(epoch - 5, epoch + 5, (epoch - 2,))
    assert info.widen(XID_SPACE - 10) == epoch - 10
    assert info.is_visible(XID_SPACE - 10)
    assert not info.is_visible(XID_SPACE - 2)
    assert info.widen(3) == epoch + 3
    assert info.is_visible(3)
    assert not info.is_visible(7)


@given(
    st.integers(0, 1 << 40),
    st.integers(0, 1000),
    st.integers(-10_000, 10_000),
)
def test_widening_inverts_truncation_near_the_snapshot(xmax: int, width: int, delta: int) -> None:
    info = SnapshotInfo(max(xmax - width, 0), xmax, ())
    full = xmax + delta
    if full < 0:
        return
    assert info.widen(full % XID_SPACE) == full
