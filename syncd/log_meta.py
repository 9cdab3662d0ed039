"""A shape log's metadata file, ``meta.json``: replaced atomically, now or at the next sync.

Layer: ``syncd`` (synchronous file I/O). :class:`MetaFile` is the metadata part of
:class:`syncd.storage.ShapeLog`; a deferred write leaves ``meta.json.tmp`` for the log's next
sync (or :class:`syncd.log_flush.GroupSync`) to fsync and rename over ``meta.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from syncd.log_files import _atomic_write, _fsync_file, _pwrite_all
from syncd.log_format import META_FILE, StorageError


class MetaFile:
    """The metadata of one shape log, and a deferred replacement if one is pending."""

    __slots__ = ("_dir", "pending", "writes")

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self.pending = False
        """``meta.json.tmp`` holds metadata waiting for :meth:`install` (its data not yet
        durable until the log is synced)."""
        self.writes = 0
        """How many times :meth:`write` ran: a flush installs a pending file only if no write
        replaced it after the flush made it durable."""

    def write(self, meta: Mapping[str, Any], *, defer: bool = False) -> None:
        """See :meth:`syncd.storage.ShapeLog.write_meta`."""
        data = json.dumps(dict(meta), separators=(",", ":"), sort_keys=True).encode()
        self.writes += 1
        if defer:
            fd = os.open(self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
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
            os.replace(self.tmp_path, self._dir / META_FILE)
            self.pending = False

    def read(self) -> dict[str, Any]:
        """The dict last written without ``defer`` or installed, or ``{}`` if there is none."""
        try:
            data = (self._dir / META_FILE).read_bytes()
        except FileNotFoundError:
            return {}
        meta = json.loads(data)
        if not isinstance(meta, dict):
            raise StorageError(f"{self._dir / META_FILE}: not a JSON object")
        return meta

    @property
    def tmp_path(self) -> Path:
        """Where a deferred write goes before :meth:`install`."""
        return self._dir / f"{META_FILE}.tmp"
