"""The view journal of a subquery shape: which value sets its log reflects, at which offset.

Layer: ``syncd`` (synchronous file I/O).

A subquery shape's log is only meaningful together with the value set of each of its
subqueries that the log's rows were judged against (its *views*): move-in and move-out events
change them, and after a restart the shape must know them to move in or out whatever changed
meanwhile. ``views.jsonl`` in the shape's directory holds one JSON line per change of the views:
``{"tx": ..., "op": ..., "views": [[value texts, ...], ...]}``, the offset being that of the
log entry that made the change. A record is written and fdatasynced *before* the log bytes it
describes, so the journal is never behind the log; records past the log's recovered end (the
log append did not happen) are ignored when the shape is restored. The file is rewritten with
its last record alone when it grows past :data:`COMPACT_BYTES`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from shapes.offset import LogOffset
from syncd.log_files import _atomic_write

JOURNAL_FILE: Final = "views.jsonl"
COMPACT_BYTES: Final = 256 * 1024

Texts = list[list[list[str | None]]]
"""Per dependency, per value, the value's column texts."""


class ViewJournal:
    """Appends and reads the views records of one shape directory."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / JOURNAL_FILE

    def record(self, at: LogOffset, views: Texts) -> None:
        """Durably note that from offset ``at`` on the log reflects ``views``."""
        line = json.dumps({"tx": at.tx, "op": at.op, "views": views}, separators=(",", ":"))
        data = (line + "\n").encode()
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size + len(data) > COMPACT_BYTES:
            self._replace(data)
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def _replace(self, data: bytes) -> None:
        _atomic_write(self.path.parent, self.path.name, data)

    def views_at(self, latest: LogOffset) -> Texts | None:
        """The views of the last record at or before ``latest`` (``None``: no record)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        found: Texts | None = None
        for line in text.splitlines():
            try:
                record = json.loads(line)
                at = LogOffset(int(record["tx"]), int(record["op"]))
            except (ValueError, KeyError, TypeError):
                break  # a torn last line
            if at > latest:
                break
            found = record["views"]
        return found


def to_texts(views: Sequence[Sequence[Sequence[str | None]]]) -> Texts:
    """Views as JSON-able lists, sorted so that equal views give equal records."""
    return [sorted([list(v) for v in values], key=repr) for values in views]
