"""Reading a shape log: whole chunks (:meth:`LogReader.read`), read plans, bounded pieces of
the change log and of snapshot chunks, and the memo of the latest small read.

Layer: ``syncd`` (synchronous file I/O; safe in worker threads while the owner appends).

Theory of operation
===================

The owner (:class:`~syncd.storage.ShapeLog`) publishes its committed state here: ``view`` (an
immutable :class:`~syncd.log_format._LogView` swapped in after each complete write),
``snapshot`` and ``tx_starts``. A read captures ``view`` once, and never reads past the
committed log length or index count it captured, so a concurrent append cannot be seen
half-written. The chunk holding an offset is found from the last four boundaries kept in memory,
else by binary search over ``chunks.idx`` with ``pread``; the reader then reads that one chunk
(one ``pread``) and scans it from its start (or from the recent start of the offset's
transaction, when known). Reads open and close their own descriptors.

Compaction (:mod:`syncd.log_compaction`) moves the log to new files, a new *generation*, and
deletes the old ones. A read that captured the old view may then find its files gone: it starts
over with the new view. Positions handed out (:attr:`LogPiece.position`) carry their generation,
and the transaction starts (``tx_starts``) are kept per generation, so a position of the old
files is never used in the new ones.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

from shapes.offset import INF, SNAPSHOT_END, LogOffset
from syncd.log_files import _pread_all
from syncd.log_format import (
    _HEADER_SIZE,
    _INDEX_MAGIC,
    _INDEX_RECORD_SIZE,
    _RECORD,
    _SCAN_BLOCK,
    _U64_LIMIT,
    READ_MEMO_BYTES,
    LogPiece,
    ReadPlan,
    SnapshotIncomplete,
    StorageError,
    _Boundary,
    _decode_boundary,
    _LogView,
    _snapshot_path,
    _SnapshotView,
    file_in,
    index_file_name,
    log_file_name,
    tag_position,
    untag_position,
)

_REREADS: Final = 3
"""Times a read starts over when a compaction replaced the files under it."""

__all__ = ["LogReader"]

_T = TypeVar("_T")


_LINE_BLOCK: Final = 1 << 16
"""Bytes read at a time while looking for the end of a line longer than a piece."""


class LogReader:
    """The read side of one shape log, over the committed state its owner publishes."""

    __slots__ = (
        "_dir",
        "_last_piece",
        "_last_read",
        "small_last_chunk",
        "snapshot",
        "tx_starts",
        "view",
    )

    def __init__(self, directory: Path, view: _LogView, snapshot: _SnapshotView) -> None:
        self._dir = directory
        self.view = view
        """The committed change-log state (replaced as a whole by the owner)."""
        self.snapshot = snapshot
        """The closed snapshot chunks and whether the snapshot is complete."""
        self.small_last_chunk = -1
        """The last snapshot chunk, when this process wrote it and it holds at most
        :data:`READ_MEMO_BYTES` (a new small shape's whole snapshot): in the page cache, and
        read at once rather than on a thread; -1 otherwise."""
        self.tx_starts: tuple[int, list[tuple[int, int]]] = (view.generation, [])
        """A generation and the ``(tx, position)`` of recently committed transactions in it,
        so that a read near the end of a long open chunk starts at its transaction instead of
        the chunk's first record."""
        self._last_read: tuple[_LogView, LogOffset, tuple[bytes, ...], LogOffset] | None = None
        """The latest small change-log read: every live reader woken by one commit asks for the
        same offset of the same view, so all but the first are answered from here."""
        self._last_piece: tuple[_LogView, tuple[LogOffset, int, LogOffset], LogPiece] | None = None
        """The same for :meth:`read_piece`."""

    def _start_of(self, view: _LogView, tx: int) -> int:
        """A record position at or before the first record of ``tx``'s successors (0: unknown)."""
        generation, starts = self.tx_starts
        if generation != view.generation:
            return 0
        i = bisect.bisect_right(starts, (tx, _U64_LIMIT)) - 1
        return starts[i][1] if i >= 0 else 0

    def _log_path(self, view: _LogView) -> str:
        return file_in(self._dir, log_file_name(view.generation))

    def _index_path(self, view: _LogView) -> str:
        return file_in(self._dir, index_file_name(view.generation))

    def _rereading(self, read: Callable[[], _T]) -> _T:
        """``read()``, again when a compaction deleted the files it was reading."""
        for _ in range(_REREADS):
            generation = self.view.generation
            try:
                return read()
            except FileNotFoundError:
                if self.view.generation == generation:
                    raise
        return read()

    def read(self, offset: LogOffset) -> tuple[list[bytes], LogOffset]:
        """The JSON lines of the chunk after ``offset`` and that chunk's end offset.

        ``-1``: snapshot chunk 0, end ``0_0``. ``0_k`` below the last snapshot chunk: chunk
        ``k+1``, end ``0_(k+1)``. Otherwise the change-log entries strictly after ``offset`` up to
        the end of the chunk holding it (the latest entry if that chunk is open), and the offset
        of the last one returned; with nothing to return, ``offset`` itself (``0_inf`` for a
        snapshot offset). Safe to call from another thread while the owner appends.

        Raises:
            SnapshotIncomplete: a snapshot offset whose answer depends on chunks not yet closed.
        """
        if offset.tx < 0:
            return self._read_snapshot_chunk(0), LogOffset(0, 0)
        if offset.tx == 0 and offset.op != INF:
            snap = self.snapshot
            next_chunk = offset.op + 1
            if next_chunk < snap.closed:
                return self._read_snapshot_chunk(next_chunk), LogOffset(0, next_chunk)
            if not snap.complete:
                raise SnapshotIncomplete(f"snapshot chunk {next_chunk} of {self._dir} is not ready")
            offset = SNAPSHOT_END
        return self._rereading(lambda: self._read_log(offset))

    def plan_read(self, offset: LogOffset) -> ReadPlan:
        """Where :meth:`read` of ``offset`` would read and the end offset it would return.

        Raises:
            SnapshotIncomplete: as :meth:`read`.
        """
        if offset.tx < 0:
            self._check_snapshot_chunk(0)
            return ReadPlan(0, offset, LogOffset(0, 0))
        if offset.tx == 0 and offset.op != INF:
            snap = self.snapshot
            next_chunk = offset.op + 1
            if next_chunk < snap.closed:
                return ReadPlan(next_chunk, offset, LogOffset(0, next_chunk))
            if not snap.complete:
                raise SnapshotIncomplete(f"snapshot chunk {next_chunk} of {self._dir} is not ready")
            offset = SNAPSHOT_END
        return self._rereading(lambda: self._plan_log_read(offset))

    def _plan_log_read(self, offset: LogOffset) -> ReadPlan:
        view = self.view
        if view.latest == SNAPSHOT_END or offset >= view.latest:
            return ReadPlan(None, offset, offset)
        return ReadPlan(None, offset, self._chunk_end(view, offset))

    def _chunk_end(self, view: _LogView, offset: LogOffset) -> LogOffset:
        """Offset of the last entry of the chunk holding the first entry after ``offset``."""
        recent = view.recent
        first_cached = view.chunks - len(recent)
        with _IndexReader(self._index_path(view), recent, first_cached) as index:
            lo, hi = (
                (first_cached, view.chunks)
                if recent and offset >= recent[0].end
                else (0, first_cached)
            )
            while lo < hi:
                mid = (lo + hi) // 2
                if index.boundary(mid).end > offset:
                    hi = mid
                else:
                    lo = mid + 1
            return view.latest if lo == view.chunks else index.boundary(lo).end

    def read_snapshot_piece(
        self, k: int, position: int, max_bytes: int
    ) -> tuple[list[bytes], int, bool]:
        """The lines of snapshot chunk ``k`` from byte ``position`` (a line start): as many as
        fit in ``max_bytes`` (at least one), the position after them, and whether that is the
        chunk's end."""
        data, position, done = self._read_snapshot_lines(k, position, max_bytes)
        lines = data.split(b"\n")
        lines.pop()
        return lines, position, done

    def read_snapshot_joined(
        self, k: int, position: int, max_bytes: int
    ) -> tuple[list[bytes], int, bool]:
        """:meth:`read_snapshot_piece` with the lines already joined by commas into one item
        (none when the chunk is empty): a JSON array body needs no line of its own."""
        data, position, done = self._read_snapshot_lines(k, position, max_bytes)
        if not data:
            return [], position, done
        return [data[:-1].replace(b"\n", b",")], position, done

    def _read_snapshot_lines(
        self, k: int, position: int, max_bytes: int
    ) -> tuple[bytes, int, bool]:
        """Whole lines (each ending in a newline) of snapshot chunk ``k`` from ``position``."""
        self._check_snapshot_chunk(k)
        # Positioned reads on a bare descriptor: four system calls where a file object costs
        # nine (its buffering asks whether the file is a terminal, and seeks), for each first
        # response of a new shape, on the event loop.
        # (A closed chunk does not grow. Asking for no more than it holds: os.pread allocates
        # what it is asked for, and a piece's worth is an mmap and an munmap per read.)
        fd = os.open(_snapshot_path(self._dir, k), os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            data = os.pread(fd, max(0, min(max_bytes, size - position)), position)
            cut = data.rfind(b"\n") + 1
            if cut == 0 and data:  # one line longer than the piece: read on to its end
                data += _rest_of_line(fd, position + len(data))
                cut = len(data)
        finally:
            os.close(fd)
        done = position + cut >= size
        return data[:cut] if cut < len(data) else data, position + cut, done

    def _check_snapshot_chunk(self, k: int) -> None:
        if k >= self.snapshot.closed:
            raise SnapshotIncomplete(f"snapshot chunk {k} of {self._dir} is not ready")

    def read_piece(
        self,
        offset: LogOffset,
        max_bytes: int,
        position: int | None = None,
        until: LogOffset | None = None,
    ) -> LogPiece:
        """Committed change-log entries strictly after ``offset``: as many as fit in
        ``max_bytes`` of JSON (always at least one), across chunk boundaries, none after
        ``until``. ``offset`` is a change-log offset (a snapshot offset means the log's start).

        ``position`` is the one a previous piece returned with ``offset`` as its ``end``; without
        it (or when a compaction moved the log since) the start is found from the chunk index
        (reading at most one chunk's headers, in blocks). Unlike :meth:`read`, memory is bounded
        by ``max_bytes`` (or one larger entry). Safe to call from another thread while the owner
        appends.
        """
        return self._rereading(lambda: self._read_piece(offset, max_bytes, position, until))

    def _read_piece(
        self,
        offset: LogOffset,
        max_bytes: int,
        position: int | None,
        until: LogOffset | None,
    ) -> LogPiece:
        view = self.view
        start: int | None = None
        if offset.tx <= 0:
            offset, start = SNAPSHOT_END, 0
        elif position is not None:
            generation, at = untag_position(position)
            start = at if generation == view.generation else None
        limit = view.latest if until is None else min(until, view.latest)
        if view.latest == SNAPSHOT_END or offset >= limit:
            tagged = None if start is None else tag_position(view.generation, start)
            return LogPiece([], offset, tagged)
        memo = self._last_piece
        key = (offset, max_bytes, limit)
        if memo is not None and memo[0] is view and memo[1] == key:
            piece = memo[2]
            return LogPiece(list(piece.items), piece.end, piece.position)
        if start is None:
            start = self._position_after(view, offset)
        piece = self._read_piece_at(view, start, max_bytes, limit, offset)
        self._last_piece = (view, key, piece)
        return LogPiece(list(piece.items), piece.end, piece.position)

    def _position_after(self, view: _LogView, offset: LogOffset) -> int:
        """Log position of the first entry after ``offset`` (``view.size`` if none)."""
        start, end = self._chunk_range(view, offset)
        position = max(start, min(self._start_of(view, offset.tx), end))
        fd = os.open(self._log_path(view), os.O_RDONLY | os.O_CLOEXEC)
        try:
            while position < end:
                block = _pread_all(fd, min(_SCAN_BLOCK, end - position), position)
                p = 0
                while p + _HEADER_SIZE <= len(block):
                    tx, op, _flags, size = _RECORD.unpack_from(block, p)
                    if tx > offset.tx or (tx == offset.tx and op > offset.op):
                        return position + p
                    p += _HEADER_SIZE + size
                if p == 0:  # a header cut by the block's end: cannot happen below _SCAN_BLOCK
                    raise StorageError(f"unreadable record at {position} in {self._dir}")
                position += p
        finally:
            os.close(fd)
        return end

    def _read_piece_at(
        self, view: _LogView, position: int, max_bytes: int, limit: LogOffset, offset: LogOffset
    ) -> LogPiece:
        """Entries from ``position`` (the start of one) up to ``max_bytes`` and ``limit``."""
        items: list[bytes] = []
        end = offset
        size = view.size
        fd = os.open(self._log_path(view), os.O_RDONLY | os.O_CLOEXEC)
        try:
            block = _pread_all(fd, min(size - position, max_bytes + _HEADER_SIZE), position)
            p = taken = 0
            while p + _HEADER_SIZE <= len(block):
                tx, op, _flags, length = _RECORD.unpack_from(block, p)
                if LogOffset(tx, op) > limit:
                    break
                stop = p + _HEADER_SIZE + length
                if stop <= len(block):
                    items.append(block[p + _HEADER_SIZE : stop])
                elif not items:  # one entry larger than the piece: it goes alone
                    items.append(_pread_all(fd, length, position + p + _HEADER_SIZE))
                else:
                    break
                end = LogOffset(tx, op)
                taken += length
                p = stop
                if taken >= max_bytes:
                    break
        finally:
            os.close(fd)
        return LogPiece(items, end, tag_position(view.generation, position + p))

    def _read_snapshot_chunk(self, k: int) -> list[bytes]:
        if k >= self.snapshot.closed:
            raise SnapshotIncomplete(f"snapshot chunk {k} of {self._dir} is not ready")
        with open(_snapshot_path(self._dir, k), "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        lines.pop()  # the empty piece after the final newline
        return lines

    def _read_log(self, offset: LogOffset) -> tuple[list[bytes], LogOffset]:
        view = self.view
        if view.latest == SNAPSHOT_END or offset >= view.latest:
            return [], offset
        last = self._last_read
        if last is not None and last[0] is view and last[1] == offset:
            return list(last[2]), last[3]
        items, end_offset = self._read_log_file(view, offset)
        if sum(map(len, items)) <= READ_MEMO_BYTES:
            self._last_read = (view, offset, tuple(items), end_offset)
        return items, end_offset

    def _read_log_file(self, view: _LogView, offset: LogOffset) -> tuple[list[bytes], LogOffset]:
        start, end = self._chunk_range(view, offset)
        start = max(start, min(self._start_of(view, offset.tx), end))
        fd = os.open(self._log_path(view), os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = _pread_all(fd, end - start, start)
        finally:
            os.close(fd)
        return _collect_after(data, offset)

    def _chunk_range(self, view: _LogView, offset: LogOffset) -> tuple[int, int]:
        """File positions ``[start, end)`` of the chunk holding ``offset``."""
        recent = view.recent
        first_cached = view.chunks - len(recent)
        with _IndexReader(self._index_path(view), recent, first_cached) as index:
            # Chunk i holds (end of i-1, end of i]; find the first i whose end is above offset.
            if recent and offset >= recent[0].end:
                lo, hi = first_cached + 1, view.chunks
            else:
                lo, hi = 0, first_cached
            while lo < hi:
                mid = (lo + hi) // 2
                if index.boundary(mid).end > offset:
                    hi = mid
                else:
                    lo = mid + 1
            start = index.boundary(lo - 1).pos if lo > 0 else 0
            end = view.size if lo == view.chunks else index.boundary(lo).pos
        return start, end


class _IndexReader:
    """Boundary ``i`` from the in-memory cache or, for older ones, from ``chunks.idx``."""

    def __init__(self, path: str, recent: tuple[_Boundary, ...], first_cached: int) -> None:
        self._path = path
        self._recent = recent
        self._first_cached = first_cached
        self._fd: int | None = None

    def __enter__(self) -> _IndexReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def boundary(self, i: int) -> _Boundary:
        if i >= self._first_cached:
            return self._recent[i - self._first_cached]
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        at = len(_INDEX_MAGIC) + i * _INDEX_RECORD_SIZE
        return _decode_boundary(_pread_all(self._fd, _INDEX_RECORD_SIZE, at), 0)


def _collect_after(data: bytes, offset: LogOffset) -> tuple[list[bytes], LogOffset]:
    """The JSON of the records in ``data`` strictly after ``offset``, and the last one's offset."""
    unpack = _RECORD.unpack_from
    out: list[bytes] = []
    o_tx, o_op = offset
    n = len(data)
    p = 0
    tx = op = 0
    while p < n:  # skip entries at or before the offset
        tx, op, _flags, size = unpack(data, p)
        if tx > o_tx or (tx == o_tx and op > o_op):
            break
        p += _HEADER_SIZE + size
    else:
        return [], offset
    while p < n:
        tx, op, _flags, size = unpack(data, p)
        p += _HEADER_SIZE
        out.append(data[p : p + size])
        p += size
    return out, LogOffset(tx, op)


def _rest_of_line(fd: int, position: int) -> bytes:
    """The bytes of ``fd`` from ``position`` up to and including the next newline (or to the
    end of the file)."""
    parts: list[bytes] = []
    while True:
        block = os.pread(fd, _LINE_BLOCK, position)
        end = block.find(b"\n") + 1
        if end:
            parts.append(block[:end])
            return b"".join(parts)
        if not block:
            return b"".join(parts)
        parts.append(block)
        position += len(block)
