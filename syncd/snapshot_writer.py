"""Writing a shape's snapshot chunks: rows appended in order, chunks cut as they fill, and the
``snapshot-end`` line that makes the snapshot durable and done.

Layer: ``syncd`` (synchronous file I/O). :class:`SnapshotWriter` is the write side of the
snapshot files described in :mod:`syncd.storage`; it publishes each closed chunk to the log's
:class:`~syncd.log_reader.LogReader`, which serves them to clients while later ones are written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from syncd.log_files import _pwritev_all
from syncd.log_format import READ_MEMO_BYTES, SNAPSHOT_DONE_FILE, _snapshot_path, _SnapshotView
from syncd.log_reader import LogReader

HELD_BYTES: Final = 64 * 1024
"""Most bytes of the open chunk held in memory before they are written to its file."""


class SnapshotWriter:
    """Appends the snapshot rows of one shape log and finishes its snapshot."""

    __slots__ = (
        "_acc",
        "_chunk_bytes",
        "_dir",
        "_held",
        "_held_bytes",
        "_reader",
        "_unsynced",
        "_writable",
        "_written",
        "chunks",
    )

    def __init__(self, directory: Path, chunk_bytes: int, reader: LogReader, chunks: int) -> None:
        self._dir = directory
        self._chunk_bytes = chunk_bytes
        self._reader = reader
        self.chunks = chunks
        """Snapshot chunk files, including one still being written."""
        self._acc = 0
        self._unsynced: set[int] = set()
        self._writable = not reader.snapshot.complete and chunks == 0
        """Only a snapshot begun by this process, and not finished or broken, takes rows."""
        self._held: list[bytes] = []
        """Lines of the open chunk not written yet (see :data:`HELD_BYTES`)."""
        self._held_bytes = 0
        self._written = 0
        """Bytes written to the open chunk's file so far."""

    def append_rows(self, lines: Iterable[bytes]) -> None:
        """See :meth:`syncd.storage.ShapeLog.append_snapshot_rows`."""
        self._check_writable()
        limit = self._chunk_bytes
        acc = self._acc
        parts: list[bytes] = []
        try:
            for line in lines:
                if b"\n" in line:
                    raise ValueError("a snapshot line must not contain a newline")
                parts.append(line)
                acc += len(line) + 1
                if acc >= limit:
                    self._write_chunk(parts, close=True)
                    parts = []
                    acc = 0
            if parts:
                self._write_chunk(parts, close=False)
        except BaseException:
            self._writable = False
            raise
        self._acc = acc

    def append_lines(self, data: bytes) -> None:
        """See :meth:`syncd.storage.ShapeLog.append_snapshot_lines`."""
        self._check_writable()
        limit = self._chunk_bytes
        acc = self._acc
        start = 0
        try:
            if data and not data.endswith(b"\n"):
                raise ValueError("snapshot lines must each end in a newline")
            while start < len(data):
                # the line whose newline brings the chunk to ``limit`` bytes closes it, as in
                # append_rows: its newline is the first at or after this position
                end = data.find(b"\n", start + max(0, limit - acc - 1))
                if end < 0:
                    self._write(data[start:] if start else data, close=False)
                    acc += len(data) - start
                    break
                self._write(data[start : end + 1], close=True)
                acc = 0
                start = end + 1
        except BaseException:
            self._writable = False
            raise
        self._acc = acc

    def write_end(self, end_line: bytes, *, done_file: bool = True) -> list[str | Path]:
        """Step 1 of a seal (:class:`SnapshotSeal`): append ``end_line`` and, with
        ``done_file``, write ``snapshot.done.tmp``, neither fsynced (:attr:`chunks` is then the
        count a seal without that file records elsewhere); returns the files whose data the
        seal must make durable (every chunk written by this process, and that file)."""
        self._check_writable()
        if b"\n" in end_line:
            raise ValueError("a snapshot line must not contain a newline")
        count = self._reader.snapshot.closed + 1
        self._write_chunk([end_line], close=False, hold=False)
        self._writable = False  # finished or broken from here on: no more rows either way
        self.chunks = count
        files: list[str | Path] = [_snapshot_path(self._dir, k) for k in sorted(self._unsynced)]
        if done_file:
            done_tmp = self._dir / f"{SNAPSHOT_DONE_FILE}.tmp"
            with open(done_tmp, "wb") as f:
                f.write(json.dumps({"chunks": count}).encode())
            files.append(done_tmp)
        return files

    def install_done(self) -> None:
        """Step 3 of a seal that wrote ``snapshot.done.tmp``: rename it (its data durable)
        into place."""
        os.replace(self._dir / f"{SNAPSHOT_DONE_FILE}.tmp", self._dir / SNAPSHOT_DONE_FILE)

    def mark_done(self) -> None:
        """Step 5 of a seal: everything is durable; readers see a complete snapshot."""
        self._unsynced.clear()
        if self._written <= READ_MEMO_BYTES:
            self._reader.small_last_chunk = self.chunks - 1
        self._reader.snapshot = _SnapshotView(self.chunks, True)

    def _check_writable(self) -> None:
        if not self._writable:
            state = "finished" if self._reader.snapshot.complete else "interrupted or broken"
            raise RuntimeError(f"the snapshot of {self._dir} was {state}")

    def _write_chunk(self, lines: list[bytes], *, close: bool, hold: bool = True) -> None:
        lines.append(b"")
        self._write(b"\n".join(lines), close=close, hold=hold)

    def _write(self, data: bytes, *, close: bool, hold: bool = True) -> None:
        """Append whole lines to the open chunk; ``close`` ends it with them.

        Lines that neither close the chunk nor bring what is held to :data:`HELD_BYTES` are
        held in memory (with ``hold``): a small snapshot's rows reach its file with the end
        line, in the seal (on a thread), instead of in a file write of their own on the
        event loop. Nobody reads the open chunk before then."""
        k = self._reader.snapshot.closed
        self.chunks = k + 1
        if hold and not close and self._held_bytes + len(data) < HELD_BYTES:
            self._held.append(data)
            self._held_bytes += len(data)
            return
        held, self._held, self._held_bytes = self._held, [], 0
        held.append(data)
        # Three system calls, each of which lets another thread take the interpreter lock
        # (a buffered file object would make six).
        fd = os.open(_snapshot_path(self._dir, k), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            _pwritev_all(fd, held, self._written)
        finally:
            os.close(fd)
        self._written += sum(map(len, held))
        self._unsynced.add(k)
        if close:
            self._written = 0
            self._reader.snapshot = _SnapshotView(k + 1, False)
