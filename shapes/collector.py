"""The cyclic garbage collector's settings for a process that holds thousands of live requests
or streams: syncd and the web app serving them, and programs whose Python client follows many
shapes (an agents worker, say).

Layer: ``shapes`` (no I/O; it changes process-wide state, so only a program's entry point calls
it, never a library).

Why. Such a process keeps many objects alive across awaits: each live request or stream holds
its coroutines, futures, timers and buffers until the next change. With Python's default
thresholds (700, 10, 10) those objects outlive the youngest generation's collection, are
promoted, and make the collections frequent and slow. Measured with 1,000 Python clients
long-polling one shape, the collector took about a third of the process's CPU and a change
reached half of them after 120-190 ms; tuned, there was no collection while changes were being
delivered, and 86-109 ms.
"""

from __future__ import annotations

import gc
from typing import Final

MANY_STREAMS_THRESHOLDS: Final = (50_000, 20, 100)
"""Youngest generation collected every 50,000 net allocations (most are garbage by then, freed
by reference counting), the older ones 20 and 100 times less often."""


def tune_garbage_collector() -> None:
    """Tune the collector for a long-running process with thousands of live requests: collect
    what start-up left, freeze the survivors out of every later scan, and raise the thresholds
    to :data:`MANY_STREAMS_THRESHOLDS`.

    Call it once, from the program's entry point, after start-up and before the live work.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*MANY_STREAMS_THRESHOLDS)
