"""Sealing finished snapshots: the last rows, ``snapshot.done`` and the metadata made durable
for many shape logs at once.

Layer: ``syncd`` (synchronous file I/O).

Theory of operation
===================

A snapshot is *sealed* when every file a restart needs to serve it is durable: its chunks, the
``snapshot-end`` line, and how many chunks there are, recorded in the shape's ``meta.json``
when the caller gives metadata (:mod:`syncd.log_meta`), else in ``snapshot.done``. A restart
keeps a shape only if its ``meta.json`` says ready and the count is recorded in one of the two,
so a crash at any point of a seal either keeps the shape whole or discards it; a client is told
that a snapshot is complete only after its seal returned.

:func:`seal_snapshots` seals a batch of logs in five steps, each over the whole batch:

1. :meth:`SnapshotSeal.write`: the end line is appended, ``meta.json.tmp`` (or
   ``snapshot.done.tmp``) is written. Nothing is fsynced. The files exist already for a log
   made by :meth:`syncd.storage.ShapeLog.create`, so this step allocates nothing and only
   writes to the page cache: :func:`write_seals` runs it alone, on the event loop, and
   :func:`make_seals_durable` the other steps, on a thread.
2. The data is made durable: with a ``syncfs`` function (the batch is on one filesystem and
   large enough), one call for every file of the batch; otherwise each file's ``fsync()``, then
   its directory's (and, for a log made since the last restart, its parent directory's).
3. :meth:`SnapshotSeal.install`: the ``.tmp`` file is renamed into place.
4. The renames are made durable: one more ``syncfs``, or each directory's ``fsync()``.
5. :meth:`SnapshotSeal.done`: readers see a complete snapshot.

Alone, a seal costs about five fsyncs; in a batch of many it costs two ``syncfs()`` calls,
which is what lets a burst of new small shapes finish at the rate the disk flushes rather than
the rate it flushes files one by one. A log deleted while its seal runs (its directory removed
on the event loop) is dropped from the batch without failing the others.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from syncd.log_files import _fsync_dir, _fsync_file
from syncd.log_meta import MetaFile
from syncd.snapshot_writer import SnapshotWriter


class SnapshotSeal:
    """Finishing the snapshot of one log, in the steps :func:`seal_snapshots` runs for many.

    Made by :meth:`syncd.storage.ShapeLog.snapshot_seal`."""

    __slots__ = (
        "_directory",
        "_end_line",
        "_files",
        "_is_deleted",
        "_meta",
        "_meta_file",
        "_new_files",
        "_on_done",
        "_writer",
        "device",
        "dropped",
    )

    def __init__(
        self,
        *,
        writer: SnapshotWriter,
        end_line: bytes,
        directory: Path,
        device: int,
        meta_file: MetaFile,
        meta: Mapping[str, Any] | None,
        new_files: Sequence[str | Path],
        on_done: Callable[[], None],
        is_deleted: Callable[[], bool],
    ) -> None:
        self._writer = writer
        self._end_line = end_line
        self._directory = directory
        self.device = device
        """The ``st_dev`` of the log's filesystem."""
        self._meta_file = meta_file
        self._meta = meta
        self._new_files = tuple(new_files)
        """Files of a log created by this process and never fsynced (its directory is new to
        its parent too)."""
        self._on_done = on_done
        self._is_deleted = is_deleted
        self._files: list[str | Path] = []
        self.dropped = False
        """The log was deleted during the seal: nothing of it is made durable or marked done."""

    def write(self) -> None:
        """Step 1: the end line, and ``meta.json.tmp`` recording the chunk count (or, without
        metadata, ``snapshot.done.tmp``); no fsync."""
        meta = self._meta
        files = self._writer.write_end(self._end_line, done_file=meta is None)
        if meta is not None:
            self._meta_file.write(meta, defer=True, snapshot_chunks=self._writer.chunks)
            files.append(self._meta_file.tmp_path)
        self._files = [*self._new_files, *files]

    def sync_files(self) -> None:
        """Step 2, alone: each written file's data, then the directories naming them."""
        for path in self._files:
            _fsync_file(path)
        _fsync_dir(self._directory)
        if self._new_files:
            _fsync_dir(self._directory.parent)

    def install(self) -> None:
        """Step 3: rename ``meta.json.tmp`` (or ``snapshot.done.tmp``) into place."""
        if self._meta is None:
            self._writer.install_done()
        else:
            self._meta_file.install()

    def sync_installed(self) -> None:
        """Step 4, alone: the renames."""
        _fsync_dir(self._directory)

    def done(self) -> None:
        """Step 5: readers (and :attr:`ShapeLog.snapshot_complete`) see a complete snapshot."""
        self._writer.mark_done()
        if self._meta is not None:
            self._meta_file.snapshot_chunks = self._writer.chunks
        self._on_done()

    def attempt(self, step: Callable[[SnapshotSeal], None]) -> None:
        """Run ``step`` on this seal unless it was dropped; a log deleted meanwhile drops it."""
        if self.dropped:
            return
        try:
            step(self)
        except FileNotFoundError:
            if not self._is_deleted():
                raise
            self.dropped = True


def seal_snapshots(seals: Sequence[SnapshotSeal], syncfs: Callable[[], None] | None = None) -> None:
    """Seal every snapshot of ``seals`` (module docstring); ``syncfs`` makes every file of the
    filesystem that holds them all durable (``None``: each file is fsynced alone).

    Raises:
        OSError: a write or a flush failed; no seal of the batch may be trusted (the logs stay
            as they were on disk: a restart discards them).
        ValueError: an end line holds a newline.
    """
    write_seals(seals)
    make_seals_durable(seals, syncfs)


def write_seals(seals: Sequence[SnapshotSeal]) -> None:
    """Step 1 of :func:`seal_snapshots` for every seal of ``seals``.

    For logs made by :meth:`syncd.storage.ShapeLog.create`, which made the files this step
    writes (the first chunk and ``meta.json.tmp``), a small snapshot's step is writes to the
    page cache with nothing to allocate: the event loop can run it, where a thread would wait
    for the interpreter lock between its system calls.

    Raises:
        OSError: a write failed (the logs stay as they were on disk: a restart discards them).
        ValueError: an end line holds a newline.
    """
    _each(seals, SnapshotSeal.write)


def make_seals_durable(
    seals: Sequence[SnapshotSeal], syncfs: Callable[[], None] | None = None
) -> None:
    """Steps 2 to 5 of :func:`seal_snapshots`, after :func:`write_seals` (blocking: call it on a
    thread).

    Raises:
        OSError: a flush or a rename failed; no seal of the batch may be trusted.
    """
    _durable(seals, syncfs, SnapshotSeal.sync_files)
    _each(seals, SnapshotSeal.install)
    _durable(seals, syncfs, SnapshotSeal.sync_installed)
    _each(seals, SnapshotSeal.done)


def _each(seals: Sequence[SnapshotSeal], step: Callable[[SnapshotSeal], None]) -> None:
    for seal in seals:
        seal.attempt(step)


def _durable(
    seals: Sequence[SnapshotSeal],
    syncfs: Callable[[], None] | None,
    alone: Callable[[SnapshotSeal], None],
) -> None:
    """What the last step wrote, made durable: by ``syncfs`` for all, else by each seal's
    ``alone`` step."""
    if syncfs is not None:
        syncfs()
    else:
        _each(seals, alone)
