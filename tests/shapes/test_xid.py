"""Snapshot visibility: which streamed transactions a snapshot already contains."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shapes.xid import XID_SPACE, Snapshot, widen_xid


def test_parse_text_form() -> None:
    info = Snapshot.parse("100:105:100,102")
    assert info == Snapshot(100, 105, (100, 102))
    assert Snapshot.parse("7:7:") == Snapshot(7, 7, ())


def test_visibility_rules() -> None:
    info = Snapshot(100, 105, (100, 102))
    assert info.is_visible(99)  # committed before the snapshot
    assert not info.is_visible(100)  # in progress at the snapshot
    assert info.is_visible(101)
    assert not info.is_visible(102)
    assert not info.is_visible(105)  # started after
    assert info.is_after(105) and not info.is_after(104)


def test_32_bit_xids_are_widened_across_the_epoch() -> None:
    epoch = 3 << 32
    info = Snapshot(epoch - 5, epoch + 5, (epoch - 2,))
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
    info = Snapshot(max(xmax - width, 0), xmax, ())
    full = xmax + delta
    if full < 0:
        return
    assert info.widen(full % XID_SPACE) == full


def test_a_64_bit_xid_keeps_its_low_bits_and_finds_the_nearest_epoch() -> None:
    near = (2 << 32) + XID_SPACE - 3
    assert widen_xid(5, near) == (3 << 32) + 5
    assert widen_xid((7 << 32) + 5, near) == (3 << 32) + 5
    assert widen_xid(XID_SPACE - 4, near) == near - 1
