"""Snapshot visibility: which streamed transactions a snapshot already contains."""

from __future__ import annotations

import pytest
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


# --- wrap-around at exactly 2^31 either side --------------------------------------------------

HALF = XID_SPACE // 2


@pytest.mark.parametrize("epoch", [0, 1, 7, 1 << 28])
@pytest.mark.parametrize("low", [0, 100, HALF - 1, HALF, HALF + 1, XID_SPACE - 1])
def test_widening_keeps_xids_within_half_the_space(epoch: int, low: int) -> None:
    """Up to 2^31 - 1 away an xid stays on its side; 2^31 + 1 away it wraps to the other side.

    Exactly 2^31 away is a tie (both are as near), which Postgres never lets happen.
    """
    near = (epoch << 32) + low
    for distance in (0, 1, HALF - 1):
        assert widen_xid((near + distance) % XID_SPACE, near) == near + distance
        assert widen_xid((near - distance) % XID_SPACE, near) == near - distance
    assert widen_xid((near + HALF) % XID_SPACE, near) in (near - HALF, near + HALF)
    assert widen_xid((near + HALF + 1) % XID_SPACE, near) == near - HALF + 1
    assert widen_xid((near - HALF - 1) % XID_SPACE, near) == near + HALF - 1


@given(st.integers(0, (1 << 62)), st.integers(0, XID_SPACE - 1))
def test_widened_xid_is_the_nearest_with_those_low_bits(near: int, xid: int) -> None:
    full = widen_xid(xid, near)
    assert full % XID_SPACE == xid
    assert near - HALF <= full <= near + HALF


def test_64_bit_xids_are_read_by_their_low_32_bits() -> None:
    epoch = 5 << 32
    info = Snapshot(epoch + 10, epoch + 20, (epoch + 15,))
    assert info.widen((9 << 32) + 15) == epoch + 15
    assert not info.is_visible(epoch + 15)
    assert info.is_visible((2 << 32) + 9)
    assert not info.is_visible(epoch + 20) and info.is_after(epoch + 20)
    assert info.is_visible(epoch + 19) and not info.is_after(epoch + 19)


def test_visibility_around_the_snapshot_bounds() -> None:
    info = Snapshot(100, 105, (103,))
    assert [info.is_visible(x) for x in range(98, 108)] == [
        True,
        True,
        True,
        True,
        True,
        False,
        True,
        False,
        False,
        False,
    ]
    assert [info.is_after(x) for x in range(103, 107)] == [False, False, True, True]
