"""A shape log's metadata file, ``meta.json``: replaced atomically, now or at the next sync.

Layer: ``syncd`` (synchronous file I/O). :class:`MetaFile` is the metadata part of
:class:`syncd.storage.ShapeLog`; a deferred write leaves ``meta.json.tmp`` for the log's next
sync (or :class:`syncd.log_flush.GroupSync`) to fsync and rename over ``meta.json``.

The file holds the caller's dict and, under the key :data:`LOG_KEY` that the log reserves for
itself, what the log must know at a restart: once the snapshot is sealed with metadata, how many
chunks it has (``{"snapshot_chunks": n}``). A seal with metadata thus needs no
``snapshot.done`` file of its own, one file (and inode) less per shape; the caller's later writes
keep the field, and :meth:`MetaFile.read` leaves it out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import msgspec

from syncd.log_files import _atomic_write, _fsync_file, _open_emptied, _pwrite_all
from syncd.log_format import META_FILE, META_TMP_FILE, StorageError, file_in

LOG_KEY: Final = "log"
"""The key of ``meta.json`` that holds the log's own fields (callers may not use it)."""


class MetaFile:
    """The metadata of one shape log, and a deferred replacement if one is pending."""

    __slots__ = ("_dir", "pending", "snapshot_chunks", "writes")

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self.snapshot_chunks: int | None = None
        """The sealed snapshot's chunk count once the file records it (every write keeps it)."""
        self.pending = False
        """``meta.json.tmp`` holds metadata waiting for :meth:`install` (its data not yet
        durable until the log is synced)."""
        self.writes = 0
        """How many times :meth:`write` ran: a flush installs a pending file only if no write
        replaced it after the flush made it durable."""

    def write(
        self, meta: Mapping[str, Any], *, defer: bool = False, snapshot_chunks: int | None = None
    ) -> None:
        """See :meth:`syncd.storage.ShapeLog.write_meta`; ``snapshot_chunks`` (a seal's) is
        recorded instead of :attr:`snapshot_chunks`.

        Raises:
            ValueError: ``meta`` uses the reserved key :data:`LOG_KEY`.
        """
        if LOG_KEY in meta:
            raise ValueError(f"the metadata key {LOG_KEY!r} is reserved for the log")
        stored = dict(meta)
        chunks = self.snapshot_chunks if snapshot_chunks is None else snapshot_chunks
        if chunks is not None:
            stored[LOG_KEY] = {"snapshot_chunks": chunks}
        data = msgspec.json.encode(stored, order="sorted")
        self.writes += 1
        if defer:
            fd = _open_emptied(self.tmp_path)
            try:
                _pwrite_all(fd, data, 0)
            finally:
                os.close(fd)
            self.pending = True
            return
        _atomic_write(self._dir, META_FILE, data)
        self.pending = False

    def sync_pending(self) -> None:
        """fsync a pending ``meta.json.tmp`` (before :meth:`install`); no-op without one."""
        if not self.pending:
            return
        _fsync_file(self.tmp_path)

    def install(self) -> None:
        """Rename a pending ``meta.json.tmp`` over ``meta.json`` (its data must be durable)."""
        if self.pending:
            os.replace(self.tmp_path, file_in(self._dir, META_FILE))
            self.pending = False

    def read(self) -> dict[str, Any]:
        """The dict last written without ``defer`` or installed, or ``{}`` if there is none."""
        meta = _read_stored(self._dir)
        meta.pop(LOG_KEY, None)
        return meta

    @property
    def tmp_path(self) -> str:
        """Where a deferred write goes before :meth:`install`."""
        return file_in(self._dir, META_TMP_FILE)


def _read_stored(directory: Path) -> dict[str, Any]:
    """The whole object in ``meta.json`` (the log's field included), ``{}`` without the file."""
    try:
        data = (directory / META_FILE).read_bytes()
    except FileNotFoundError:
        return {}
    meta = json.loads(data)
    if not isinstance(meta, dict):
        raise StorageError(f"{directory / META_FILE}: not a JSON object")
    return meta


def stored_snapshot_chunks(directory: Path) -> int | None:
    """The sealed snapshot's chunk count recorded in ``directory``'s ``meta.json``, if any.

    Raises:
        StorageError: the file or its field is malformed.
    """
    try:
        fields = _read_stored(directory).get(LOG_KEY)
    except ValueError as exc:  # json.JSONDecodeError
        raise StorageError(f"{directory / META_FILE}: {exc}") from exc
    if fields is None:
        return None
    count = fields.get("snapshot_chunks") if isinstance(fields, dict) else None
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise StorageError(f"{directory / META_FILE}: malformed {LOG_KEY!r} field")
    return count
