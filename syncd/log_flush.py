"""Group flushing: many shape logs made durable with one ``syncfs()``.

Layer: ``syncd`` (synchronous file I/O, Linux ``syncfs`` through ctypes when available).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
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
    to a log on that filesystem before the call is on disk, and the log's descriptors are closed
    exactly as :meth:`ShapeLog.sync` would. The descriptor is a directory opened once (the
    engine's shapes directory), so no error between two group syncs goes unreported. Logs on
    other filesystems, few logs, or no ``syncfs()`` at all: :meth:`ShapeLog.sync` each.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._fd: int | None = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._device = os.fstat(self._fd).st_dev

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
            try:
                self._syncfs()
            finally:
                for log in together:
                    log._close_fds()
            # Deferred metadata: its data is durable now; rename it, then make the renames so.
            renamed = False
            for log in together:
                if log._meta_pending:
                    log._install_meta()
                    renamed = True
            if renamed:
                self._syncfs()

    def _syncfs(self) -> None:
        assert self._fd is not None and _syncfs is not None
        if _syncfs(self._fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"syncfs: {os.strerror(errno)}")

    def close(self) -> None:
        """Close the directory descriptor (later calls sync each log on its own)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


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
