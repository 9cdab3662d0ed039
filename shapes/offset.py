"""Log offsets: the ``(tx_offset, op_offset)`` pairs of the shape protocol.

Layer: ``shapes`` (pure). ``tx_offset`` is the commit LSN of a transaction, ``op_offset`` the
position of an operation inside it. Snapshot chunks use the virtual offsets ``0_k`` and the
snapshot ends at ``0_inf``. ``-1`` sorts before everything.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

from shapes.errors import InvalidRequest

INF: Final = 1 << 64
"""The ``inf`` op offset; larger than any real op offset."""

_MAX_OFFSET_CHARS: Final = 64
"""Longer offsets are refused before any digits are converted (``int()`` refuses thousands)."""
_OFFSET_RE: Final = re.compile(r"(0|[1-9][0-9]*|0[0-9]+)_(inf|[0-9]+)")
START_HINT: Final = (
    "use -1 to read the shape from its start, then the electric-offset header of each answer"
)
"""What a 400 on ``offset`` adds, after the reference server's words."""
INVALID_FORMAT: Final = "has invalid format; " + START_HINT


class LogOffset(NamedTuple):
    """A comparable position in a shape log. Tuples compare field by field."""

    tx: int
    op: int

    def __str__(self) -> str:
        if self.tx < 0:
            return "-1"
        return f"{self.tx}_{'inf' if self.op == INF else self.op}"

    @property
    def is_snapshot(self) -> bool:
        """True for the virtual snapshot offsets ``0_k`` and ``0_inf``."""
        return self.tx == 0


BEFORE_ALL: Final = LogOffset(-1, 0)
"""``-1``: before the first snapshot row."""

SNAPSHOT_END: Final = LogOffset(0, INF)
"""``0_inf``: the whole snapshot has been read; the change log starts after it."""


def parse_offset(text: str) -> LogOffset:
    """Parse a request's ``offset`` parameter (``now`` is handled by the caller).

    Accepts ``-1``, ``-1_0``, ``<int>_<int>`` and ``<int>_inf``; leading zeros are tolerated as
    the reference server does.

    Raises:
        InvalidRequest: on anything else, with the protocol's message.
    """
    if text in ("-1", "-1_0"):
        return BEFORE_ALL
    match = _OFFSET_RE.fullmatch(text) if len(text) <= _MAX_OFFSET_CHARS else None
    if match is None:
        raise InvalidRequest("offset", INVALID_FORMAT)
    tx = int(match.group(1))
    op_text = match.group(2)
    op = INF if op_text == "inf" else int(op_text)
    if tx >= INF or op > INF:
        raise InvalidRequest("offset", INVALID_FORMAT)
    return LogOffset(tx, op)
