"""Helpers for tests that read shape logs directly."""

from __future__ import annotations

from pathlib import Path

from shapes.offset import SNAPSHOT_END, LogOffset
from syncd import log_format, storage
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


def change_log_files(directory: Path) -> tuple[bytes, bytes]:
    """What a log's change-log files hold: the log's bytes and the chunk index's records.

    A log whose chunks never closed may have no index, or (after a cut) one with only its
    header: both hold no record."""
    log = (directory / storage.LOG_FILE).read_bytes()
    try:
        index = (directory / storage.INDEX_FILE).read_bytes()
    except FileNotFoundError:
        return log, b""
    assert index.startswith(log_format._INDEX_MAGIC), index[:8]
    return log, index[len(log_format._INDEX_MAGIC) :]
