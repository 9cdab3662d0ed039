"""Background compaction of the shape logs: when, where it runs, and the switch.

Layer: ``syncd``. What compaction does to a log, and why readers keep exact offsets, is in
:mod:`syncd.log_compaction`.

When. Every ``interval`` seconds the compactor looks at the ready shapes. Compaction yields to
ingest: a log that took changes since the last look is left alone while it grows, unless it has
grown by ``busy_bytes`` and by twice its compacted size (a bound on a log written without
pause). A log that took no change since the last look is due once it has grown since its last
compaction by ``min_bytes`` and by its compacted size (so a log that cannot shrink, inserts
only, is rewritten at doubling sizes: the work stays proportional to what is written), and
after ``idle_seconds`` without changes by ``idle_min_bytes`` (a quiet shape ends with a short
tail). The most grown log goes first, one at a time.

Where. The rewrite runs in a worker process (``spawn``; it dies with syncd), on the other core:
decoding and merging millions of entries on a thread would hold the interpreter lock the event
loop needs. Only the switch runs on the event loop (:meth:`ShapeLog.install_compaction`): it
copies the entries committed meanwhile, makes them durable and renames the new files into place,
between two replication messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from syncd.log_compaction import (
    CompactionResult,
    compact_log,
    discard_temporary,
    extend_compaction,
)
from syncd.shape_state import ShapeState
from syncd.storage import ShapeLog

log = logging.getLogger("syncd.compaction")

_PR_SET_PDEATHSIG = 1
_SWITCH_BYTES = 256 << 10
"""At most this much of what was committed during a compaction is copied on the event loop at
the switch; more is copied on a thread first."""
_CATCH_UPS = 4


@dataclass(frozen=True)
class CompactionSettings:
    """When shape logs are compacted (module docstring)."""

    enabled: bool = True
    min_bytes: int = 1 << 20
    busy_bytes: int = 64 << 20
    idle_min_bytes: int = 64 << 10
    idle_seconds: float = 10.0
    interval: float = 1.0
    min_gain: float = 0.1
    """Fewest entries, as a fraction, a compaction must remove to be written."""


def _die_with_parent() -> None:
    """Worker initialiser: on Linux, the worker is killed when syncd dies (even by SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before the call
            os._exit(1)


class Compactor:
    """Compacts the logs of one engine's shapes (module docstring)."""

    def __init__(self, settings: CompactionSettings, shapes: Callable[[], Iterable[ShapeState]]):
        self.settings = settings
        self._shapes = shapes
        self._executor: ProcessPoolExecutor | None = None
        self._quiet_since: dict[ShapeLog, tuple[int, float]] = {}
        """Each log's size when last seen changed, and since when it has not."""
        self.compactions = 0
        """Compactions switched to."""
        self.bytes_before = 0
        self.bytes_after = 0
        """Change-log bytes compacted, and what they became."""
        self.failures = 0
        self.on_compacted: Callable[[float], None] = lambda seconds: None
        """Told the seconds each compaction took (the metrics' histogram)."""

    async def run(self) -> None:
        """Compact due logs until cancelled."""
        try:
            while True:
                await asyncio.sleep(self.settings.interval)
                shape = self.next_due(time.monotonic())
                if shape is None:
                    continue
                try:
                    await self.compact(shape)
                except Exception:  # past the worker (the switch): this log waits, others go on
                    self.failures += 1
                    shape.log.compaction_skipped(shape.log.change_log_size)
                    log.exception("compaction of %s failed", shape.log.directory.name)
        finally:
            self.close()

    def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def next_due(self, now: float) -> ShapeState | None:
        """The ready shape whose log is most due for compaction, if any."""
        settings = self.settings
        # A log that grew less than every threshold cannot be due, and need not be watched
        # either: the size at which it crosses one is new, as it would be to the watch. Most
        # logs are below (idle shapes), and this look runs every second over all of them.
        floor = min(settings.busy_bytes, settings.min_bytes, settings.idle_min_bytes)
        best: ShapeState | None = None
        best_growth = 0
        seen: dict[ShapeLog, tuple[int, float]] = {}
        for shape in self._shapes():
            if shape.status != "ready":
                continue
            shape_log = shape.log
            size = shape_log.change_log_size
            compacted = shape_log.compacted_size
            growth = size - compacted
            if growth < floor:
                continue
            previous = self._quiet_since.get(shape_log)
            since = previous[1] if previous is not None and previous[0] == size else now
            seen[shape_log] = (size, since)
            quiet = previous is not None and previous[0] == size
            due = (
                growth >= max(settings.busy_bytes, 2 * compacted)
                or (quiet and growth >= max(settings.min_bytes, compacted))
                or (growth >= settings.idle_min_bytes and now - since >= settings.idle_seconds)
            )
            if due and growth > best_growth:
                best, best_growth = shape, growth
        self._quiet_since = seen
        return best

    async def compact(self, shape: ShapeState) -> bool:
        """Compact ``shape``'s log now; whether the compacted generation was switched to."""
        shape_log = shape.log
        source = shape_log.compaction_source()
        if source is None:
            return False
        generation, size = source
        started = time.monotonic()
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                self._worker(),
                compact_log,
                os.fspath(shape_log.directory),
                generation,
                size,
                shape_log.chunk_bytes,
                self.settings.min_gain,
            )
        except Exception as exc:  # whatever the worker met (a damaged log, a killed worker)
            self._failed(shape_log, generation, size, exc)
            return False
        if result is None:  # too little to remove: counted as compacted, so it waits to double
            shape_log.compaction_skipped(size)
            return False
        for _ in range(_CATCH_UPS):  # most of what came meanwhile is copied off the loop
            committed = shape_log.change_log_size
            if shape_log.deleted or committed - result.source_size <= _SWITCH_BYTES:
                break
            try:
                result = await asyncio.to_thread(
                    extend_compaction,
                    os.fspath(shape_log.directory),
                    result,
                    committed,
                    shape_log.chunk_bytes,
                )
            except OSError as exc:
                self._failed(shape_log, generation, size, exc)
                return False
        if not shape_log.install_compaction(result):
            if shape_log.deleted:  # the worker may have written into a directory being removed
                shutil.rmtree(shape_log.directory, ignore_errors=True)
            return False
        self._compacted(shape, result, time.monotonic() - started)
        return True

    def _worker(self) -> ProcessPoolExecutor:
        executor = self._executor
        if executor is None:
            executor = self._executor = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_die_with_parent,
            )
        return executor

    def _failed(self, shape_log: ShapeLog, generation: int, size: int, exc: Exception) -> None:
        """Count and log a failed compaction of the first ``size`` bytes; the log is not tried
        again until it has grown as after a compaction of that size (no retry every look)."""
        self.failures += 1
        if isinstance(exc, BrokenProcessPool):
            self.close()  # a new worker next time
        discard_temporary(shape_log.directory, generation + 1)
        if shape_log.deleted:
            shutil.rmtree(shape_log.directory, ignore_errors=True)
            return
        shape_log.compaction_skipped(size)
        log.warning(
            "compaction of %s failed: %s: %s", shape_log.directory.name, type(exc).__name__, exc
        )

    def _compacted(self, shape: ShapeState, result: CompactionResult, seconds: float) -> None:
        self.compactions += 1
        self.bytes_before += result.source_size
        self.bytes_after += result.size
        self.on_compacted(seconds)
        log.debug(
            "compacted shape %s: %d entries in %d bytes became %d in %d (%.3f s)",
            shape.handle,
            result.entries_in,
            result.source_size,
            result.entries_out,
            result.size,
            seconds,
        )
