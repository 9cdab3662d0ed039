"""Flush and acknowledgement bookkeeping: which logs are dirty, what is durable, what to confirm.

Layer: ``syncd``.

Theory of operation
-------------------
Each committed transaction is written to its shapes' logs at once (readers see it immediately);
durability is batched. When the stream has drained its socket, :meth:`FlushTracker.on_idle`
fsyncs the logs written since the last flush (at most every ``flush_interval``; a timer does it
once the interval has passed, so a burst's tail does not wait for the next idle call) and only
then reports the last commit's end LSN as flushed to Postgres. Many dirty logs are made durable
with one ``syncfs()`` (``storage.GroupSync``). Shapes still taking their snapshot hold their
transactions in memory; the confirmed LSN never passes the oldest of those (:meth:`pinned`), so
a crash can only lose what Postgres will send again.

A flush of many logs (one ``syncfs()``, which waits for the whole filesystem) runs on a thread
of its own (``syncd.log_flush`` says which steps run where): the event loop goes on decoding,
appending and answering clients meanwhile. At most one flush runs at a time. It covers the
commits up to ``last_commit_end`` as it starts; the logs written while it runs are dirty again
and wait for the next one, and the durable LSN advances only when it is done. A flush of a few
logs (``FlushPlan.brief``) is done at once on the event loop, after the readers the commits
woke have had their turn: a few ``fdatasync()`` calls cost less than the hop to another thread
and back.

The slot record (``syncd.slot_record``) is written durably before the stream may confirm a
position (:meth:`confirmable`), so a continuing slot is never ahead of it. While changes flow it
is advanced on a thread (its fsync can wait behind the disk's other writes for tens of
milliseconds, which the event loop must not), one write at a time; the position it carries is
confirmed at the stream's next idle call after it is durable. A new history
(:meth:`save_slot_record`) is written at once, after any advance still being written, so that an
advance of the old history never lands over it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from syncd.commit_times import CommitTimes
from syncd.log_flush import FlushPlan, plan_flush
from syncd.shape_state import ShapeState
from syncd.slot_record import SlotRecord
from syncd.storage import GroupSync

_SLOT_RECORD_INTERVAL = 0.2
"""Write the slot record (see ``syncd.slot_record``) at most this often while changes flow."""


log = logging.getLogger("syncd.engine")


class FlushFailed(RuntimeError):
    """Shape logs could not be made durable. What was written since the last flush may be lost
    (Linux reports a write-back error once, so a later ``syncfs()`` would succeed over the
    loss): syncd must stop and recover from what is on disk, as Postgres does on a failed
    fsync. Not an ``OSError``, so the replication stream does not retry it."""


class FlushTracker:
    """The dirty logs, the durable and confirmed positions, and the slot record."""

    def __init__(self, storage_dir: Path, flush_interval: float) -> None:
        self._storage_dir = storage_dir
        self._flush_interval = flush_interval
        self.dirty: set[ShapeState] = set()
        """Shapes whose logs were written since the last flush."""
        self.snapshotting: set[ShapeState] = set()
        """Shapes that may still buffer transactions (see :meth:`pinned`)."""
        self.holding: Callable[[], int | None] = lambda: None
        """The oldest transaction a subquery shape holds during a move-in, if any."""
        self.last_seen_lsn = 0
        self.last_commit_end = 0
        self.durable_lsn = 0
        self.commit_times = CommitTimes()
        """The commit times of the transactions not yet confirmed (lag in seconds)."""
        self.on_flushed: Callable[[float], None] = lambda seconds: None
        """Told how long each flush took (the metrics' histogram)."""
        self._last_flush = 0.0
        self._flush_timer: asyncio.TimerHandle | None = None
        self.group_sync: GroupSync | None = None
        self._flushing: asyncio.Task[None] | None = None
        """The flush running on :attr:`_flusher`, if any."""
        self._flusher: ThreadPoolExecutor | None = None
        # the slot history the shapes follow (see syncd.slot_record)
        self.slot_record: SlotRecord | None = None
        self._slot_record_saved = 0.0
        self._advancing: concurrent.futures.Future[None] | None = None
        """The advance of the slot record being written on a thread, if any."""
        self._history = 0
        """Counts the records written by :meth:`save_slot_record`: an advance begun before the
        latest one is not installed."""
        self._advance_failure: OSError | None = None
        self.failure: FlushFailed | None = None
        """Set by a flush that failed; every later flush and idle call raises it."""

    def committed(self, lsn: int, end_lsn: int, commit_time: int = 0) -> None:
        """A transaction at ``lsn`` ending at ``end_lsn`` was written to its shapes' logs
        (``commit_time``: its pgoutput commit time, when known)."""
        if commit_time:
            self.commit_times.note(end_lsn, commit_time)
        self.last_commit_end = end_lsn
        self.last_seen_lsn = max(self.last_seen_lsn, lsn)

    def restart_at(self, lsn: int) -> None:
        """Every position starts over at ``lsn`` (a new slot history)."""
        self.durable_lsn = self.last_commit_end = lsn
        self.last_seen_lsn = lsn

    def on_idle(self, received_lsn: int, between: bool) -> int:
        """Make written logs durable and return the LSN Postgres may forget up to.

        ``between``: the stream is between transactions (none open, none spooled), so
        ``received_lsn`` itself is past every transaction.

        Logs are fsynced at most every ``flush_interval``; when that interval has not passed
        yet, a timer flushes them once it has (the next idle call then reports it), so that a
        burst's tail does not wait for the stream's next idle call to become durable.
        """
        if self.failure is not None:
            raise self.failure
        if between:
            self.last_seen_lsn = max(self.last_seen_lsn, received_lsn)
        if self.dirty and self._flushing is None:
            wait = self._last_flush + self._flush_interval - time.monotonic()
            if wait <= 0:
                self.start_flush()
            elif self._flush_timer is None:
                loop = asyncio.get_running_loop()
                self._flush_timer = loop.call_later(wait, self._timed_flush)
        if self.dirty or self._flushing is not None:
            return self.confirmable(self.pinned(self.durable_lsn))
        durable = self.last_commit_end
        if between:
            durable = max(durable, received_lsn)
        self.durable_lsn = max(self.durable_lsn, self.pinned(durable))
        return self.confirmable(self.durable_lsn)

    def _timed_flush(self) -> None:
        self._flush_timer = None
        if self.dirty:
            with contextlib.suppress(FlushFailed):  # kept in failure: the next idle call raises
                self.start_flush()

    def start_flush(self) -> None:
        """Begin making every log written so far durable, on the flush thread; the durable LSN
        advances when that is done. Does nothing while another flush runs (the logs written
        meanwhile stay dirty for the next one)."""
        self._cancel_timer()
        if self.failure is not None:
            raise self.failure
        if self._flushing is not None:
            return
        covered = self.last_commit_end
        batch, plan = self._plan()
        if plan.brief:
            self._run(batch, plan, covered)
            return
        self._flushing = asyncio.ensure_future(self._flush_in_background(batch, plan, covered))

    async def _flush_in_background(
        self, batch: list[ShapeState], plan: FlushPlan, covered: int
    ) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        if self._flusher is None:
            self._flusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syncd-flush")
        try:
            await loop.run_in_executor(self._flusher, plan.make_durable)
            if plan.install_metadata():
                await loop.run_in_executor(self._flusher, plan.sync_directories)
        except OSError as exc:
            self._failed(exc)  # the next idle call raises it
            return
        except BaseException:
            self.dirty.update(batch)  # cancelled: a later flush covers them
            raise
        finally:
            self._flushing = None
        self._finished(batch, plan, covered, time.perf_counter() - started)

    async def drain(self) -> None:
        """Wait for the running flush, if any (its failure is kept in :attr:`failure`)."""
        running = self._flushing
        if running is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(running)

    def flush_dirty(self) -> None:
        """Make every log written since the last flush durable on the calling thread; then all
        commits so far are durable. Call :meth:`drain` first if a flush may be running.

        Many dirty logs on the storage filesystem are made durable by one ``syncfs()``
        (``GroupSync``) instead of one ``fdatasync()`` each.
        """
        self._cancel_timer()
        if self.failure is not None:
            raise self.failure
        if self._flushing is not None:
            raise RuntimeError("a flush is running: drain() it first")
        covered = self.last_commit_end
        batch, plan = self._plan()
        self._run(batch, plan, covered)

    def _run(self, batch: list[ShapeState], plan: FlushPlan, covered: int) -> None:
        """Carry out ``plan`` on the calling thread."""
        started = time.perf_counter()
        try:
            plan.run()
        except OSError as exc:
            raise self._failed(exc) from exc
        self._finished(batch, plan, covered, time.perf_counter() - started)

    def _plan(self) -> tuple[list[ShapeState], FlushPlan]:
        """The shapes written since the last flush (the dirty set is emptied) and a plan to
        make their logs durable."""
        batch = [shape for shape in self.dirty if shape.status != "gone"]
        self.dirty.clear()
        return batch, plan_flush([shape.log for shape in batch], self.group_sync)

    def _finished(
        self, batch: list[ShapeState], plan: FlushPlan, covered: int, seconds: float
    ) -> None:
        plan.finish()
        self.on_flushed(seconds)
        if plan.left_pending:  # metadata rewritten while the flush ran
            left = set(plan.left_pending)
            self.dirty.update(shape for shape in batch if shape.log in left)
        self._last_flush = time.monotonic()
        self.durable_lsn = max(self.durable_lsn, self.pinned(covered))

    def _failed(self, exc: OSError) -> FlushFailed:
        log.critical("cannot make the shape logs durable, stopping: %s", exc)
        self.failure = FlushFailed(f"cannot make the shape logs durable: {exc}")
        return self.failure

    def _cancel_timer(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None

    def close_group_sync(self) -> None:
        """Release the group sync and the flush thread (after :meth:`drain`)."""
        if self.group_sync is not None:
            self.group_sync.close()
            self.group_sync = None
        if self._flusher is not None:
            self._flusher.shutdown(wait=True)
            self._flusher = None

    def pinned(self, lsn: int) -> int:
        """``lsn``, or the first transaction a snapshotting shape buffers if that is older."""
        # Only snapshotting shapes buffer transactions; the others leave the set here.
        for shape in list(self.snapshotting):
            if shape.status != "snapshotting":
                self.snapshotting.discard(shape)
                continue
            first = shape.first_buffered_lsn
            if first is not None and first <= lsn:
                lsn = first
        held = self.holding()
        if held is not None and held <= lsn:
            lsn = held
        return lsn

    def save_slot_record(self, record: SlotRecord) -> None:
        """Write ``record`` now, durably (the first record, or a new history): after the
        advance being written, if any, so that it cannot land over this one."""
        advancing = self._advancing
        if advancing is not None:
            concurrent.futures.wait([advancing])
        self._history += 1
        record.save(self._storage_dir)
        self.slot_record = record
        self._slot_record_saved = time.monotonic()

    def confirmable(self, lsn: int) -> int:
        """``lsn``, once the slot record says so durably; until then the record's position.

        The record is advanced on a thread (module docstring) at most every
        ``_SLOT_RECORD_INTERVAL``; the stream asks again within its ``idle_interval``.

        Raises:
            OSError: the last advance could not be written (the stream retries).
        """
        failure, self._advance_failure = self._advance_failure, None
        if failure is not None:
            raise failure
        record = self.slot_record
        if record is None or lsn <= record.confirmed_lsn:
            return lsn
        if (
            self._advancing is None
            and time.monotonic() - self._slot_record_saved >= _SLOT_RECORD_INTERVAL
        ):
            self._advance(record.advanced(lsn))
        return record.confirmed_lsn

    def _advance(self, record: SlotRecord) -> None:
        if self._flusher is None:
            self._flusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syncd-flush")
        loop = asyncio.get_running_loop()
        history = self._history
        advancing = self._flusher.submit(record.save, self._storage_dir)
        self._advancing = advancing

        def written(_: object) -> None:
            self._advancing = None
            error = advancing.exception()
            if isinstance(error, OSError):
                self._advance_failure = error
            elif error is not None:
                log.error("could not write the slot record", exc_info=error)
            elif history == self._history:
                self.slot_record = record
            self._slot_record_saved = time.monotonic()

        advancing.add_done_callback(lambda _: loop.call_soon_threadsafe(written, None))
