"""The change-log writer of one shape log: appends transactions to ``log.bin`` and chunk
boundaries to ``chunks.idx``, publishes the committed state to the log's reader, and counts
writes for the flushes.

Layer: ``syncd`` (synchronous file I/O, one writer thread). :class:`~syncd.storage.ShapeLog`
owns one :class:`ChangeLogWriter`; the record and index formats are in
:mod:`syncd.log_format`, the rules for pieces and commits in :mod:`syncd.storage`.
"""

from __future__ import annotations

import contextlib
import operator
import os
import struct
from collections.abc import Sequence
from itertools import chain, islice, repeat
from pathlib import Path
from typing import Final

from shapes.offset import SNAPSHOT_END, LogOffset
from syncd.log_compaction import (
    CompactionResult,
    discard_temporary,
    extend_compaction,
    temporary_index,
    temporary_log,
)
from syncd.log_files import _fsync_dir, _pwrite_all, _pwritev_all
from syncd.log_format import (
    _HEADER_SIZE,
    _INDEX_MAGIC,
    _INDEX_RECORD_SIZE,
    _LAST_FLAG,
    _RECENT_BOUNDARIES,
    _RECORD,
    _U64_LIMIT,
    TransactionEntries,
    _Boundary,
    _check_ops,
    _LogView,
    _OpenTransaction,
    file_in,
    index_file_name,
    log_file_name,
)
from syncd.log_reader import LogReader

_RECENT_STARTS: Final = 256
"""How many recent transaction start positions a log keeps (up to twice as many)."""


