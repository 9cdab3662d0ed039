"""Group flushing: many shape logs made durable with one ``syncfs()``.

Layer: ``syncd`` (synchronous file I/O, Linux ``syncfs`` through ctypes when available).
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

if TYPE_CHECKING:
    from syncd.storage import ShapeLog

GROUP_SYNC_MIN: Final = 8
"""From this many dirty logs on one filesystem, :class:`GroupSync` uses one ``syncfs()``."""


class GroupSync:
    """Makes many logs durable at once: one ``syncfs()`` instead of one ``fdatasync()`` each.

    ``syncfs()`` (Linux) writes back every dirty page and inode of one filesystem, waits for
    them and flushes the device, and reports any writeback error on that filesystem since the
    previous call on the same descriptor (Linux 5.8+). So after it returns, every byte appended
    to a log on that filesystem before the call is on disk. Unlike :meth:`ShapeLog.sync`, a log
    synced here keeps its append descriptors, up to ``open_logs`` logs (see
    :meth:`_keep_descriptors`). The descriptor is a directory opened once (the
    engine's shapes directory), so no error between two group syncs goes unreported. Logs on
    other filesystems, few logs, or no ``syncfs()`` at all: :meth:`ShapeLog.sync` each.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        open_logs: int | None = None,
        stale_after: float = 10.0,
    ) -> None:
        self._fd: int | None = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._device = os.fstat(self._fd).st_dev
        self._open_logs = open_logs if open_logs is not None else default_open_logs()
        self._stale_after = stale_after
        self._holding: OrderedDict[ShapeLog, float] = OrderedDict()
        """Synced logs that keep their append descriptors, with when they were last synced,
        least recently synced first."""

    def sync(self, logs: Iterable[ShapeLog]) -> None:
        """fsync the appends of every log in ``logs`` (as ``sync()`` on each would)."""
        together: list[ShapeLog] = []
        alone: list[ShapeLog] = []
        for log in logs:
            if log.dirty:
                (together if log.device == self._device else alone).append(log)
        if len(together) < GROUP_SYNC_MIN or self._fd is None or _syncfs is None:
            alone += together
            together = []
        for log in alone:
            log.sync()
        if together:
            assert self._fd is not None
            self._syncfs()
            self._keep_descriptors(together)
            # Deferred metadata: its data is durable now; rename it, then make the renames so.
            renamed = False
            for log in together:
                if log.meta.pending:
                    log.meta.install()
                    renamed = True
            if renamed:
                self._syncfs()

    def _keep_descriptors(self, synced: list[ShapeLog]) -> None:
        """Mark ``synced`` durable and let them keep their descriptors (a log appended to at
        every transaction would otherwise open and close its file each time), at most
        ``open_logs`` of them.

        Logs that already hold theirs keep them; logs not synced for ``stale_after`` seconds
        make room first. Beyond that, newcomers close theirs: with more busy logs than the
        limit, a fixed part of them keeps its descriptors, where evicting the least recently
        synced would make every log open its file again at each cycle.
        """
        now = time.monotonic()
        holding = self._holding
        newcomers: list[ShapeLog] = []
        for log in synced:
            log.mark_synced()
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

    def _syncfs(self) -> None:
        assert self._fd is not None and _syncfs is not None
        if _syncfs(self._fd) != 0:
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
