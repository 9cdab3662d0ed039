"""Flushing shape logs: many made durable with one ``syncfs()``, the waiting off the event loop.

Layer: ``syncd`` (synchronous file I/O, Linux ``syncfs`` through ctypes when available).

Theory of operation
===================

A flush is a :class:`FlushPlan`, made by :meth:`GroupSync.plan` on the thread that appends (the
event loop) and carried out in five steps, so that what waits for the disk can run on another
thread while the appends go on:

1. ``plan`` (appending thread): the dirty logs are split into those made durable together, with
   one ``syncfs()`` of the filesystem, and those made durable alone, with ``fdatasync()`` on
   duplicates of their append descriptors. Each log's count of writes and its pending
   metadata's :attr:`MetaFile.writes` are noted (:meth:`ShapeLog.flush_note`): they are what
   this flush covers.
2. :meth:`FlushPlan.make_durable` (any thread): the ``syncfs()`` or the ``fdatasync()`` calls,
   and an ``fsync()`` of each pending ``meta.json.tmp`` made durable alone.
3. :meth:`FlushPlan.install_metadata` (appending thread): each pending metadata file that no
   write replaced since step 1 is renamed over ``meta.json``; one written meanwhile waits for
   the next flush, since this one may not have covered its bytes.
4. :meth:`FlushPlan.sync_directories` (any thread): the renames made durable.
5. :meth:`FlushPlan.finish` (appending thread): each log is marked durable up to the writes
   noted in step 1 (appends made meanwhile keep it dirty), and descriptors are kept or closed.

Appends between the steps are safe: the appending thread never waits for the other one, and the
other one touches only the filesystem descriptor, its own duplicated descriptors, and paths of
files that step 3, the only step that renames, leaves alone until step 2 is over. A log deleted
meanwhile is skipped. :meth:`FlushPlan.run` does the five steps in a row on the calling thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from syncd.log_files import _fsync_dir

if TYPE_CHECKING:
    from syncd.storage import ShapeLog

GROUP_SYNC_MIN: Final = 8
"""From this many dirty logs on one filesystem, :class:`GroupSync` uses one ``syncfs()``."""


class FlushPlan:
    """One flush of a set of shape logs, in the steps the module docstring describes."""

    __slots__ = (
        "_alone",
        "_descriptors",
        "_group",
        "_renamed_alone",
        "_renamed_together",
        "_together",
        "left_pending",
    )

    def __init__(
        self,
        group: GroupSync | None,
        together: list[tuple[ShapeLog, int, int | None]],
        alone: list[tuple[ShapeLog, int, int | None]],
    ) -> None:
        """Internal: use :meth:`GroupSync.plan` (or :func:`plan_flush` without a group)."""
        self._group = group
        self._together = together
        """Logs covered by one ``syncfs()``: (log, its writes, its pending metadata's writes)."""
        self._alone = alone
        """Logs made durable one by one, noted the same way."""
        self._descriptors = [log.duplicate_descriptors() for log, _w, _m in alone]
        self._renamed_together = False
        self._renamed_alone: list[ShapeLog] = []
        self.left_pending: list[ShapeLog] = []
        """Logs whose metadata was rewritten while the flush ran: still dirty, for the next."""

    @property
    def empty(self) -> bool:
        """No log to flush."""
        return not (self._together or self._alone)

    @property
    def brief(self) -> bool:
        """Only a few logs, each made durable alone: cheaper on the appending thread than
        handed to another one and back (a hop that can cost a loaded machine's event loop a
        scheduler time slice)."""
        return not self._together and len(self._alone) < GROUP_SYNC_MIN

    def make_durable(self) -> None:
        """Step 2 (any thread): put every noted write on disk.

        Raises:
            OSError: a write-back error; nothing of this flush may be trusted.
        """
        try:
            if self._together:
                assert self._group is not None
                self._group.syncfs()
            for (log, _writes, meta_writes), fds in zip(
                self._alone, self._descriptors, strict=True
            ):
                for fd in fds:
                    os.fdatasync(fd)
                if meta_writes is not None:
                    _unless_deleted(log, log.meta.sync_pending)
        finally:
            self.close_descriptors()

    def close_descriptors(self) -> None:
        """Close the duplicated descriptors (done by :meth:`make_durable`; call it when a plan
        is dropped before that step)."""
        descriptors, self._descriptors = self._descriptors, [[] for _ in self._alone]
        for fds in descriptors:
            for fd in fds:
                os.close(fd)

    def install_metadata(self) -> bool:
        """Step 3 (appending thread): rename the metadata files step 2 made durable; True if
        any was renamed."""
        self._renamed_together = bool(list(_installed(self._together, self.left_pending)))
        self._renamed_alone = list(_installed(self._alone, self.left_pending))
        return self._renamed_together or bool(self._renamed_alone)

    def sync_directories(self) -> None:
        """Step 4 (any thread): make the renames of step 3 durable.

        Raises:
            OSError: as :meth:`make_durable`.
        """
        if self._renamed_together:
            assert self._group is not None
            self._group.syncfs()
        for log in self._renamed_alone:
            _unless_deleted(log, lambda log=log: _fsync_dir(log.directory))

    def finish(self) -> None:
        """Step 5 (appending thread): mark what the flush covered as durable."""
        if self._group is not None:
            # made durable together or alone, a log may keep its append descriptors: the one
            # live log of a quiet moment would otherwise open and close its file every commit
            self._group.keep_descriptors([*self._together, *self._alone])
            return
        for log, writes, _m in self._alone:
            if not log.deleted:
                log.mark_synced(writes)
                log.close_descriptors()

    def run(self) -> None:
        """Every step in a row on the calling thread."""
        self.make_durable()
        if self.install_metadata():
            self.sync_directories()
        self.finish()


def plan_flush(logs: Iterable[ShapeLog], group: GroupSync | None) -> FlushPlan:
    """A flush of the dirty logs among ``logs``: through ``group`` when there is one (see
    :meth:`GroupSync.plan`), else each log alone."""
    if group is not None:
        return group.plan(logs)
    return FlushPlan(None, [], [n for log in logs if (n := log.flush_note()) is not None])


def _installed(
    noted: list[tuple[ShapeLog, int, int | None]], left_pending: list[ShapeLog]
) -> Iterable[ShapeLog]:
    """Install the pending metadata noted in ``noted`` that no write replaced since; yield
    each log whose metadata was renamed, and add those left pending to ``left_pending``."""
    for log, _writes, meta_writes in noted:
        if meta_writes is None or log.deleted:
            continue
        meta = log.meta
        if meta_writes == meta.writes and meta.pending:
            meta.install()
            yield log
        elif meta.pending:
            left_pending.append(log)


def _unless_deleted(log: ShapeLog, action: Any) -> None:
    """Run ``action``, which touches ``log``'s files by path; a log deleted meanwhile (on the
    appending thread) has nothing left to make durable."""
    try:
        action()
    except FileNotFoundError:
        if not log.deleted:
            raise


class GroupSync:
    """Makes many logs durable at once: one ``syncfs()`` instead of one ``fdatasync()`` each.

    ``syncfs()`` (Linux) writes back every dirty page and inode of one filesystem, waits for
    them and flushes the device, and reports any writeback error on that filesystem since the
    previous call on the same descriptor (Linux 5.8+). So after it returns, every byte appended
    to a log on that filesystem before the call is on disk. Unlike :meth:`ShapeLog.sync`, a log
    flushed through a plan of the group (together or alone) keeps its append descriptors, up to
    ``open_logs`` logs (see :meth:`keep_descriptors`). The descriptor is a directory opened
    once (the engine's shapes directory), so no error between two group syncs goes unreported.
    Logs on other filesystems, few logs, or no ``syncfs()`` at all: each alone.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        open_logs: int | None = None,
        stale_after: float = 10.0,
    ) -> None:
        self._fd: int | None = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.device = os.fstat(self._fd).st_dev
        """The filesystem this group syncs."""
        self._open_logs = open_logs if open_logs is not None else default_open_logs()
        self._stale_after = stale_after
        self._holding: OrderedDict[ShapeLog, float] = OrderedDict()
        """Synced logs that keep their append descriptors, with when they were last synced,
        least recently synced first."""

    def plan(self, logs: Iterable[ShapeLog]) -> FlushPlan:
        """Step 1 of a flush (module docstring) of the dirty logs among ``logs``."""
        together: list[tuple[ShapeLog, int, int | None]] = []
        alone: list[tuple[ShapeLog, int, int | None]] = []
        device = self.device
        for log in logs:
            noted = log.flush_note()
            if noted is not None:
                (together if log.device == device else alone).append(noted)
        if len(together) < GROUP_SYNC_MIN or self._fd is None or _syncfs is None:
            alone += together
            together = []
        return FlushPlan(self, together, alone)

    def sync(self, logs: Iterable[ShapeLog]) -> None:
        """fsync the appends of every log in ``logs`` (as ``sync()`` on each would)."""
        self.plan(logs).run()

    def keep_descriptors(self, synced: list[tuple[ShapeLog, int, int | None]]) -> None:
        """Mark the logs in ``synced`` (noted by :meth:`ShapeLog.flush_note`) durable and,
        unless deleted since, let them keep their descriptors (a log appended to at every
        transaction would otherwise open and close its file each time), at most ``open_logs``
        of them.

        Logs that already hold theirs keep them; logs not synced for ``stale_after`` seconds
        make room first. Beyond that, newcomers close theirs: with more busy logs than the
        limit, a fixed part of them keeps its descriptors, where evicting the least recently
        synced would make every log open its file again at each cycle.
        """
        now = time.monotonic()
        holding = self._holding
        newcomers: list[ShapeLog] = []
        for log, writes, _meta_writes in synced:
            log.mark_synced(writes)
            if log.deleted:
                continue
            if log in holding:
                holding.move_to_end(log)
                holding[log] = now
            else:
                newcomers.append(log)
        limit = self._open_logs
        while holding and len(holding) + len(newcomers) > limit:
            oldest, synced_at = next(iter(holding.items()))
            if now - synced_at < self._stale_after:
                break
            del holding[oldest]
            oldest.close_descriptors()
        room = max(limit - len(holding), 0)
        for log in newcomers[:room]:
            holding[log] = now
        for log in newcomers[room:]:
            log.close_descriptors()

    @property
    def available(self) -> bool:
        """Whether :meth:`syncfs` can be called (Linux, and the group is open)."""
        return self._fd is not None and _syncfs is not None

    def syncfs(self) -> None:
        """``syncfs()`` the group's filesystem (any thread).

        Raises:
            OSError: a write-back error on the filesystem since the previous call.
        """
        fd = self._fd
        if fd is None or _syncfs is None:
            raise OSError("the group sync is closed")
        if _syncfs(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"syncfs: {os.strerror(errno)}")

    def close(self) -> None:
        """Close the directory descriptor (later calls sync each log on its own) and the
        descriptors synced logs kept."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        holding, self._holding = self._holding, OrderedDict()
        for log in holding:
            log.close_descriptors()


def default_open_logs() -> int:
    """How many synced logs keep their descriptors: half of the process's descriptor limit
    (the other half serves connections, snapshots and readers).

    A busy log beyond this number opens and closes its file at every flush cycle, which costs
    as much as the append itself, so logs get an equal share with connections."""
    try:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return 256
    if soft == resource.RLIM_INFINITY:
        return 16_384
    return max(64, min(soft // 2, 16_384))


def _load_syncfs() -> Any:
    if not hasattr(os, "sched_getaffinity"):  # not Linux
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_syncfs: Final = _load_syncfs()
