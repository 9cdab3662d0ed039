"""The durable log of one shape: snapshot chunks, change log, chunk index and metadata.

Layer: ``syncd`` (file I/O, synchronous). One :class:`ShapeLog` owns one directory and has one
writer (the event loop thread). :meth:`ShapeLog.append_transaction` never fsyncs;
:meth:`ShapeLog.sync`, :meth:`ShapeLog.finish_snapshot` and :meth:`ShapeLog.write_meta` do.
:meth:`ShapeLog.read` may run in worker threads (``asyncio.to_thread``) while the writer appends.

Theory of operation
===================

File layout (all inside the directory given to :meth:`ShapeLog.create`)::

    meta.json                  engine metadata (any JSON-able dict), replaced atomically
    snapshot-00000000.jsonl    snapshot chunk 0, one JSON message per line ("\\n"-terminated)
    snapshot-00000001.jsonl    ...
    snapshot.done              written once the snapshot is complete: {"chunks": n}
    log.bin                    change log, binary, append-only
    chunks.idx                 change-log chunk boundaries, binary, append-only

Snapshot chunks. :meth:`ShapeLog.append_snapshot_rows` appends rows in order. Each row counts
``len(line) + 1`` bytes towards its chunk; the row that makes the count reach or exceed
``chunk_bytes`` is the last row of its chunk. :meth:`ShapeLog.finish_snapshot` appends the
``snapshot-end`` control line as the last line of the last chunk, which is a new chunk of its own
when the previous row has just closed one (so a snapshot without rows is a single chunk holding
only that line). It then fsyncs every chunk file and the directory and finally writes
``snapshot.done`` atomically: a snapshot without that file is incomplete after a restart and the
engine must discard the shape. Closed chunks never change, so they can be served before the
snapshot is complete.

Transactions in pieces. A transaction too large to hold in memory is appended in several calls
(``append_transaction(..., final=False)`` for all but the last): each piece is written right
after the previous one, its boundaries go to the index as usual, but the committed state that
readers and :attr:`ShapeLog.latest_offset` use advances only with the last piece, whose last
record alone carries the last-of-transaction flag. A crash before the last piece leaves records
of a transaction that never ends, which recovery cuts (below); the engine's flush rules make
sure Postgres sends that transaction again. Appends reach the OS page cache at once (readers and a
``kill -9`` see them) and reach the disk at :meth:`ShapeLog.sync`, which the engine calls before
it acknowledges the transactions to Postgres; a crash can therefore lose only transactions that
Postgres will replay, and recovery reproduces exactly the same offsets and chunks for them.

Change-log records and chunk index records: :mod:`syncd.log_format`.

Reading. :meth:`ShapeLog.read` captures the committed state (an immutable tuple swapped in
after each complete write) once, and never reads past the committed log length or index count it
captured, so a concurrent append cannot be seen half-written. The chunk holding an offset is
found from the last four boundaries kept in memory, else by binary search over ``chunks.idx``
with ``pread``; the reader then reads that one chunk (one ``pread``) and scans it from its start.

Recovery (:meth:`ShapeLog.open`): :mod:`syncd.log_recovery` repairs whatever a crash left
behind, so that re-appending the lost transactions gives the same chunks as a writer that never
crashed.

Metadata. :meth:`ShapeLog.write_meta` writes ``meta.json.tmp``, fsyncs it, renames it over
``meta.json`` and fsyncs the directory, so a reader sees the old or the new dict, never a mix.

File descriptors. No descriptor stays open between calls except the append descriptors of the
log (and of the index, once a chunk closes), which live from the first append after a
:meth:`ShapeLog.sync` until the next one. Reads open and close their own.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import operator
import os
import shutil
import struct
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain, islice, repeat
from pathlib import Path
from typing import Any, Final

from shapes.offset import INF, SNAPSHOT_END, LogOffset
from syncd.log_files import (
    _atomic_write,
    _fsync_dir,
    _pread_all,
    _pwrite_all,
    _pwritev_all,
    _write_new_file,
)
from syncd.log_flush import GROUP_SYNC_MIN, GroupSync
from syncd.log_format import (
    _HEADER_SIZE,
    _INDEX_MAGIC,
    _INDEX_RECORD_SIZE,
    _LAST_FLAG,
    _RECENT_BOUNDARIES,
    _RECORD,
    _SCAN_BLOCK,
    _SNAPSHOT_PREFIX,
    _SNAPSHOT_SUFFIX,
    _U64_LIMIT,
    INDEX_FILE,
    LOG_FILE,
    META_FILE,
    READ_MEMO_BYTES,
    SNAPSHOT_DONE_FILE,
    LogPiece,
    ReadPlan,
    SnapshotIncomplete,
    StorageError,
    TransactionEntries,
    _Boundary,
    _check_chunk_bytes,
    _check_ops,
    _decode_boundary,
    _LogView,
    _OpenTransaction,
    _SnapshotView,
)
from syncd.log_recovery import (
    _load_boundaries,
    _load_snapshot_state,
    _recover_log,
    _rewrite_index,
)

__all__ = [
    "GROUP_SYNC_MIN",
    "INDEX_FILE",
    "LOG_FILE",
    "META_FILE",
    "READ_MEMO_BYTES",
    "SNAPSHOT_DONE_FILE",
    "GroupSync",
    "LogPiece",
    "ReadPlan",
    "ShapeLog",
    "SnapshotIncomplete",
    "StorageError",
    "TransactionEntries",
]


class ShapeLog:
    """The durable log of one shape. See the module docstring for the file formats and rules."""

    def __init__(
        self,
        directory: Path,
        chunk_bytes: int,
        view: _LogView,
        acc: int,
        snapshot: _SnapshotView,
        snapshot_chunks: int,
    ) -> None:
        """Internal: use :meth:`create` or :meth:`open`."""
        self._dir = directory
        self._chunk_bytes = chunk_bytes
        self._log_path = os.fspath(directory / LOG_FILE)
        self._index_path = os.fspath(directory / INDEX_FILE)
        self._view = view
        self._last_read: tuple[_LogView, LogOffset, tuple[bytes, ...], LogOffset] | None = None
        """The latest small change-log read: every live reader woken by one commit asks for the
        same offset of the same view, so all but the first are answered from here."""
        self._last_piece: tuple[_LogView, tuple[LogOffset, int, LogOffset], LogPiece] | None = None
        """The same for :meth:`read_piece`."""
        self._acc = acc
        self._last_tx = view.latest.tx if view.latest != SNAPSHOT_END else 0
        self._open_txn: _OpenTransaction | None = None
        self._tx_starts: list[tuple[int, int]] = []
        """``(tx, position)`` of recently committed transactions, so that a read near the end
        of a long open chunk starts at its transaction instead of the chunk's first record."""
        self._log_fd: int | None = None
        self._index_fd: int | None = None
        self._snap = snapshot
        self._snap_chunks = snapshot_chunks
        self._snap_acc = 0
        self._snap_unsynced: set[int] = set()
        self._snap_writable = not snapshot.complete and snapshot_chunks == 0
        self._device: int | None = None
        self._meta_pending = False

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def create(cls, directory: str | os.PathLike[str], chunk_bytes: int) -> ShapeLog:
        """Create an empty log in ``directory`` (made if missing; must not hold a log yet)."""
        _check_chunk_bytes(chunk_bytes)
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for name in os.listdir(path):
            if name in (META_FILE, LOG_FILE, INDEX_FILE, SNAPSHOT_DONE_FILE) or name.startswith(
                _SNAPSHOT_PREFIX
            ):
                raise FileExistsError(f"{path} already holds a shape log ({name})")
        _write_new_file(path / INDEX_FILE, _INDEX_MAGIC)
        _write_new_file(path / LOG_FILE, b"")
        _fsync_dir(path)
        _fsync_dir(path.parent)
        view = _LogView(0, SNAPSHOT_END, 0, ())
        return cls(path, chunk_bytes, view, 0, _SnapshotView(0, False), 0)

    @classmethod
    def open(cls, directory: str | os.PathLike[str], chunk_bytes: int) -> ShapeLog:
        """Open an existing log, repairing whatever a crash left behind (module docstring).

        Raises:
            StorageError: the directory does not hold a shape log of this format.
        """
        _check_chunk_bytes(chunk_bytes)
        path = Path(directory)
        try:
            with open(path / INDEX_FILE, "rb") as f:
                index_data = f.read()
            log_size = os.path.getsize(path / LOG_FILE)
        except FileNotFoundError as exc:
            raise StorageError(f"{path} does not hold a shape log: {exc}") from exc
        family = _INDEX_MAGIC[:-1]
        if index_data.startswith(family) and not index_data.startswith(_INDEX_MAGIC):
            if len(index_data) > len(family):
                raise StorageError(f"{path / INDEX_FILE}: unsupported format version")
        # Any other damage to the index (its header included) is repaired from the log.
        stored = _load_boundaries(index_data)
        view, acc, new_boundaries = _recover_log(path, log_size, stored, chunk_bytes)
        _rewrite_index(path, index_data, stored, new_boundaries)
        snapshot, snapshot_chunks = _load_snapshot_state(path)
        return cls(path, chunk_bytes, view, acc, snapshot, snapshot_chunks)

    def delete(self) -> None:
        """Close the append descriptors and remove the directory with everything in it."""
        self._close_fds()
        shutil.rmtree(self._dir, ignore_errors=True)

    # ------------------------------------------------------------------ properties

    @property
    def directory(self) -> Path:
        """The shape's directory."""
        return self._dir

    @property
    def chunk_bytes(self) -> int:
        """The chunk size threshold in bytes."""
        return self._chunk_bytes

    @property
    def latest_offset(self) -> LogOffset:
        """Offset of the last committed change, ``SNAPSHOT_END`` if there is none."""
        return self._view.latest

    @property
    def snapshot_complete(self) -> bool:
        """True once :meth:`finish_snapshot` has made the snapshot durable."""
        return self._snap.complete

    @property
    def snapshot_chunk_count(self) -> int:
        """Number of snapshot chunk files (including one still being written)."""
        return self._snap_chunks

    @property
    def device(self) -> int:
        """The ``st_dev`` of the filesystem holding the directory."""
        if self._device is None:
            self._device = os.stat(self._dir).st_dev
        return self._device

    @property
    def dirty(self) -> bool:
        """True if changes were appended (or metadata deferred) since the last :meth:`sync`."""
        return self._log_fd is not None or self._meta_pending

    def has_entries_after(self, offset: LogOffset) -> bool:
        """True if the change log holds an entry strictly after ``offset``."""
        latest = self._view.latest
        return latest != SNAPSHOT_END and latest > offset

    # ------------------------------------------------------------------ metadata

    def write_meta(self, meta: Mapping[str, Any], *, defer: bool = False) -> None:
        """Replace ``meta.json`` atomically and durably with ``meta`` (JSON-able).

        With ``defer``, only ``meta.json.tmp`` is written now (no fsync); the replacement
        happens, durably, at the next :meth:`sync` (or :class:`GroupSync`), the log counting as
        :attr:`dirty` until then. Until then :meth:`read_meta` and a restart see the old
        metadata: for changes that may be lost with the transactions not yet synced.
        """
        data = json.dumps(dict(meta), separators=(",", ":"), sort_keys=True).encode()
        if defer:
            tmp = self._dir / f"{META_FILE}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                _pwrite_all(fd, data, 0)
            finally:
                os.close(fd)
            self._meta_pending = True
            return
        _atomic_write(self._dir, META_FILE, data)
        self._meta_pending = False

    def _install_meta(self) -> None:
        """Rename a deferred ``meta.json.tmp`` over ``meta.json`` (its data must be durable)."""
        if self._meta_pending:
            os.replace(self._dir / f"{META_FILE}.tmp", self._dir / META_FILE)
            self._meta_pending = False

    def read_meta(self) -> dict[str, Any]:
        """The dict last given to :meth:`write_meta`, or ``{}`` if there was none."""
        try:
            data = (self._dir / META_FILE).read_bytes()
        except FileNotFoundError:
            return {}
        meta = json.loads(data)
        if not isinstance(meta, dict):
            raise StorageError(f"{self._dir / META_FILE}: not a JSON object")
        return meta

    # ------------------------------------------------------------------ snapshot

    def append_snapshot_rows(self, lines: Iterable[bytes]) -> None:
        """Append snapshot rows (one JSON object each, no newline), cutting chunks as they fill.

        Any exception (including one raised by ``lines``) leaves a snapshot that can only be
        discarded: later snapshot writes raise RuntimeError.

        Raises:
            RuntimeError: the snapshot is finished or broken, or rows of it were written before
                a restart.
            ValueError: a line contains a newline.
        """
        self._check_snapshot_writable()
        limit = self._chunk_bytes
        acc = self._snap_acc
        parts: list[bytes] = []
        try:
            for line in lines:
                if b"\n" in line:
                    raise ValueError("a snapshot line must not contain a newline")
                parts.append(line)
                acc += len(line) + 1
                if acc >= limit:
                    self._write_snapshot_chunk(parts, close=True)
                    parts = []
                    acc = 0
            if parts:
                self._write_snapshot_chunk(parts, close=False)
        except BaseException:
            self._snap_writable = False
            raise
        self._snap_acc = acc

    def finish_snapshot(self, end_line: bytes) -> None:
        """Append the ``snapshot-end`` line, make all chunks durable and mark the snapshot done."""
        self._check_snapshot_writable()
        if b"\n" in end_line:
            raise ValueError("a snapshot line must not contain a newline")
        closed = self._snap.closed
        self._write_snapshot_chunk([end_line], close=False)
        count = closed + 1
        for k in sorted(self._snap_unsynced):
            fd = os.open(self._snapshot_path(k), os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._snap_unsynced.clear()
        _fsync_dir(self._dir)
        _atomic_write(self._dir, SNAPSHOT_DONE_FILE, json.dumps({"chunks": count}).encode())
        self._snap_writable = False
        self._snap_chunks = count
        self._snap = _SnapshotView(count, True)

    def _check_snapshot_writable(self) -> None:
        if not self._snap_writable:
            state = "finished" if self._snap.complete else "interrupted or broken"
            raise RuntimeError(f"the snapshot of {self._dir} was {state}")

    def _write_snapshot_chunk(self, lines: list[bytes], *, close: bool) -> None:
        k = self._snap.closed
        lines.append(b"")
        with open(self._snapshot_path(k), "ab") as f:
            f.write(b"\n".join(lines))
        self._snap_unsynced.add(k)
        self._snap_chunks = k + 1
        if close:
            self._snap = _SnapshotView(k + 1, False)

    def _snapshot_path(self, k: int) -> str:
        return os.fspath(self._dir / f"{_SNAPSHOT_PREFIX}{k:08d}{_SNAPSHOT_SUFFIX}")

    # ------------------------------------------------------------------ change log

    def append_transaction(
        self, tx: int, entries: Sequence[tuple[int, bytes]], *, final: bool = True
    ) -> None:
        """Append one transaction's entries ``(op, json)``; readers see it on return.

        A large transaction may be appended in pieces: every call but the last passes
        ``final=False`` (same ``tx``, ``op`` values still increasing across the calls). Pieces
        reach the OS at once but stay invisible: readers, :attr:`latest_offset` and recovery only
        ever see whole transactions, because the committed length advances with the last piece
        (whose last record alone carries the last-of-transaction flag). While a transaction is
        open no other may be appended; :meth:`abort_transaction` drops it.

        ``tx`` must exceed the previous transaction's and ``op`` values must increase. The bytes
        are written to the OS, not fsynced; see :meth:`sync`. A failed write abandons the whole
        open transaction (the log is cut back to its committed length) and re-raises.

        Raises:
            ValueError: empty piece, or ``tx``/``op`` out of order or out of range.
        """
        if not entries:
            raise ValueError("a transaction needs at least one entry")
        view = self._view
        open_txn = self._open_txn
        earlier: tuple[_Boundary, ...]
        if open_txn is None:
            if not self._last_tx < tx < _U64_LIMIT:
                raise ValueError(f"tx {tx} must be above the previous tx {self._last_tx}")
            start, acc, prev_op, earlier = view.size, self._acc, -1, ()
        elif tx != open_txn.tx:
            raise ValueError(f"tx {tx} while transaction {open_txn.tx} is still open")
        else:
            start, acc = open_txn.pos, open_txn.acc
            prev_op, earlier = open_txn.last_op, open_txn.boundaries
        n = len(entries)
        if isinstance(entries, TransactionEntries):
            ops: Sequence[int] = entries.ops
            datas: Sequence[bytes] = entries.datas
        else:
            ops, datas = zip(*entries, strict=True)
        pack = _RECORD.pack
        try:
            sizes = list(map(len, datas))
            headers = list(map(pack, repeat(tx, n), ops, repeat(0, n), sizes))
            if final:
                # Flag the transaction's last record (and a boundary that falls right after it).
                headers[-1] = pack(tx, ops[-1], _LAST_FLAG, sizes[-1])
            ordered = ops[0] > prev_op and not any(map(operator.ge, ops, islice(ops, 1, None)))
        except struct.error:
            ordered = False
        if not ordered:
            _check_ops(tx, ops, prev_op)
        limit = self._chunk_bytes
        total = sum(sizes)
        pos = start + n * _HEADER_SIZE + total
        new: list[_Boundary] = []
        if acc + total < limit:
            acc += total
        else:
            at = start
            for op, size in zip(ops, sizes, strict=True):
                at += _HEADER_SIZE + size
                acc += size
                if acc >= limit:
                    new.append(_Boundary(LogOffset(tx, op), at, at - _HEADER_SIZE - size, False))
                    acc = 0
        if final and new and new[-1].pos == pos:
            new[-1] = new[-1]._replace(last=True)
        chunks = view.chunks + len(earlier)
        log_fd = self._log_fd
        if log_fd is None:
            log_fd = self._log_fd = os.open(self._log_path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            records = list(chain.from_iterable(zip(headers, datas, strict=True)))
            _pwritev_all(log_fd, records, start)
            if new:
                index_fd = self._index_fd
                if index_fd is None:
                    index_fd = self._index_fd = os.open(
                        self._index_path, os.O_WRONLY | os.O_CLOEXEC
                    )
                at = len(_INDEX_MAGIC) + chunks * _INDEX_RECORD_SIZE
                _pwrite_all(index_fd, b"".join(b.encode() for b in new), at)
        except OSError:
            # Leave nothing beyond the committed state: the next append writes there again.
            self._truncate_to_committed()
            raise
        boundaries = earlier + tuple(new)
        if not final:
            self._open_txn = _OpenTransaction(tx, pos, ops[-1], acc, boundaries)
            return
        recent = (view.recent + boundaries)[-_RECENT_BOUNDARIES:] if boundaries else view.recent
        self._open_txn = None
        self._acc = acc
        self._last_tx = tx
        self._remember_start(tx, view.size)
        self._view = _LogView(pos, LogOffset(tx, ops[-1]), view.chunks + len(boundaries), recent)

    def _remember_start(self, tx: int, position: int) -> None:
        starts = self._tx_starts
        if len(starts) >= 2 * _RECENT_STARTS:
            # A new list: readers in other threads keep iterating the one they captured.
            starts = self._tx_starts = starts[-_RECENT_STARTS:]
        starts.append((tx, position))

    def _start_of(self, tx: int) -> int:
        """A record position at or before the first record of ``tx``'s successors (0: unknown)."""
        starts = self._tx_starts
        i = bisect.bisect_right(starts, (tx, _U64_LIMIT)) - 1
        return starts[i][1] if i >= 0 else 0

    @property
    def open_transaction(self) -> int | None:
        """The ``tx`` of a transaction appended in pieces whose last piece is still to come."""
        return None if self._open_txn is None else self._open_txn.tx

    def abort_transaction(self) -> None:
        """Drop the pieces of the open transaction, if any (the log is cut back)."""
        if self._open_txn is not None:
            self._truncate_to_committed()

    def _truncate_to_committed(self) -> None:
        """Cut the log and the index back to the committed state (best effort)."""
        self._open_txn = None
        view = self._view
        with contextlib.suppress(OSError):
            fd = self._log_fd
            if fd is None:
                fd = self._log_fd = os.open(self._log_path, os.O_WRONLY | os.O_CLOEXEC)
            os.ftruncate(fd, view.size)
        with contextlib.suppress(OSError):
            fd = self._index_fd
            if fd is None:
                fd = self._index_fd = os.open(self._index_path, os.O_WRONLY | os.O_CLOEXEC)
            os.ftruncate(fd, len(_INDEX_MAGIC) + view.chunks * _INDEX_RECORD_SIZE)

    def sync(self) -> None:
        """fdatasync the log and the chunk index if anything was appended, and close them;
        then install deferred metadata (:meth:`write_meta`)."""
        try:
            if self._log_fd is not None:
                os.fdatasync(self._log_fd)
            if self._index_fd is not None:
                os.fdatasync(self._index_fd)
        finally:
            self._close_fds()
        if self._meta_pending:
            tmp = self._dir / f"{META_FILE}.tmp"
            fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._install_meta()
            _fsync_dir(self._dir)

    def _close_fds(self) -> None:
        for fd in (self._log_fd, self._index_fd):
            if fd is not None:
                os.close(fd)
        self._log_fd = self._index_fd = None

    # ------------------------------------------------------------------ reading

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
            snap = self._snap
            next_chunk = offset.op + 1
            if next_chunk < snap.closed:
                return self._read_snapshot_chunk(next_chunk), LogOffset(0, next_chunk)
            if not snap.complete:
                raise SnapshotIncomplete(f"snapshot chunk {next_chunk} of {self._dir} is not ready")
            return self._read_log(SNAPSHOT_END)
        return self._read_log(offset)

    def plan_read(self, offset: LogOffset) -> ReadPlan:
        """Where :meth:`read` of ``offset`` would read and the end offset it would return.

        Raises:
            SnapshotIncomplete: as :meth:`read`.
        """
        if offset.tx < 0:
            self._check_snapshot_chunk(0)
            return ReadPlan(0, offset, LogOffset(0, 0))
        if offset.tx == 0 and offset.op != INF:
            snap = self._snap
            next_chunk = offset.op + 1
            if next_chunk < snap.closed:
                return ReadPlan(next_chunk, offset, LogOffset(0, next_chunk))
            if not snap.complete:
                raise SnapshotIncomplete(f"snapshot chunk {next_chunk} of {self._dir} is not ready")
            offset = SNAPSHOT_END
        view = self._view
        if view.latest == SNAPSHOT_END or offset >= view.latest:
            return ReadPlan(None, offset, offset)
        return ReadPlan(None, offset, self._chunk_end(view, offset))

    def _chunk_end(self, view: _LogView, offset: LogOffset) -> LogOffset:
        """Offset of the last entry of the chunk holding the first entry after ``offset``."""
        recent = view.recent
        first_cached = view.chunks - len(recent)
        with _IndexReader(self._index_path, recent, first_cached) as index:
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
        self._check_snapshot_chunk(k)
        with open(self._snapshot_path(k), "rb") as f:
            f.seek(position)
            data = f.read(max_bytes)
            cut = data.rfind(b"\n") + 1
            if cut == 0 and data:  # one line longer than the piece
                data += f.readline()
                cut = len(data)
            done = position + cut >= os.fstat(f.fileno()).st_size
        lines = data[:cut].split(b"\n")
        lines.pop()
        return lines, position + cut, done

    def _check_snapshot_chunk(self, k: int) -> None:
        if k >= self._snap.closed:
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
        it the start is found from the chunk index (reading at most one chunk's headers, in
        blocks). Unlike :meth:`read`, memory is bounded by ``max_bytes`` (or one larger entry).
        Safe to call from another thread while the owner appends.
        """
        if offset.tx <= 0:
            offset, position = SNAPSHOT_END, 0
        view = self._view
        limit = view.latest if until is None else min(until, view.latest)
        if view.latest == SNAPSHOT_END or offset >= limit:
            return LogPiece([], offset, position)
        memo = self._last_piece
        key = (offset, max_bytes, limit)
        if memo is not None and memo[0] is view and memo[1] == key:
            piece = memo[2]
            return LogPiece(list(piece.items), piece.end, piece.position)
        if position is None:
            position = self._position_after(view, offset)
        piece = self._read_piece_at(position, view.size, max_bytes, limit, offset)
        self._last_piece = (view, key, piece)
        return LogPiece(list(piece.items), piece.end, piece.position)

    def _position_after(self, view: _LogView, offset: LogOffset) -> int:
        """Log position of the first entry after ``offset`` (``view.size`` if none)."""
        start, end = self._chunk_range(view, offset)
        position = max(start, min(self._start_of(offset.tx), end))
        fd = os.open(self._log_path, os.O_RDONLY | os.O_CLOEXEC)
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
        self, position: int, size: int, max_bytes: int, limit: LogOffset, offset: LogOffset
    ) -> LogPiece:
        """Entries from ``position`` (the start of one) up to ``max_bytes`` and ``limit``."""
        items: list[bytes] = []
        end = offset
        fd = os.open(self._log_path, os.O_RDONLY | os.O_CLOEXEC)
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
        return LogPiece(items, end, position + p)

    def _read_snapshot_chunk(self, k: int) -> list[bytes]:
        if k >= self._snap.closed:
            raise SnapshotIncomplete(f"snapshot chunk {k} of {self._dir} is not ready")
        with open(self._snapshot_path(k), "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        lines.pop()  # the empty piece after the final newline
        return lines

    def _read_log(self, offset: LogOffset) -> tuple[list[bytes], LogOffset]:
        view = self._view
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
        start = max(start, min(self._start_of(offset.tx), end))
        fd = os.open(self._log_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = _pread_all(fd, end - start, start)
        finally:
            os.close(fd)
        return _collect_after(data, offset)

    def _chunk_range(self, view: _LogView, offset: LogOffset) -> tuple[int, int]:
        """File positions ``[start, end)`` of the chunk holding ``offset``."""
        recent = view.recent
        first_cached = view.chunks - len(recent)
        with _IndexReader(self._index_path, recent, first_cached) as index:
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


_RECENT_STARTS: Final = 256
"""How many recent transaction start positions a log keeps (up to twice as many)."""


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
