"""Offset limits: the largest offsets that parse, the smallest that overflow, and their order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shapes.errors import InvalidRequest
from shapes.offset import BEFORE_ALL, INF, INVALID_FORMAT, SNAPSHOT_END, LogOffset, parse_offset

LARGEST_TX = INF - 1
"""An LSN is 64 bits: the largest transaction offset."""


def rejected(text: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_offset(text)
    assert (info.value.field, info.value.message) == ("offset", INVALID_FORMAT)
    assert info.value.errors() == {"offset": [INVALID_FORMAT]}


def test_a_malformed_offset_suggests_minus_one() -> None:
    assert INVALID_FORMAT.startswith("has invalid format; use -1 to read the shape from its start")


def test_the_largest_offsets_parse() -> None:
    assert parse_offset(f"{LARGEST_TX}_0") == LogOffset(LARGEST_TX, 0)
    assert parse_offset(f"{LARGEST_TX}_inf") == LogOffset(LARGEST_TX, INF)
    assert parse_offset(f"1_{INF - 1}") == LogOffset(1, INF - 1)
    assert parse_offset(f"1_{INF}") == LogOffset(1, INF)  # the same position as 1_inf


@pytest.mark.parametrize(
    "text",
    [
        f"{INF}_0",  # tx overflows, op is fine
        f"{INF}_inf",
        f"{INF + 1}_0",
        f"1_{INF + 1}",  # op overflows, tx is fine
        f"0_{INF + 1}",
        f"{INF}_{INF + 1}",  # both
        f"{10**30}_1",
    ],
)
def test_offsets_past_64_bits_are_rejected(text: str) -> None:
    rejected(text)


def test_inf_is_above_every_op_and_below_the_next_transaction() -> None:
    assert LogOffset(5, INF - 1) < LogOffset(5, INF) < LogOffset(6, 0)
    assert str(LogOffset(5, INF)) == "5_inf"
    assert str(LogOffset(5, INF - 1)) == f"5_{INF - 1}"
    assert str(BEFORE_ALL) == "-1"
    assert not BEFORE_ALL.is_snapshot and SNAPSHOT_END.is_snapshot
    assert LogOffset(0, 7).is_snapshot and not LogOffset(1, 0).is_snapshot


@given(st.integers(0, LARGEST_TX), st.one_of(st.integers(0, INF - 1), st.just(INF)))
def test_offsets_print_and_parse_back(tx: int, op: int) -> None:
    offset = LogOffset(tx, op)
    assert parse_offset(str(offset)) == offset
