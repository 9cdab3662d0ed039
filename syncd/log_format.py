"""The on-disk format of a shape log: file names, the change-log record, the chunk index record,
the committed-state views shared by the writer and the readers, and the errors.

Layer: ``syncd`` (pure: structs and tuples, no I/O). :mod:`syncd.storage` owns the rules that use
them; the file layout is described there.

Change log record, big-endian, 21 bytes of header then the JSON::

    tx:u64  op:u64  flags:u8  length:u32  json[length]

``tx`` is the commit LSN, ``op`` the operation's position in its transaction, flag bit 0 marks
the last record of a transaction; the other flag bits are zero. Each JSON is one object
(``{...}``); recovery relies on that to tell a record from garbage. A transaction is encoded
into one buffer and written with one ``pwrite`` at the committed length, so an earlier failed
write is overwritten rather than followed.

Change-log chunks. The entry whose JSON makes the chunk's JSON byte count reach or exceed
``chunk_bytes`` is the last entry of its chunk, even in the middle of a transaction. Each closed
chunk gets one 40-byte record in ``chunks.idx`` (after an 8-byte magic header)::

    end_tx:u64  end_op:u64  end_pos:u64  entry_pos:u64  flags:u8  pad[3]  crc32:u32

``end_tx``/``end_op`` is the offset of the chunk's last entry, ``end_pos`` the log position
just after it, ``entry_pos`` the position where that entry starts, flag bit 0 whether it ends
its transaction, and the CRC covers the 36 bytes before it. A chunk is ``(previous end, end]``;
the first starts at position 0, the last one is open (no record yet). Index records are written
together with the log bytes of the same transaction, and fsynced by :meth:`ShapeLog.sync`.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Final, NamedTuple, overload

from shapes.offset import LogOffset

META_FILE: Final = "meta.json"
META_TMP_FILE: Final = f"{META_FILE}.tmp"
"""Where metadata is written before it is renamed over :data:`META_FILE`."""
LOG_FILE: Final = "log.bin"
READ_MEMO_BYTES: Final = 64 * 1024
"""Reads up to this size are kept for the readers that ask for the same offset next (the live
tail after a commit); bigger ones would make every idle log hold a chunk in memory."""
INDEX_FILE: Final = "chunks.idx"
SNAPSHOT_DONE_FILE: Final = "snapshot.done"
_SNAPSHOT_PREFIX: Final = "snapshot-"
_SNAPSHOT_SUFFIX: Final = ".jsonl"

_GENERATION_SHIFT: Final = 48
"""Log positions handed to callers carry the log's generation above this bit (positions stay
far below 2**48), so a position from before a compaction is never used after it."""


def log_file_name(generation: int) -> str:
    """The change log's file name in ``generation`` (``log.bin``, then ``log.<g>.bin``)."""
    return LOG_FILE if generation == 0 else f"log.{generation}.bin"


def index_file_name(generation: int) -> str:
    """The chunk index's file name in ``generation`` (``chunks.idx``, then ``chunks.<g>.idx``)."""
    return INDEX_FILE if generation == 0 else f"chunks.{generation}.idx"


def tag_position(generation: int, position: int) -> int:
    """``position`` of a log in ``generation``, as handed out (see :data:`_GENERATION_SHIFT`)."""
    return (generation << _GENERATION_SHIFT) | position


def untag_position(tagged: int) -> tuple[int, int]:
    """``(generation, position)`` of a position handed out by :func:`tag_position`."""
    return tagged >> _GENERATION_SHIFT, tagged & ((1 << _GENERATION_SHIFT) - 1)


_RECORD: Final = struct.Struct(">QQBI")
_HEADER_SIZE: Final = _RECORD.size  # 21
_LAST_FLAG: Final = 1

_INDEX_MAGIC: Final = b"SYNCDIX\x01"
_INDEX_BODY: Final = struct.Struct(">QQQQB3x")
_INDEX_CRC: Final = struct.Struct(">I")
_INDEX_RECORD_SIZE: Final = _INDEX_BODY.size + _INDEX_CRC.size  # 40

_RECENT_BOUNDARIES: Final = 4
_SCAN_BLOCK: Final = 256 * 1024
"""Bytes read at a time while looking for an offset's position inside a chunk."""
_U64_LIMIT: Final = 1 << 64


class StorageError(Exception):
    """The directory does not hold a usable shape log; the engine should discard the shape."""


class SnapshotIncomplete(RuntimeError):
    """The requested snapshot chunk (or what follows it) is not written yet."""


class _Boundary(NamedTuple):
    """The end of one closed change-log chunk."""

    end: LogOffset
    """Offset of the chunk's last entry."""
    pos: int
    """Log position just after that entry (where the next chunk starts)."""
    entry_pos: int
    """Log position where that entry starts."""
    last: bool
    """Whether that entry is the last of its transaction."""

    def encode(self) -> bytes:
        body = _INDEX_BODY.pack(self.end.tx, self.end.op, self.pos, self.entry_pos, self.last)
        return body + _INDEX_CRC.pack(zlib.crc32(body))


def _decode_boundary(data: bytes | bytearray, at: int) -> _Boundary:
    end_tx, end_op, pos, entry_pos, flags = _INDEX_BODY.unpack_from(data, at)
    return _Boundary(LogOffset(end_tx, end_op), pos, entry_pos, bool(flags & _LAST_FLAG))