class ChangeLogWriter:
    """Appends to one shape's change log (module docstring)."""

    __slots__ = (
        "_acc",
        "_chunk_bytes",
        "_dir",
        "_index_fd",
        "_index_path",
        "_last_tx",
        "_log_fd",
        "_log_path",
        "_open_txn",
        "compacted_size",
        "reader",
        "synced_writes",
        "writes",
    )

    def __init__(self, directory: Path, chunk_bytes: int, reader: LogReader, acc: int) -> None:
        self._dir = directory
        self._chunk_bytes = chunk_bytes
        self.reader = reader
        """Where the committed state is published (``view``, ``tx_starts``)."""
        view = reader.view
        self._log_path = file_in(directory, log_file_name(view.generation))
        self._index_path = file_in(directory, index_file_name(view.generation))
        self._acc = acc
        """JSON bytes of the open chunk."""
        self._last_tx = view.latest.tx if view.latest != SNAPSHOT_END else 0
        self._open_txn: _OpenTransaction | None = None
        self._log_fd: int | None = None
        self._index_fd: int | None = None
        self.writes = 0
        """How many writes went to the log or the index (appends and cuts)."""
        self.synced_writes = 0
        """How many of those are known durable: the log is clean when the two are equal."""
        self.compacted_size = 0
        """The log's size right after its last compaction (0: none since it was opened)."""

    @property
    def acc(self) -> int:
        """JSON bytes of the open chunk."""
        return self._acc

    @property
    def dirty(self) -> bool:
        """Writes not known durable yet."""
        return self.writes != self.synced_writes

    def append(self, tx: int, entries: Sequence[tuple[int, bytes]], *, final: bool = True) -> None:
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
        if (
            final
            and self._open_txn is None
            and len(entries) == 1
            and self._last_tx < tx < _U64_LIMIT
        ):
            op, data = entries[0]
            if 0 <= op < _U64_LIMIT and self._append_one(tx, op, data):
                return
        if not entries:
            raise ValueError("a transaction needs at least one entry")
        view = self.reader.view
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
        log_fd = self.log_descriptor()
        self.writes += 1
        try:
            records = list(chain.from_iterable(zip(headers, datas, strict=True)))
            _pwritev_all(log_fd, records, start)
            if new:
                index_fd = self.index_descriptor()
                at = len(_INDEX_MAGIC) + chunks * _INDEX_RECORD_SIZE
                _pwrite_all(index_fd, b"".join(b.encode() for b in new), at)
        except OSError:
            # Leave nothing beyond the committed state: the next append writes there again.
            self.truncate_to_committed()
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
        self.reader.view = _LogView(
            pos, LogOffset(tx, ops[-1]), view.chunks + len(boundaries), recent, view.generation
        )

    def _append_one(self, tx: int, op: int, data: bytes) -> bool:
        """The common case of :meth:`append_transaction` in fewer steps: one whole
        transaction of one entry that closes no chunk (``tx`` and ``op`` already checked).
        False, having done nothing, when the entry would close a chunk."""
        size = len(data)
        acc = self._acc + size
        if acc >= self._chunk_bytes:
            return False
        view = self.reader.view
        start = view.size
        log_fd = self.log_descriptor()
        self.writes += 1
        try:
            _pwrite_all(log_fd, _RECORD.pack(tx, op, _LAST_FLAG, size) + data, start)
        except OSError:
            self.truncate_to_committed()
            raise
        self._acc = acc
        self._last_tx = tx
        self._remember_start(tx, start)
        self.reader.view = _LogView(
            start + _HEADER_SIZE + size,
            LogOffset(tx, op),
            view.chunks,
            view.recent,
            view.generation,
        )
        return True

    def log_descriptor(self) -> int:
        """The change log's append descriptor, opened if it is not."""
        fd = self._log_fd
        if fd is None:
            fd = self._log_fd = os.open(self._log_path, os.O_WRONLY | os.O_CLOEXEC)
        return fd

    def index_descriptor(self) -> int:
        """The chunk index's append descriptor, opened if it is not; the index is made (with
        its header) by the first chunk that closes, so a log whose chunks never close has none.

        The new file's name need not be durable before its records are: recovery rebuilds a
        missing index from the log (:meth:`syncd.storage.ShapeLog.open`)."""
        return self._index_descriptor(make=True)

    def _index_descriptor(self, *, make: bool) -> int:
        """:meth:`index_descriptor`; without ``make``, a missing index raises
        ``FileNotFoundError`` instead of being made."""
        fd = self._index_fd
        if fd is None:
            try:
                fd = os.open(self._index_path, os.O_WRONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                if not make:
                    raise
                fd = os.open(self._index_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
                try:
                    _pwrite_all(fd, _INDEX_MAGIC, 0)
                except OSError:
                    os.close(fd)
                    raise
            self._index_fd = fd
        return fd

    def _remember_start(self, tx: int, position: int) -> None:
        generation, starts = self.reader.tx_starts
        if len(starts) >= 2 * _RECENT_STARTS:
            # A new list: readers in other threads keep iterating the one they captured.
            starts = starts[-_RECENT_STARTS:]
            self.reader.tx_starts = (generation, starts)
        starts.append((tx, position))

    @property
    def open_transaction(self) -> int | None:
        """The ``tx`` of a transaction appended in pieces whose last piece is still to come."""
        return None if self._open_txn is None else self._open_txn.tx

    def abort_transaction(self) -> None:
        """Drop the pieces of the open transaction, if any (the log is cut back)."""
        if self._open_txn is not None:
            self.truncate_to_committed()

    def truncate_to_committed(self) -> None:
        """Cut the log and the index back to the committed state (best effort)."""
        self._open_txn = None
        self.writes += 1
        view = self.reader.view
        with contextlib.suppress(OSError):
            os.ftruncate(self.log_descriptor(), view.size)
        with contextlib.suppress(OSError):  # FileNotFoundError: no chunk closed, no index
            index_fd = self._index_descriptor(make=False)
            os.ftruncate(index_fd, len(_INDEX_MAGIC) + view.chunks * _INDEX_RECORD_SIZE)

    def close_fds(self) -> None:
        for fd in (self._log_fd, self._index_fd):
            if fd is not None:
                os.close(fd)
        self._log_fd = self._index_fd = None

    @property
    def holds_descriptors(self) -> bool:
        """The log keeps descriptors open for appending."""
        return self._log_fd is not None or self._index_fd is not None

    def mark_synced(self, writes: int) -> None:
        """The first ``writes`` writes (:attr:`writes` when the flush began) are durable; the
        append descriptors stay open for the next appends (:meth:`close_descriptors` closes
        them). Writes made while the flush ran keep the log dirty."""
        if writes > self.synced_writes:
            self.synced_writes = writes

    def close_descriptors(self) -> None:
        """Close the append descriptors of a log with nothing unsynced (else a no-op)."""
        if self.writes == self.synced_writes:
            self.close_fds()

    def duplicate_descriptors(self) -> list[int]:
        """Duplicates of the open append descriptors, for an ``fdatasync()`` that another
        thread runs while this one goes on appending (the caller closes them). A write-back
        error is reported through a duplicate as through the original."""
        return [os.dup(fd) for fd in (self._log_fd, self._index_fd) if fd is not None]

    # ------------------------------------------------------------------ compaction

    def compaction_source(self) -> tuple[int, int] | None:
        """``(generation, committed size)`` to compact now; ``None`` while a transaction is
        open in pieces (its records are not committed yet)."""
        if self._open_txn is not None:
            return None
        view = self.reader.view
        return view.generation, view.size

    def install_compaction(self, result: CompactionResult) -> bool:
        """Switch to the compacted generation ``result`` (see :mod:`syncd.log_compaction`):
        copy what was committed since the compaction began, make it durable, rename the new
        files into place, and publish the new view; the old files go. ``False`` (and the new
        files deleted) when the log moved on in a way the result does not fit."""
        view = self.reader.view
        directory = self._dir
        new = result.generation
        if (
            view.generation != new - 1
            or self._open_txn is not None
            or view.size < result.source_size
        ):
            discard_temporary(directory, new)
            return False
        # what was committed since (a thread copied most of it already): copied and durable
        result = extend_compaction(os.fspath(directory), result, view.size, self._chunk_bytes)
        old_log, old_index = self._log_path, self._index_path
        os.rename(temporary_index(directory, new), directory / index_file_name(new))
        os.rename(temporary_log(directory, new), directory / log_file_name(new))  # commit point
        _fsync_dir(directory)
        self.close_fds()
        self._log_path = os.fspath(directory / log_file_name(new))
        self._index_path = os.fspath(directory / index_file_name(new))
        self._acc = result.acc
        boundaries = result.boundaries
        self.writes += 1
        self.synced_writes = self.writes  # the new files are durable
        self.reader.tx_starts = (new, [])
        self.reader.view = _LogView(
            result.size,
            view.latest,
            len(boundaries),
            tuple(boundaries[-_RECENT_BOUNDARIES:]),
            new,
        )
        self.compacted_size = result.compacted_size
        for path in (old_log, old_index):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return True
