"""Crash points: places in an agent's cycle where a worker can be made to kill itself, for the
fault tests (``kill -9`` at a chosen point, not wherever a signal happens to land).

``AGENTS_CRASH_AT`` lists point names (comma-separated); at each listed point the process
sends itself SIGKILL with probability ``AGENTS_CRASH_PROBABILITY`` (default 1), drawn from a
generator seeded by ``AGENTS_CRASH_SEED``. Unset, :func:`crash_point` does nothing.
"""

from __future__ import annotations

import os
import random
import signal
from typing import Final

POINTS: Final = (
    "after_claim",
    "mid_stream",
    "after_reply",
    "after_record",
    "before_commit",
    "after_commit",
)
_armed = frozenset(p for p in os.environ.get("AGENTS_CRASH_AT", "").split(",") if p)
_probability = float(os.environ.get("AGENTS_CRASH_PROBABILITY") or 1.0)
_random = random.Random(os.environ.get("AGENTS_CRASH_SEED"))


def crash_point(name: str) -> None:
    """Die here, at once and without cleanup, when this point is armed."""
    if name in _armed and _random.random() < _probability:
        os.kill(os.getpid(), signal.SIGKILL)
