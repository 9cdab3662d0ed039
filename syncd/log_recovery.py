"""Recovery of a shape log after a crash: what :meth:`syncd.storage.ShapeLog.open` repairs.

Layer: ``syncd`` (synchronous file I/O). Pure functions over the files of one log directory;
the log format is in :mod:`syncd.log_format`.

Theory of operation
===================

Recovery (:meth:`ShapeLog.open`). Files may end in a partial record, in records of a
transaction whose end never got written, or (after an OS crash) in garbage or zeros, and the index
may be ahead of or behind the log. Recovery:

1. keeps the longest prefix of index records whose CRCs hold and whose offsets and positions
   increase (none if the header is damaged: the index is then rebuilt from the log; a header
   of another format version raises :class:`StorageError`);
2. drops records from the end until the last one's boundary entry is really in the log
   (header at ``entry_pos`` matches it, ends at ``end_pos``, JSON well-formed);
3. scans the log from that boundary: every record must have a sane header (flags, length within
   the file, ``tx`` continuing the current transaction with a larger ``op`` or starting a new
   one with a larger ``tx``) and well-formed JSON; the log is cut after the last record flagged
   last-of-transaction. If the boundary was inside a transaction and that transaction never
   ends, the boundary is dropped as well, with every other boundary of that transaction, and the
   scan restarts at the boundary before them;
4. recomputes the boundaries of the scanned part exactly as the writer does, truncates the log
   to the cut and rewrites the index tail, and fsyncs both.

Because boundaries depend only on the entries and ``chunk_bytes``, re-appending the lost
transactions gives the same chunks as a writer that never crashed.

Opening therefore reads about one chunk (the open one) and validates its JSON. Limit: records
carry no checksum (the format is fixed), so after an OS crash a record cut in the middle of its
JSON whose remaining bytes were replaced by garbage that happens to complete a valid JSON object
of the same length would be kept. A ``kill -9`` cannot produce that (the page cache keeps every
byte that ``pwrite`` returned for), and zero-filled blocks never pass the header checks.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import re
import zlib
from pathlib import Path
from typing import Final

import msgspec

from shapes.offset import SNAPSHOT_END, LogOffset
from syncd.log_files import _atomic_write
from syncd.log_format import (
    _HEADER_SIZE,
    _INDEX_BODY,
    _INDEX_CRC,
    _INDEX_MAGIC,
    _INDEX_RECORD_SIZE,
    _LAST_FLAG,
    _RECENT_BOUNDARIES,
    _RECORD,
    _SNAPSHOT_PREFIX,
    _SNAPSHOT_SUFFIX,
    SNAPSHOT_DONE_FILE,
    StorageError,
    _Boundary,
    _decode_boundary,
    _LogView,
    _ScanResult,
    _SnapshotView,
    index_file_name,
    log_file_name,
)
from syncd.log_meta import stored_snapshot_chunks

_raw_decoder: Final = msgspec.json.Decoder(msgspec.Raw)


_GENERATION_FILE: Final = re.compile(
    r"(?:log|chunks)\.(\d+)\.(?:bin|idx)(\.tmp)?|(log\.bin|chunks\.idx)"
)


def _current_generation(path: Path) -> int:
    """The newest generation of the change log in ``path`` (the highest whose log file is in
    place); the files of older generations and of an unfinished compaction are deleted."""
    found: dict[str, tuple[int, bool]] = {}
    for name in os.listdir(path):
        match = _GENERATION_FILE.fullmatch(name)
        if match is not None:
            number, temporary, first = match.groups()
            found[name] = (0, False) if first else (int(number), temporary is not None)
    logs = [
        generation
        for name, (generation, temporary) in found.items()
        if not temporary and name == log_file_name(generation)
    ]
    current = max(logs, default=0)
    for name, (generation, temporary) in found.items():
        if temporary or generation != current:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path / name)
    return current


def _load_boundaries(index_data: bytes) -> list[_Boundary]:
    """The longest prefix of index records that are intact and increasing."""
    out: list[_Boundary] = []
    if not index_data.startswith(_INDEX_MAGIC):
        return out
    prev_end = SNAPSHOT_END
    prev_pos = 0
    at = len(_INDEX_MAGIC)
    while at + _INDEX_RECORD_SIZE <= len(index_data):
        body_end = at + _INDEX_BODY.size
        (crc,) = _INDEX_CRC.unpack_from(index_data, body_end)
        if zlib.crc32(index_data[at:body_end]) != crc:
            break
        b = _decode_boundary(index_data, at)
        if not (b.end > prev_end and prev_pos <= b.entry_pos and b.pos > b.entry_pos):
            break
        out.append(b)
        prev_end, prev_pos = b.end, b.pos
        at += _INDEX_RECORD_SIZE
    return out


def _recover_log(
    path: Path, log_size: int, stored: list[_Boundary], chunk_bytes: int, generation: int = 0
) -> tuple[_LogView, int, list[_Boundary]]:
    """Cut the log after its last complete transaction; drops unusable ``stored`` boundaries.

    Returns the committed view, the open chunk's JSON byte count, and the boundaries found after
    the last kept stored one. ``stored`` is shortened in place to the kept boundaries.
    """
    with open(path / log_file_name(generation), "r+b") as f:
        if log_size == 0:
            stored.clear()
            result = _ScanResult(0, None, 0, [])
        else:
            with mmap.mmap(f.fileno(), log_size, access=mmap.ACCESS_READ) as mm:
                result = _find_committed(mm, stored, chunk_bytes)
        committed = result.committed
        assert committed is not None
        if committed != log_size:
            f.truncate(committed)
            f.flush()
            os.fsync(f.fileno())
    boundaries = stored + result.boundaries
    if result.latest is not None:
        latest = result.latest
    elif stored:
        latest = stored[-1].end
    else:
        latest = SNAPSHOT_END
    recent = tuple(boundaries[-_RECENT_BOUNDARIES:])
    view = _LogView(committed, latest, len(boundaries), recent, generation)
    return view, result.acc, result.boundaries


def _find_committed(mm: mmap.mmap, stored: list[_Boundary], chunk_bytes: int) -> _ScanResult:
    while stored:
        b = stored[-1]
        if _boundary_in_log(mm, b):
            result = _scan(mm, b.pos, b.end, not b.last, chunk_bytes)
            if result.committed is not None:
                return result
            if b.last:
                return _ScanResult(b.pos, None, 0, [])
            # The transaction around b never ends: none of its boundaries is usable. Dropping
            # them all at once keeps a long unfinished transaction (written in pieces) from
            # being rescanned once per chunk.
            while stored and stored[-1].end.tx == b.end.tx and not stored[-1].last:
                stored.pop()
            continue
        stored.pop()
    result = _scan(mm, 0, LogOffset(0, 0), False, chunk_bytes)
    if result.committed is None:
        return _ScanResult(0, None, 0, [])
    return result


def _boundary_in_log(mm: mmap.mmap, b: _Boundary) -> bool:
    if b.pos > len(mm) or b.entry_pos + _HEADER_SIZE > b.pos:
        return False
    tx, op, flags, size = _RECORD.unpack_from(mm, b.entry_pos)
    start = b.entry_pos + _HEADER_SIZE
    return (
        LogOffset(tx, op) == b.end
        and flags == (_LAST_FLAG if b.last else 0)
        and start + size == b.pos
        and _is_json_object(mm[start : b.pos])
    )


def _scan(mm: mmap.mmap, start: int, prev: LogOffset, in_tx: bool, chunk_bytes: int) -> _ScanResult:
    """Parse records from ``start`` (a chunk boundary) while they are sane.

    ``prev`` is the offset of the record before ``start`` and ``in_tx`` whether its
    transaction continues. Boundaries are recomputed as the writer cuts them.
    """
    n = len(mm)
    p = start
    prev_tx, prev_op = prev
    acc = 0
    committed: int | None = None
    committed_acc = 0
    latest: LogOffset | None = None
    boundaries: list[_Boundary] = []
    committed_boundaries = 0
    while p + _HEADER_SIZE <= n:
        tx, op, flags, size = _RECORD.unpack_from(mm, p)
        body = p + _HEADER_SIZE
        end = body + size
        if flags & ~_LAST_FLAG or end > n:
            break
        if in_tx:
            if tx != prev_tx or op <= prev_op:
                break
        elif tx <= prev_tx:
            break
        if not _is_json_object(mm[body:end]):
            break
        last = bool(flags & _LAST_FLAG)
        acc += size
        if acc >= chunk_bytes:
            boundaries.append(_Boundary(LogOffset(tx, op), end, p, last))
            acc = 0
        if last:
            committed = end
            committed_acc = acc
            latest = LogOffset(tx, op)
            committed_boundaries = len(boundaries)
        prev_tx, prev_op, in_tx = tx, op, not last
        p = end
    del boundaries[committed_boundaries:]
    return _ScanResult(committed, latest, committed_acc, boundaries)


def _is_json_object(data: bytes) -> bool:
    if not data.startswith(b"{"):
        return False
    try:
        _raw_decoder.decode(data)
    except msgspec.DecodeError:
        return False
    return True


def _rewrite_index(
    path: Path,
    index_data: bytes,
    kept: list[_Boundary],
    new: list[_Boundary],
    generation: int = 0,
) -> None:
    """Make the chunk index of ``generation`` hold exactly ``kept`` followed by ``new``."""
    name = index_file_name(generation)
    keep_size = len(_INDEX_MAGIC) + len(kept) * _INDEX_RECORD_SIZE
    if not index_data and not new:
        # No index (or an empty one a crash left): none is needed until a chunk closes, and
        # the writer makes it then, header first.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path / name)
        return
    if not index_data.startswith(_INDEX_MAGIC):
        _atomic_write(path, name, _INDEX_MAGIC + b"".join(b.encode() for b in new))
        return
    if not new and len(index_data) == keep_size:
        return
    with open(path / name, "r+b") as f:
        f.truncate(keep_size)
        f.seek(keep_size)
        f.write(b"".join(b.encode() for b in new))
        f.flush()
        os.fsync(f.fileno())


def _load_snapshot_state(path: Path) -> tuple[_SnapshotView, int]:
    """The snapshot's state: sealed (its chunk count in ``snapshot.done`` or, for a seal with
    metadata, in ``meta.json``), or not, with the number of chunk files written so far."""
    try:
        done = json.loads((path / SNAPSHOT_DONE_FILE).read_bytes())
    except FileNotFoundError:
        sealed = stored_snapshot_chunks(path)
        if sealed is not None:
            return _SnapshotView(sealed, True), sealed
        chunks = sum(
            1
            for name in os.listdir(path)
            if name.startswith(_SNAPSHOT_PREFIX) and name.endswith(_SNAPSHOT_SUFFIX)
        )
        return _SnapshotView(0, False), chunks
    count = done["chunks"] if isinstance(done, dict) else None
    if not isinstance(count, int) or count < 1:
        raise StorageError(f"{path / SNAPSHOT_DONE_FILE}: malformed")
    return _SnapshotView(count, True), count
