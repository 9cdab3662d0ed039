"""Compaction of a shape's change log: every run of updates to one key becomes one update.

Layer: ``syncd`` (file I/O; :func:`compact_log` runs in a worker process, see
:mod:`syncd.compactor`).

Theory of operation
===================

What is merged. Walking the log in order, the updates of one key that follow each other with no
insert or delete of that key between them form a *run*. A run of two or more updates is
replaced by one update at the position (offset) of its **last** update, holding the columns of
all of them (later values win) and, under ``replica=full``, the old values from before the
first. Inserts and deletes are never dropped or moved, so a key deleted and inserted again keeps
both. A subquery shape's move events (messages without a key) end every run: an update before a
move-out and one after it stay apart, as do their tags; a merged update carries the last update's
tags and the tags any update of the run removed (minus those it carries).

Why clients keep exact offsets. Every entry that stays keeps its offset, and the log's last
entry always stays. A client that has read up to offset ``o`` asks for the entries after ``o``:
for a run that ends after ``o`` it gets the merged update, which sets each column the run
touched to its value at the run's end, the state a client that read the run one update at a
time would hold; columns it already had are set to the same values again. Runs that end at or
before ``o`` are behind it. No entry is ever seen twice, and none is missed.

Generations. The compacted log is written to new files, ``log.<g+1>.bin.tmp`` and
``chunks.<g+1>.idx.tmp``, from the first ``source_size`` bytes of generation ``g`` (a
transaction end), cut into chunks as the writer cuts them, and fsynced. The owner then copies
what was appended meanwhile, makes it durable and renames the index and then the log into
place: the log's rename is the commit point, after which a restart opens the new generation
(:func:`syncd.log_recovery._current_generation`) and deletes the old one; before it, the
temporary files are deleted and nothing changed.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, NamedTuple

import msgspec

from shapes.offset import LogOffset
from syncd.log_format import (
    _HEADER_SIZE,
    _INDEX_MAGIC,
    _LAST_FLAG,
    _RECORD,
    _Boundary,
    index_file_name,
    log_file_name,
)

TEMPORARY_SUFFIX: Final = ".tmp"
_WRITE_BUFFER: Final = 1 << 20


class _Headers(msgspec.Struct):
    operation: str | None = None
    event: str | None = None


class _Probe(msgspec.Struct):
    """The parts of a log entry compaction decides on."""

    key: str | None = None
    headers: _Headers = msgspec.field(default_factory=_Headers)


_probe: Final = msgspec.json.Decoder(_Probe).decode
_decode: Final = msgspec.json.Decoder().decode
_encode: Final = msgspec.json.Encoder().encode


class CompactionResult(NamedTuple):
    """What :func:`compact_log` wrote (the new generation's temporary files)."""

    generation: int
    """The new generation."""
    source_size: int
    """Bytes of the old generation's log that were compacted."""
    size: int
    """Bytes of the new log."""
    boundaries: list[_Boundary]
    acc: int
    """JSON bytes of the new log's open chunk."""
    entries_in: int
    entries_out: int
    compacted_size: int
    """Bytes the rewrite wrote (``size`` less what was copied over after it)."""


def temporary_log(directory: Path, generation: int) -> Path:
    return directory / (log_file_name(generation) + TEMPORARY_SUFFIX)


def temporary_index(directory: Path, generation: int) -> Path:
    return directory / (index_file_name(generation) + TEMPORARY_SUFFIX)


class LogRecord(NamedTuple):
    """A change-log record's header: where it starts, its offset, flags and JSON size."""

    pos: int
    tx: int
    op: int
    flags: int
    size: int


def records_in(data: bytes) -> Iterator[LogRecord]:
    """The records of ``data``, whole records of a change log (positions relative to it)."""
    return _records(data, 0, len(data))


def _records(data: mmap.mmap | bytes, start: int, end: int) -> Iterator[LogRecord]:
    unpack = _RECORD.unpack_from
    pos = start
    while pos < end:
        tx, op, flags, size = unpack(data, pos)
        yield LogRecord(pos, tx, op, flags, size)
        pos += _HEADER_SIZE + size


class UpdateMerge:
    """Folds a run of updates to one key into the one update that stands for them (module
    docstring), one update at a time: its memory does not grow with the run."""

    __slots__ = ("count", "last", "old_value", "removed", "value")

    def __init__(self) -> None:
        self.value: dict[str, Any] = {}
        self.old_value: dict[str, Any] = {}
        self.removed: dict[str, None] = {}
        self.last: dict[str, Any] = {}
        self.count = 0

    def add(self, message: dict[str, Any]) -> None:
        self.value.update(message.get("value") or {})
        for column, old in (message.get("old_value") or {}).items():
            self.old_value.setdefault(column, old)
        headers = message.get("headers") or {}
        self.removed.update(dict.fromkeys(headers.get("removed_tags") or ()))
        self.last = message
        self.count += 1

    def result(self) -> dict[str, Any]:
        merged = dict(self.last)
        merged["value"] = self.value
        if self.old_value:
            merged["old_value"] = self.old_value
        headers = dict(merged.get("headers") or {})
        if self.removed or "removed_tags" in headers:
            kept = set(headers.get("tags") or ())
            headers["removed_tags"] = [tag for tag in self.removed if tag not in kept]
        merged["headers"] = headers
        return merged


def merge_updates(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """One update standing for ``messages``, a run of updates to one key."""
    merge = UpdateMerge()
    for message in messages:
        merge.add(message)
    return merge.result()


class _Run(NamedTuple):
    last: int
    """Index of the run's latest update."""
    merge: UpdateMerge


def _plan(data: mmap.mmap, end: int) -> tuple[int, bytearray, dict[int, bytes]]:
    """First pass: how many records there are, which ones go (a byte per record) and the
    merged entry that replaces the last update of each run of two or more."""
    dropped = bytearray()
    merged: dict[int, bytes] = {}
    runs: dict[str, _Run] = {}

    def close(run: _Run) -> None:
        if run.merge.count > 1:
            merged[run.last] = _encode(run.merge.result())

    count = 0
    for i, record in enumerate(_records(data, 0, end)):
        count = i + 1
        dropped.append(0)
        start = record.pos + _HEADER_SIZE
        body = data[start : start + record.size]
        probe = _probe(body)
        key, headers = probe.key, probe.headers
        if key is None or headers.event is not None:  # a move event: every run ends here
            for open_run in runs.values():
                close(open_run)
            runs.clear()
            continue
        if headers.operation != "update":
            ended = runs.pop(key, None)
            if ended is not None:
                close(ended)
            continue
        previous = runs.get(key)
        if previous is None:
            merge = UpdateMerge()
        else:
            dropped[previous.last] = 1
            merge = previous.merge
        merge.add(_decode(body))
        runs[key] = _Run(i, merge)
    for open_run in runs.values():
        close(open_run)
    return count, dropped, merged


class ChunkCutter:
    """Cuts records into chunks as the log writer does (the entry whose JSON makes the chunk's
    count reach ``chunk_bytes`` ends it), giving each cut's index boundary."""

    def __init__(self, chunk_bytes: int, acc: int = 0) -> None:
        self.chunk_bytes = chunk_bytes
        self.acc = acc
        self.boundaries: list[_Boundary] = []

    def add(self, tx: int, op: int, size: int, entry_pos: int, last: bool) -> None:
        self.acc += size
        if self.acc >= self.chunk_bytes:
            end = entry_pos + _HEADER_SIZE + size
            self.boundaries.append(_Boundary(LogOffset(tx, op), end, entry_pos, last))
            self.acc = 0


def compact_log(
    directory: str, generation: int, source_size: int, chunk_bytes: int, min_gain: float = 0.0
) -> CompactionResult | None:
    """Write generation ``generation + 1`` from the first ``source_size`` bytes of the log of
    ``generation`` in ``directory``, merging update runs; fsynced, not yet in place (module
    docstring). ``None``, with nothing written, when fewer than ``min_gain`` of the entries
    would go (a log of inserts and deletes is not rewritten for nothing). Runs in a worker
    process."""
    path = Path(directory)
    with open(path / log_file_name(generation), "rb") as source:
        if source_size == 0:
            return _write_generation(path, generation + 1, b"", 0, chunk_bytes, (0, b"", {}))
        with mmap.mmap(source.fileno(), source_size, access=mmap.ACCESS_READ) as data:
            plan = _plan(data, source_size)
            count, dropped, _merged = plan
            if count and sum(dropped) < min_gain * count:
                return None
            return _write_generation(path, generation + 1, data, source_size, chunk_bytes, plan)


def _write_generation(
    path: Path,
    new: int,
    data: mmap.mmap | bytes,
    source_size: int,
    chunk_bytes: int,
    plan: tuple[int, bytes | bytearray, dict[int, bytes]],
) -> CompactionResult:
    """Second pass: the kept records, merged ones replaced, into ``new``'s temporary files."""
    count, dropped, merged = plan
    cutter = ChunkCutter(chunk_bytes)
    written = kept = 0
    with open(temporary_log(path, new), "wb", buffering=_WRITE_BUFFER) as out:
        pending: tuple[int, int, bytes] | None = None

        def write(tx: int, op: int, body: bytes, last: bool) -> None:
            nonlocal written
            out.write(_RECORD.pack(tx, op, _LAST_FLAG if last else 0, len(body)))
            out.write(body)
            cutter.add(tx, op, len(body), written, last)
            written += _HEADER_SIZE + len(body)

        for i, record in enumerate(_records(data, 0, source_size)):
            if dropped[i]:
                continue
            body = merged.get(i)
            if body is None:
                start = record.pos + _HEADER_SIZE
                body = bytes(data[start : start + record.size])
            if pending is not None:
                write(*pending, pending[0] != record.tx)
            pending = (record.tx, record.op, body)
            kept += 1
        if pending is not None:
            write(*pending, True)
        out.flush()
        os.fsync(out.fileno())
    with open(temporary_index(path, new), "wb") as index:
        index.write(_INDEX_MAGIC + b"".join(b.encode() for b in cutter.boundaries))
        index.flush()
        os.fsync(index.fileno())
    return CompactionResult(
        new, source_size, written, cutter.boundaries, cutter.acc, count, kept, written
    )


def discard_temporary(directory: Path, generation: int) -> None:
    """Delete an unfinished compaction's files of ``generation`` (if any)."""
    for path in (temporary_log(directory, generation), temporary_index(directory, generation)):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def extend_compaction(
    directory: str, result: CompactionResult, source_size: int, chunk_bytes: int
) -> CompactionResult:
    """Copy the records the old generation committed after ``result`` was made, up to
    ``source_size``, to the end of the new generation's temporary files (cut into chunks, made
    durable): the switch on the event loop then copies only what came after. Safe on a thread
    while the owner appends (committed bytes never change)."""
    if source_size <= result.source_size:
        return result
    path = Path(directory)
    with open(path / log_file_name(result.generation - 1), "rb") as source:
        source.seek(result.source_size)
        tail = source.read(source_size - result.source_size)
    cutter = ChunkCutter(chunk_bytes, result.acc)
    for record in records_in(tail):
        cutter.add(
            record.tx,
            record.op,
            record.size,
            result.size + record.pos,
            bool(record.flags & _LAST_FLAG),
        )
    with open(temporary_log(path, result.generation), "r+b") as out:
        out.seek(result.size)
        out.write(tail)
        out.flush()
        os.fdatasync(out.fileno())
    with open(temporary_index(path, result.generation), "r+b") as index:
        index.seek(0, os.SEEK_END)
        index.write(b"".join(b.encode() for b in cutter.boundaries))
        index.flush()
        os.fdatasync(index.fileno())
    return result._replace(
        source_size=source_size,
        size=result.size + len(tail),
        boundaries=[*result.boundaries, *cutter.boundaries],
        acc=cutter.acc,
    )
