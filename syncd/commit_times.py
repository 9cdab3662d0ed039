"""When the transactions syncd holds were committed: the replication lag in seconds.

Layer: ``syncd`` (pure bookkeeping, no I/O).

Postgres stamps every commit with its time. :class:`CommitTimes` notes each transaction's end LSN
and commit time as it is received, and answers "how old is the oldest commit not yet at
position *p*" for the durable and confirmed positions. Commits less than
:data:`COALESCE_SECONDS` apart share one entry (its time is the earliest of them, its LSN the
latest), so a busy stream keeps a few entries per second and an answer errs by at most that
much, towards more lag. Entries at or below the position the stream confirms next are forgotten
at each idle call of the stream (``Engine.on_idle``), whether or not anyone reads the lag.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Final

POSTGRES_EPOCH: Final = 946_684_800
"""Seconds from the Unix epoch to Postgres' (2000-01-01 UTC), in which commit times count."""
COALESCE_SECONDS: Final = 0.1
MAX_ENTRIES: Final = 10_000
"""Beyond this (17 minutes of unconfirmed commits at the coalescing step), later commits join
the newest entry: the lag reported stays an upper bound."""


def commit_unix_time(postgres_us: int) -> float:
    """A pgoutput commit time (microseconds since 2000-01-01 UTC) in Unix seconds."""
    return postgres_us / 1_000_000 + POSTGRES_EPOCH


class CommitTimes:
    """Commit times of the transactions received and not yet confirmed, oldest first."""

    def __init__(self) -> None:
        self._entries: deque[tuple[int, float]] = deque()
        """``(end LSN, commit time)``: the latest LSN and the earliest time of a group."""
        self.last_receive_delay = 0.0
        """Seconds between the latest transaction's commit and its arrival here."""
        self.last_commit_time = 0.0
        """Unix time of the latest commit received (0 before the first)."""

    def note(self, end_lsn: int, postgres_us: int, now: float | None = None) -> None:
        """A transaction ending at ``end_lsn``, committed at ``postgres_us``, was received."""
        committed = commit_unix_time(postgres_us)
        received = time.time() if now is None else now
        self.last_receive_delay = max(received - committed, 0.0)
        self.last_commit_time = committed
        entries = self._entries
        if entries:
            lsn, first = entries[-1]
            if committed - first < COALESCE_SECONDS or len(entries) >= MAX_ENTRIES:
                entries[-1] = (max(lsn, end_lsn), first)
                return
        entries.append((end_lsn, committed))

    def forget(self, confirmed_lsn: int) -> None:
        """Drop the entries at or below ``confirmed_lsn`` (Postgres will not send them again)."""
        entries = self._entries
        while entries and entries[0][0] <= confirmed_lsn:
            entries.popleft()

    def age(self, position: int, now: float | None = None) -> float:
        """Seconds since the oldest commit received beyond ``position`` was made; 0 when every
        transaction received is at or below it."""
        for lsn, committed in self._entries:
            if lsn > position:
                current = time.time() if now is None else now
                return max(current - committed, 0.0)
        return 0.0

    def __len__(self) -> int:
        return len(self._entries)
