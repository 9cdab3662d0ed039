"""Helpers for tests that read shape logs directly."""

from __future__ import annotations

from shapes.offset import SNAPSHOT_END, LogOffset
from syncd.storage import ShapeLog


def read_all_changes(log: ShapeLog, start: LogOffset = SNAPSHOT_END) -> list[bytes]:
    """Follow the chunk chain from ``start`` until a read returns nothing."""
    out: list[bytes] = []
    offset = start
    while True:
        lines, end = log.read(offset)
        if not lines:
            assert end == max(offset, SNAPSHOT_END)
            return out
        assert end > offset
        out += lines
        offset = end
