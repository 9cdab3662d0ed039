"""Low-level file I/O of a shape log: whole writes and reads at a position, new files, atomic
replacement, directory fsync, and directories removed in the background.

Layer: ``syncd`` (synchronous file I/O, no knowledge of the log format).
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

from syncd.log_format import StorageError


def _pwrite_all(fd: int, data: bytes, at: int) -> None:
    written = os.pwrite(fd, data, at)
    if written == len(data):  # the common case: one call
        return
    view = memoryview(data)[written:]
    at += written
    while view:
        written = os.pwrite(fd, view, at)
        view = view[written:]
        at += written


_IOV_MAX: Final = 1024


def _pwritev_all(fd: int, parts: list[bytes], at: int) -> None:
    """Write ``parts`` one after the other at ``at`` (``pwritev``, without joining them)."""
    if not hasattr(os, "pwritev"):
        _pwrite_all(fd, b"".join(parts), at)
        return
    for start in range(0, len(parts), _IOV_MAX):
        batch = parts[start : start + _IOV_MAX]
        size = sum(map(len, batch))
        written = os.pwritev(fd, batch, at)
        if written < size:  # a short write: the rest the slow way
            _pwrite_all(fd, b"".join(batch)[written:], at + written)
        at += size


def _pread_all(fd: int, size: int, at: int) -> bytes:
    data = os.pread(fd, size, at)
    if len(data) == size:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = os.pread(fd, size - got, at + got)
        if not more:
            raise StorageError(f"short read at {at + got}: the file shrank under the reader")
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _open_emptied(path: str | Path) -> int:
    """A descriptor for writing the file ``path``, made if missing, emptied if not."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)


def _atomic_write(directory: Path, name: str, data: bytes) -> None:
    """Replace ``directory/name`` with ``data``: tmp file, fsync, rename, fsync directory."""
    tmp = directory / f"{name}.tmp"
    fd = _open_emptied(tmp)
    try:
        _pwrite_all(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, directory / name)
    _fsync_dir(directory)


def _fsync_file(path: str | Path) -> None:
    """fsync the file at ``path`` (opened read-only for it)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


REMOVED_SUFFIX: Final = ".removed"
"""A directory whose name ends so is being removed (and is removed at start-up if a crash left
it)."""

_remover = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syncd-remove")


def remove_tree_soon(directory: Path) -> None:
    """Remove ``directory`` and everything in it, off the calling thread.

    The directory is renamed aside at once (one ``rename``, so its name is free and nothing
    finds it under it any more); the files, which can be many and large, are unlinked by a
    background thread. Where the rename cannot be made, the removal happens here and now.
    """
    aside = directory.with_name(directory.name + REMOVED_SUFFIX)
    try:
        directory.rename(aside)
    except OSError:
        shutil.rmtree(directory, ignore_errors=True)
        return
    _remover.submit(shutil.rmtree, aside, ignore_errors=True)
