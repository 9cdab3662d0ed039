"""The durable log of one shape: snapshot chunks, change log, chunk index and metadata.

Layer: ``syncd`` (file I/O, synchronous). One :class:`ShapeLog` owns one directory and has one
writer (the event loop thread). :meth:`ShapeLog.append_transaction` never fsyncs;
:meth:`ShapeLog.sync`, :meth:`ShapeLog.finish_snapshot` and :meth:`ShapeLog.write_meta` do.
:meth:`ShapeLog.read` may run in worker threads (``asyncio.to_thread``) while the writer appends.

Theory of operation
===================

File layout (all inside the directory given to :meth:`ShapeLog.create`)::

    meta.json                  engine metadata (any JSON-able dict), replaced atomically;
                               once a seal with metadata wrote it, also the snapshot's
                               chunk count (see :mod:`syncd.log_meta`)
    meta.json.tmp              the next metadata, until it is renamed over meta.json (made
                               empty with the log, with log.bin and the first chunk)
    snapshot-00000000.jsonl    snapshot chunk 0, one JSON message per line ("\\n"-terminated)
    snapshot-00000001.jsonl    ...
    snapshot.done              {"chunks": n}, written once a snapshot sealed without
                               metadata is complete
    log.bin                    change log, binary, append-only
    chunks.idx                 change-log chunk boundaries, binary, append-only; made when
                               the first chunk of the change log closes

Snapshot chunks (written by :class:`syncd.snapshot_writer.SnapshotWriter`).
:meth:`ShapeLog.append_snapshot_rows` appends rows in order. Each row counts
``len(line) + 1`` bytes towards its chunk; the row that makes the count reach or exceed
``chunk_bytes`` is the last row of its chunk. :meth:`ShapeLog.finish_snapshot` appends the
``snapshot-end`` control line as the last line of the last chunk, which is a new chunk of its own
when the previous row has just closed one (so a snapshot without rows is a single chunk holding
only that line). It then fsyncs every chunk file and the directory and finally writes
``snapshot.done`` atomically (or, in a seal with metadata, ``meta.json`` with the chunk count):
a snapshot without either is incomplete after a restart and the engine must discard the shape.
Closed chunks never change, so they can be served before the snapshot is complete.

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

Reading: :mod:`syncd.log_reader` (a :class:`~syncd.log_reader.LogReader` held by each log, to
which the log publishes its committed state after each complete write).

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

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from shapes.offset import SNAPSHOT_END, LogOffset
from syncd.log_compaction import CompactionResult
from syncd.log_files import (
    _fsync_dir,
    _fsync_file,
    _open_emptied,
    remove_tree_soon,
)
from syncd.log_flush import GROUP_SYNC_MIN, GroupSync, plan_flush
from syncd.log_format import (
    _INDEX_MAGIC,
    _SNAPSHOT_PREFIX,
    INDEX_FILE,
    LOG_FILE,
    META_FILE,
    META_TMP_FILE,
    READ_MEMO_BYTES,
    SNAPSHOT_DONE_FILE,
    LogPiece,
    ReadPlan,
    SnapshotIncomplete,
    StorageError,
    TransactionEntries,
    _check_chunk_bytes,
    _LogView,
    _snapshot_name,
    _SnapshotView,
    file_in,
    index_file_name,
    log_file_name,
)
from syncd.log_meta import MetaFile
from syncd.log_reader import LogReader
from syncd.log_recovery import (
    _current_generation,
    _load_boundaries,
    _load_snapshot_state,
    _recover_log,
    _rewrite_index,
)
from syncd.log_writer import ChangeLogWriter
from syncd.snapshot_seal import SnapshotSeal, seal_snapshots
from syncd.snapshot_writer import SnapshotWriter

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
    "snapshot_sealed",
]


class ShapeLog:
    """The durable log of one shape. See the module docstring for the file formats and rules."""

    __slots__ = (
        "_chunk_bytes",
        "_creation_unsynced",
        "_deleted",
        "_dir",
        "_reader",
        "_snapshot",
        "_writer",
        "device",
        "meta",
    )

    def __init__(
        self,
        directory: Path,
        chunk_bytes: int,
        view: _LogView,
        acc: int,
        snapshot: _SnapshotView,
        snapshot_chunks: int,
        device: int | None = None,
    ) -> None:
        """Internal: use :meth:`create` or :meth:`open`."""
        self._dir = directory
        self._chunk_bytes = chunk_bytes
        self._reader = LogReader(directory, view, snapshot)
        """Reads, over the committed state published to it (``view``, ``snapshot``,
        ``tx_starts``)."""
        self._writer = ChangeLogWriter(directory, chunk_bytes, self._reader, acc)
        """Appends to the change log and publishes the committed state to the reader."""
        self._deleted = False
        self._snapshot = SnapshotWriter(directory, chunk_bytes, self._reader, snapshot_chunks)
        self.device = os.stat(directory).st_dev if device is None else device
        """The ``st_dev`` of the filesystem holding the directory."""
        self.meta = MetaFile(directory)
        """The log's metadata file (what :meth:`write_meta` and :meth:`read_meta` use)."""
        self._creation_unsynced = False
        """Made by :meth:`create` and not fsynced yet (see :meth:`_sync_creation`)."""

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def create(
        cls, directory: str | os.PathLike[str], chunk_bytes: int, *, device: int | None = None
    ) -> ShapeLog:
        """Create an empty log in ``directory`` (made if missing; must not hold a log yet).

        ``device`` is the ``st_dev`` of the parent directory's filesystem, when the caller
        knows it (a directory made here is on it): one system call less per new log."""
        _check_chunk_bytes(chunk_bytes)
        # Path(a Path) parses it again: a cost on the thread that makes logs, where every
        # microsecond of Python holds the interpreter lock the event loop waits for
        path = directory if isinstance(directory, Path) else Path(directory)
        try:
            os.mkdir(path)  # the common case: a new directory, with nothing in it to check
        except FileNotFoundError:
            path.mkdir(parents=True, exist_ok=True)
            _refuse_a_log_in(path)
        except FileExistsError:
            _refuse_a_log_in(path)
            device = None
        # Not fsynced yet: a log that is lost before its snapshot is finished is discarded at
        # restart anyway. :meth:`finish_snapshot` (or the first append) makes it durable.
        # Every file the log needs soon is made here, empty, on the thread that creates logs:
        # the change log, so that a shape's first change does not make a file on the event
        # loop, and the two files its seal writes (the first snapshot chunk and
        # ``meta.json.tmp``), so that the seal's writes need no new inode either and can run on
        # the event loop (a new file costs the filesystem an inode, which can take
        # milliseconds). The chunk index, which most shapes never need, is made when the first
        # chunk closes. An empty ``meta.json.tmp`` is no metadata: it is only renamed into
        # place once written.
        for name in (LOG_FILE, _snapshot_name(0), META_TMP_FILE):
            os.close(_open_emptied(file_in(path, name)))
        view = _LogView(0, SNAPSHOT_END, 0, ())
        log = cls(path, chunk_bytes, view, 0, _SnapshotView(0, False), 0, device)
        log._creation_unsynced = True
        return log

    def _sync_creation(self) -> None:
        """Make what :meth:`create` wrote durable: the index header before any record, the
        files' names in the directory and the directory in its parent."""
        if not self._creation_unsynced:
            return
        for path in self._created_files():
            _fsync_file(path)
        _fsync_dir(self._dir)
        _fsync_dir(self._dir.parent)
        self._creation_unsynced = False

    def _created_files(self) -> tuple[str, ...]:
        """The file of :meth:`create`'s that later writes do not make durable themselves: the
        change log (the seal's two files are fsynced by the seal that writes them)."""
        return (file_in(self._dir, LOG_FILE),)

    @classmethod
    def open(cls, directory: str | os.PathLike[str], chunk_bytes: int) -> ShapeLog:
        """Open an existing log, repairing whatever a crash left behind (module docstring).

        Raises:
            StorageError: the directory does not hold a shape log of this format.
        """
        _check_chunk_bytes(chunk_bytes)
        path = Path(directory)
        try:
            generation = _current_generation(path)
            log_size = os.path.getsize(path / log_file_name(generation))
        except FileNotFoundError as exc:
            raise StorageError(f"{path} does not hold a shape log: {exc}") from exc
        try:
            with open(path / index_file_name(generation), "rb") as f:
                index_data = f.read()
        except FileNotFoundError:
            index_data = b""  # no chunk closed yet, or lost in a crash: rebuilt from the log
        family = _INDEX_MAGIC[:-1]
        if index_data.startswith(family) and not index_data.startswith(_INDEX_MAGIC):
            if len(index_data) > len(family):
                raise StorageError(f"{path / INDEX_FILE}: unsupported format version")
        # Any other damage to the index (its header included) is repaired from the log.
        stored = _load_boundaries(index_data)
        view, acc, new_boundaries = _recover_log(path, log_size, stored, chunk_bytes, generation)
        _rewrite_index(path, index_data, stored, new_boundaries, generation)
        snapshot, snapshot_chunks = _load_snapshot_state(path)
        log = cls(path, chunk_bytes, view, acc, snapshot, snapshot_chunks)
        if snapshot.complete:
            log.meta.snapshot_chunks = snapshot_chunks
        return log

    def delete(self) -> None:
        """Close the append descriptors and remove the directory with everything in it (its
        name at once, its files on a background thread)."""
        self._deleted = True
        self._writer.close_fds()
        remove_tree_soon(self._dir)

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
        return self._reader.view.latest

    @property
    def snapshot_complete(self) -> bool:
        """True once :meth:`finish_snapshot` has made the snapshot durable."""
        return self._reader.snapshot.complete

    @property
    def snapshot_chunks_closed(self) -> int:
        """Number of snapshot chunks that are complete and can be read (while later ones are
        still being written)."""
        return self._reader.snapshot.closed

    @property
    def snapshot_chunk_count(self) -> int:
        """Number of snapshot chunk files (including one still being written)."""
        return self._snapshot.chunks

    @property
    def dirty(self) -> bool:
        """True if changes were appended (or metadata deferred) since the last :meth:`sync`."""
        return self._writer.dirty or self.meta.pending

    def flush_note(self) -> tuple[ShapeLog, int, int | None] | None:
        """What a flush starting now must cover: ``(log, writes so far, metadata writes)``, the last
        ``None`` without pending metadata (see :class:`syncd.log_flush.FlushPlan`); ``None``
        for a clean or deleted log."""
        meta = self.meta
        writer = self._writer
        if meta.pending:
            return None if self._deleted else (self, writer.writes, meta.writes)
        if not writer.dirty or self._deleted:
            return None
        return self, writer.writes, None

    @property
    def deleted(self) -> bool:
        """:meth:`delete` was called."""
        return self._deleted

    @property
    def holds_descriptors(self) -> bool:
        """The log keeps descriptors open for appending."""
        return self._writer.holds_descriptors

    def mark_synced(self, writes: int) -> None:
        """The first ``writes`` writes (:attr:`writes` when the flush began) are durable; the
        append descriptors stay open for the next appends (:meth:`close_descriptors` closes
        them). Writes made while the flush ran keep the log dirty."""
        self._writer.mark_synced(writes)

    def close_descriptors(self) -> None:
        """Close the append descriptors of a log with nothing unsynced (else a no-op)."""
        self._writer.close_descriptors()

    def duplicate_descriptors(self) -> list[int]:
        """Duplicates of the open append descriptors, for an ``fdatasync()`` that another
        thread runs while this one goes on appending (the caller closes them). A write-back
        error is reported through a duplicate as through the original."""
        return self._writer.duplicate_descriptors()

    def has_entries_after(self, offset: LogOffset) -> bool:
        """True if the change log holds an entry strictly after ``offset``."""
        latest = self._reader.view.latest
        return latest != SNAPSHOT_END and latest > offset

    # ------------------------------------------------------------------ metadata

    def write_meta(self, meta: Mapping[str, Any], *, defer: bool = False) -> None:
        """Replace ``meta.json`` atomically and durably with ``meta`` (JSON-able).

        With ``defer``, only ``meta.json.tmp`` is written now (no fsync); the replacement
        happens, durably, at the next :meth:`sync` (or :class:`GroupSync`), the log counting as
        :attr:`dirty` until then. Until then :meth:`read_meta` and a restart see the old
        metadata: for changes that may be lost with the transactions not yet synced.
        """
        self.meta.write(meta, defer=defer)

    def read_meta(self) -> dict[str, Any]:
        """The dict last given to :meth:`write_meta` (and installed), or ``{}``."""
        return self.meta.read()

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
        self._snapshot.append_rows(lines)

    def append_snapshot_lines(self, data: bytes) -> None:
        """Append snapshot rows already joined into JSON lines (each ending in a newline, none
        inside), cutting chunks exactly where :meth:`append_snapshot_rows` would.

        Raises as :meth:`append_snapshot_rows` does; ValueError when ``data`` does not end in
        a newline.
        """
        self._snapshot.append_lines(data)

    def finish_snapshot(self, end_line: bytes) -> None:
        """Append the ``snapshot-end`` line, make all chunks durable and mark the snapshot done
        (a seal of this log alone, see :mod:`syncd.snapshot_seal`)."""
        seal_snapshots([self.snapshot_seal(end_line)])

    def snapshot_seal(self, end_line: bytes, meta: Mapping[str, Any] | None = None) -> SnapshotSeal:
        """The steps that finish this log's snapshot with ``end_line`` (and replace its metadata
        with ``meta``), for :func:`syncd.snapshot_seal.seal_snapshots` to run with others'."""
        new_files = self._created_files() if self._creation_unsynced else ()
        return SnapshotSeal(
            writer=self._snapshot,
            end_line=end_line,
            directory=self._dir,
            device=self.device,
            meta_file=self.meta,
            meta=meta,
            new_files=new_files,
            on_done=self._creation_synced,
            is_deleted=lambda: self._deleted,
        )

    def _creation_synced(self) -> None:
        self._creation_unsynced = False

    # ------------------------------------------------------------------ change log

    def append_transaction(
        self, tx: int, entries: Sequence[tuple[int, bytes]], *, final: bool = True
    ) -> None:
        """Append one transaction's entries ``(op, json)``; readers see it on return (see
        :meth:`syncd.log_writer.ChangeLogWriter.append`: pieces, order, failures).

        Raises:
            ValueError: empty piece, or ``tx``/``op`` out of order or out of range.
        """
        if self._creation_unsynced:
            self._sync_creation()
        self._writer.append(tx, entries, final=final)

    @property
    def open_transaction(self) -> int | None:
        """The ``tx`` of a transaction appended in pieces whose last piece is still to come."""
        return self._writer.open_transaction

    def abort_transaction(self) -> None:
        """Drop the pieces of the open transaction, if any (the log is cut back)."""
        self._writer.abort_transaction()

    # ------------------------------------------------------------------ compaction

    @property
    def change_log_size(self) -> int:
        """Committed bytes of the change log."""
        return self._reader.view.size

    @property
    def compacted_size(self) -> int:
        """The change log's size right after its last compaction (0: none since opened)."""
        return self._writer.compacted_size

    def compaction_source(self) -> tuple[int, int] | None:
        """``(generation, size)`` of the change log to compact now, or ``None`` (deleted, or
        a transaction open in pieces): see :mod:`syncd.log_compaction`."""
        if self._deleted:
            return None
        return self._writer.compaction_source()

    def compaction_skipped(self, size: int) -> None:
        """A compaction of the first ``size`` bytes found too little to remove: the log counts
        as compacted at that size (see :mod:`syncd.compactor`)."""
        self._writer.compacted_size = max(self._writer.compacted_size, size)

    def install_compaction(self, result: CompactionResult) -> bool:
        """Switch to a compacted generation (see
        :meth:`syncd.log_writer.ChangeLogWriter.install_compaction`)."""
        if self._deleted:
            return False
        return self._writer.install_compaction(result)

    def sync(self) -> None:
        """fdatasync the log and the chunk index if anything was appended, install deferred
        metadata (:meth:`write_meta`), and close the append descriptors: a flush of this log
        alone (:func:`syncd.log_flush.plan_flush`), every step on the calling thread."""
        try:
            plan_flush([self], None).run()
        finally:
            self._writer.close_fds()

    # ------------------------------------------------------------------ reading (LogReader)

    def read(self, offset: LogOffset) -> tuple[list[bytes], LogOffset]:
        """See :meth:`LogReader.read`. Safe to call from another thread while the owner appends."""
        return self._reader.read(offset)

    def plan_read(self, offset: LogOffset) -> ReadPlan:
        """See :meth:`LogReader.plan_read`."""
        return self._reader.plan_read(offset)

    def read_snapshot_piece(
        self, k: int, position: int, max_bytes: int
    ) -> tuple[list[bytes], int, bool]:
        """See :meth:`LogReader.read_snapshot_piece`."""
        return self._reader.read_snapshot_piece(k, position, max_bytes)

    def snapshot_chunk_is_small(self, k: int) -> bool:
        """Whether snapshot chunk ``k`` is a small one this process just wrote (see
        :attr:`LogReader.small_last_chunk`): read it on the event loop."""
        return k == self._reader.small_last_chunk

    def read_snapshot_joined(
        self, k: int, position: int, max_bytes: int
    ) -> tuple[list[bytes], int, bool]:
        """See :meth:`LogReader.read_snapshot_joined`."""
        return self._reader.read_snapshot_joined(k, position, max_bytes)

    def read_piece(
        self,
        offset: LogOffset,
        max_bytes: int,
        position: int | None = None,
        until: LogOffset | None = None,
    ) -> LogPiece:
        """See :meth:`LogReader.read_piece`. Safe to call from another thread."""
        return self._reader.read_piece(offset, max_bytes, position, until)


def snapshot_sealed(directory: str | os.PathLike[str]) -> bool:
    """Whether the log in ``directory`` holds a sealed snapshot (``snapshot.done``, or the count
    in ``meta.json``), read without repairing anything: safe while syncd runs, for programs
    that watch its storage (a damaged or vanished directory reads as not sealed)."""
    try:
        snapshot, _chunks = _load_snapshot_state(Path(directory))
    except (OSError, ValueError, StorageError):
        return False
    return snapshot.complete


def _refuse_a_log_in(path: Path) -> None:
    """Raise ``FileExistsError`` if the directory ``path`` holds a shape log's files."""
    for name in os.listdir(path):
        if name in (META_FILE, LOG_FILE, INDEX_FILE, SNAPSHOT_DONE_FILE) or name.startswith(
            _SNAPSHOT_PREFIX
        ):
            raise FileExistsError(f"{path} already holds a shape log ({name})")
