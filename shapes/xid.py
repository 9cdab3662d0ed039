"""Transaction ids: 32-bit xids from the stream against 64-bit snapshot bounds.

Layer: ``shapes`` (pure). A change's ``txids`` and an app's ``pg_current_xact_id()::xid`` are
32-bit xids, which wrap around; ``pg_current_snapshot()`` (and so a ``snapshot-end`` message)
gives 64-bit xids (epoch and xid). A 32-bit xid is compared with a snapshot after widening it to
the 64-bit xid nearest the snapshot's ``xmax``: Postgres never keeps two transactions more than
2^31 apart alive, so the nearest one is the right one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

XID_SPACE: Final = 1 << 32


def widen_xid(xid: int, near: int) -> int:
    """The 64-bit xid whose low 32 bits are ``xid`` and that lies nearest to ``near``."""
    full = (near & ~(XID_SPACE - 1)) | (xid & (XID_SPACE - 1))
    if full > near + XID_SPACE // 2:
        full -= XID_SPACE
    elif full < near - XID_SPACE // 2:
        full += XID_SPACE
    return full


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A ``pg_current_snapshot()``: 64-bit ``xmin``, ``xmax`` and in-progress ``xip``."""

    xmin: int
    xmax: int
    xip: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        """Parse the ``xmin:xmax:xip,...`` text form.

        Raises:
            ValueError: when ``text`` is not in that form.
        """
        xmin, xmax, xip = text.split(":")
        return cls(int(xmin), int(xmax), tuple(int(x) for x in xip.split(",") if x))

    def widen(self, xid: int) -> int:
        """``xid`` (32 or 64 bits) as the 64-bit xid nearest to ``xmax``."""
        return widen_xid(xid, self.xmax)

    def is_visible(self, xid: int) -> bool:
        """Whether the transaction's effects are already contained in the snapshot."""
        full = self.widen(xid)
        return full < self.xmin or (full < self.xmax and full not in self.xip)

    def is_after(self, xid: int) -> bool:
        """Whether the transaction started after the snapshot was taken."""
        return self.widen(xid) >= self.xmax