class _LogView(NamedTuple):
    """Committed change-log state; replaced as a whole, so readers in threads see one version."""

    size: int
    """Committed length of ``log.bin`` (always at a transaction end)."""
    latest: LogOffset
    """Offset of the last committed entry, or ``SNAPSHOT_END`` for an empty log."""
    chunks: int
    """Number of closed chunks (records in ``chunks.idx``)."""
    recent: tuple[_Boundary, ...]
    """The last (up to four) boundaries, oldest first."""
    generation: int = 0
    """Which files hold the log: a compaction writes the next generation and switches to it
    (see :func:`log_file_name`)."""


class _OpenTransaction(NamedTuple):
    """A transaction written in pieces whose last piece is still to come (not committed)."""

    tx: int
    pos: int
    """Log position just after its last written piece."""
    last_op: int
    acc: int
    """JSON bytes of the open chunk at ``pos``."""
    boundaries: tuple[_Boundary, ...]
    """Boundaries inside it, written to ``chunks.idx`` after the committed ones."""


class _SnapshotView(NamedTuple):
    closed: int
    """Number of closed snapshot chunks (all of them once complete)."""
    complete: bool


class _ScanResult(NamedTuple):
    committed: int | None
    """Position after the last record flagged last-of-transaction, None if there is none."""
    latest: LogOffset | None
    acc: int
    """JSON bytes of the open chunk at ``committed``."""
    boundaries: list[_Boundary]
    """Boundaries at or before ``committed``."""


class LogPiece(NamedTuple):
    """A bounded run of change-log entries (see :meth:`ShapeLog.read_piece`)."""

    items: list[bytes]
    """The entries' JSON, in order."""
    end: LogOffset
    """Offset of the last entry returned (the offset asked for when there is none)."""
    position: int | None
    """Log position just after that entry: pass it with ``end`` to read the next piece without
    searching (``None`` when unknown)."""


class ReadPlan(NamedTuple):
    """What :meth:`ShapeLog.read` would return, without reading it (see
    :meth:`ShapeLog.plan_read`): a snapshot chunk, or change-log entries after ``after``."""

    snapshot_chunk: int | None
    after: LogOffset
    end: LogOffset

    @property
    def empty(self) -> bool:
        """Whether the read returns nothing."""
        return self.snapshot_chunk is None and self.end == self.after


class TransactionEntries(Sequence[tuple[int, bytes]]):
    """A transaction's entries ``(op, json)`` kept as two lists, ``ops`` and ``datas``.

    Cheaper to build one entry at a time than a list of tuples (no tuple per entry), and
    :meth:`ShapeLog.append_transaction` takes the lists as they are.
    """

    __slots__ = ("datas", "ops")

    def __init__(self) -> None:
        self.ops: list[int] = []
        self.datas: list[bytes] = []

    def append(self, op: int, data: bytes) -> None:
        """Add the next entry."""
        self.ops.append(op)
        self.datas.append(data)

    def __len__(self) -> int:
        return len(self.ops)

    def pop_all_but_last(self) -> TransactionEntries:
        """Remove and return every entry but the last (a piece of a transaction). The lists
        :attr:`ops` and :attr:`datas` stay the same objects, so a caller may hold them."""
        head = TransactionEntries()
        head.ops = self.ops[:-1]
        head.datas = self.datas[:-1]
        del self.ops[:-1]
        del self.datas[:-1]
        return head

    @overload
    def __getitem__(self, index: int) -> tuple[int, bytes]: ...

    @overload
    def __getitem__(self, index: slice) -> list[tuple[int, bytes]]: ...

    def __getitem__(self, index: int | slice) -> tuple[int, bytes] | list[tuple[int, bytes]]:
        if isinstance(index, slice):
            return list(zip(self.ops[index], self.datas[index], strict=True))
        return self.ops[index], self.datas[index]


def _check_ops(tx: int, ops: Sequence[int], prev_op: int = -1) -> None:
    """Raise the error that ``ops`` (not increasing from ``prev_op + 1``, or out of range)
    deserves."""
    try:
        for op in ops:
            if op <= prev_op:
                raise ValueError(f"ops must increase within a transaction: {op} after {prev_op}")
            prev_op = op
            _RECORD.pack(tx, op, 0, 0)
    except struct.error as exc:
        raise ValueError(f"op out of range in transaction {tx}: {exc}") from exc
    raise ValueError(f"invalid ops in transaction {tx}")


def _check_chunk_bytes(chunk_bytes: int) -> None:
    if chunk_bytes < 1:
        raise ValueError("chunk_bytes must be positive")


def file_in(directory: str | os.PathLike[str], name: str) -> str:
    """The path of the file ``name`` in ``directory``: joined as text, since pathlib's ``/``
    costs microseconds, on paths made for every new shape and every read."""
    return f"{os.fspath(directory)}/{name}"


def _snapshot_name(k: int) -> str:
    """The name of snapshot chunk ``k``'s file."""
    return f"{_SNAPSHOT_PREFIX}{k:08d}{_SNAPSHOT_SUFFIX}"


def _snapshot_path(directory: Path, k: int) -> str:
    """The file of snapshot chunk ``k``."""
    return file_in(directory, _snapshot_name(k))
