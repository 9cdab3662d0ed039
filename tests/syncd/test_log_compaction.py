"""Log compaction on real files: a reader at any offset, before or after the switch to the
compacted generation, ends with the same rows as one that read the whole uncompacted log, and a
restart at any step of the switch opens a complete log."""

from __future__ import annotations

import asyncio
import json
import os
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from shapes.materialise import MaterialisedShape
from shapes.offset import SNAPSHOT_END, LogOffset
from syncd.compactor import CompactionSettings, Compactor
from syncd.log_compaction import compact_log, merge_updates, temporary_index, temporary_log
from syncd.log_format import _RECORD, log_file_name
from syncd.shape_state import ShapeState
from syncd.storage import ShapeLog

CHUNK = 600
END_LINE = b'{"headers":{"control":"snapshot-end"}}'
Entry = tuple[LogOffset, dict[str, Any]]


def message(key: int, operation: str, value: dict[str, Any], tx: int, op: int) -> dict[str, Any]:
    headers = {"operation": operation, "lsn": str(tx), "op_position": op, "relation": ["p", "t"]}
    return {"key": f"k{key}", "value": {"id": str(key), **value}, "headers": headers}


def workload(seed: int, transactions: int = 120, keys: int = 6) -> list[tuple[int, list[Any]]]:
    """Transactions of inserts, updates (mostly), deletes and re-inserts over a few keys, with
    the odd move event (as a subquery shape's log holds)."""
    rng = random.Random(seed)
    live: set[int] = set()
    txns: list[tuple[int, list[Any]]] = []
    for t in range(transactions):
        tx = 1000 + 10 * t
        entries: list[Any] = []
        for n in range(rng.randint(1, 5)):
            op = 2 * n
            key = rng.randrange(keys)
            roll = rng.random()
            if roll < 0.03:
                entries.append((op, {"headers": {"event": "move-out", "patterns": []}}))
            elif key not in live:
                live.add(key)
                value = {"a": str(rng.randrange(100)), "b": str(rng.randrange(100))}
                entries.append((op, message(key, "insert", value, tx, op)))
            elif roll < 0.12:
                live.discard(key)
                entries.append((op, message(key, "delete", {}, tx, op)))
            else:
                column = rng.choice("ab")
                entries.append(
                    (op, message(key, "update", {column: str(rng.randrange(100))}, tx, op))
                )
        txns.append((tx, entries))
    return txns


def encoded(entries: list[Any]) -> list[tuple[int, bytes]]:
    return [(op, json.dumps(m, separators=(",", ":")).encode()) for op, m in entries]


def new_log(path: Path) -> ShapeLog:
    log = ShapeLog.create(path, CHUNK)
    log.finish_snapshot(END_LINE)
    return log


def read_after(log: ShapeLog, offset: LogOffset) -> list[Entry]:
    """Every entry after ``offset``, through pieces of a few hundred bytes."""
    out: list[Entry] = []
    position = None
    while True:
        piece = log.read_piece(offset, 200, position)
        if not piece.items:
            return out
        # the offsets of the entries come from their headers (lsn, op_position) or, for an
        # event, are not needed: the piece's end is the last one's
        for item in piece.items:
            decoded = json.loads(item)
            headers = decoded.get("headers", {})
            at = (
                LogOffset(int(headers["lsn"]), headers["op_position"])
                if "lsn" in headers
                else piece.end
            )
            out.append((at, decoded))
        offset, position = piece.end, piece.position


def fold(state: MaterialisedShape, entries: list[Entry]) -> MaterialisedShape:
    for _at, m in entries:
        state.apply(m)
    return state


def original(txns: list[tuple[int, list[Any]]]) -> list[Entry]:
    return [(LogOffset(tx, op), m) for tx, entries in txns for op, m in entries]


def check_every_offset(log: ShapeLog, txns: list[tuple[int, list[Any]]]) -> None:
    """A client at any offset of the original log, reading on, ends with the final rows; it
    never gets an entry at or before its offset, nor one twice."""
    entries = original(txns)
    final = fold(MaterialisedShape(), entries).rows
    offsets = [SNAPSHOT_END, *(at for at, _m in entries)]
    for i, offset in enumerate(offsets):
        state = fold(MaterialisedShape(), entries[:i])
        rest = read_after(log, offset)
        keyed = [at for at, m in rest if "key" in m]
        assert all(at > offset for at in keyed)
        assert len(keyed) == len(set(keyed))
        assert fold(state, rest).rows == final, f"a client at {offset} diverged"


def compact(log: ShapeLog) -> bool:
    source = log.compaction_source()
    assert source is not None
    generation, size = source
    result = compact_log(os.fspath(log.directory), generation, size, CHUNK)
    assert result is not None
    return log.install_compaction(result)


@pytest.mark.parametrize("seed", range(6))
def test_any_offset_reads_on_to_the_same_rows_after_compaction(tmp_path: Path, seed: int) -> None:
    txns = workload(seed)
    log = new_log(tmp_path / "s")
    for tx, entries in txns:
        log.append_transaction(tx, encoded(entries))
    before = log.change_log_size
    latest = log.latest_offset
    assert compact(log)
    assert log.change_log_size < before / 2
    assert log.latest_offset == latest
    check_every_offset(log, txns)
    reopened = ShapeLog.open(tmp_path / "s", CHUNK)
    check_every_offset(reopened, txns)
    assert sorted(os.listdir(tmp_path / "s")).count("log.bin") == 0


@pytest.mark.parametrize("seed", range(3))
def test_commits_made_while_compacting_are_carried_over(tmp_path: Path, seed: int) -> None:
    txns = workload(seed + 100)
    half = len(txns) // 2
    log = new_log(tmp_path / "s")
    for tx, entries in txns[:half]:
        log.append_transaction(tx, encoded(entries))
    generation, size = log.compaction_source() or (0, 0)
    result = compact_log(os.fspath(log.directory), generation, size, CHUNK)
    assert result is not None
    piece = log.read_piece(SNAPSHOT_END, 300)  # a reader holding a position of the old files
    for tx, entries in txns[half:]:
        log.append_transaction(tx, encoded(entries))
    assert log.install_compaction(result)
    rest = read_after_from(log, piece.end, piece.position)
    first = fold(MaterialisedShape(), [(SNAPSHOT_END, json.loads(i)) for i in piece.items])
    assert fold(first, rest).rows == fold(MaterialisedShape(), original(txns)).rows
    check_every_offset(log, txns)
    # and on again: appends after the switch go to the new generation, a second one follows
    log.append_transaction(99_000, encoded([(0, message(1, "insert", {"a": "x"}, 99_000, 0))]))
    txns.append((99_000, [(0, message(1, "insert", {"a": "x"}, 99_000, 0))]))
    assert compact(log)
    check_every_offset(ShapeLog.open(tmp_path / "s", CHUNK), txns)


def read_after_from(log: ShapeLog, offset: LogOffset, position: int | None) -> list[Entry]:
    piece = log.read_piece(offset, 10**9, position)
    return [(piece.end, json.loads(i)) for i in piece.items]


def synced_log(path: Path, txns: list[tuple[int, list[Any]]]) -> ShapeLog:
    """A log holding ``txns``, durable."""
    log = new_log(path)
    for tx, entries in txns:
        log.append_transaction(tx, encoded(entries))
    log.sync()
    return log


def test_a_restart_before_the_switch_keeps_the_old_generation(tmp_path: Path) -> None:
    txns = workload(7)
    log = synced_log(tmp_path / "s", txns)
    generation, size = log.compaction_source() or (0, 0)
    compact_log(os.fspath(log.directory), generation, size, CHUNK)  # then the process dies
    assert temporary_log(tmp_path / "s", 1).exists()
    reopened = ShapeLog.open(tmp_path / "s", CHUNK)
    assert not temporary_log(tmp_path / "s", 1).exists()
    assert not temporary_index(tmp_path / "s", 1).exists()
    check_every_offset(reopened, txns)


def test_a_restart_after_the_switch_keeps_the_new_generation(tmp_path: Path) -> None:
    txns = workload(8)
    log = synced_log(tmp_path / "s", txns)
    old = (tmp_path / "s" / "log.bin").read_bytes()
    assert compact(log)
    # as if the process died after the rename, before the old files were deleted
    (tmp_path / "s" / "log.bin").write_bytes(old)
    reopened = ShapeLog.open(tmp_path / "s", CHUNK)
    assert not (tmp_path / "s" / "log.bin").exists()
    assert reopened.change_log_size < len(old)
    check_every_offset(reopened, txns)


def test_merged_updates_keep_the_latest_values_and_the_first_old_ones() -> None:
    merged = merge_updates(
        [
            {
                "key": "k",
                "value": {"id": "1", "a": "1"},
                "old_value": {"a": "0"},
                "headers": {"operation": "update", "tags": ["t1"], "removed_tags": ["t0"]},
            },
            {
                "key": "k",
                "value": {"id": "1", "b": "2"},
                "old_value": {"b": "9"},
                "headers": {"operation": "update", "tags": ["t2"], "removed_tags": ["t1"]},
            },
            {
                "key": "k",
                "value": {"id": "1", "a": "3"},
                "old_value": {"a": "1"},
                "headers": {"operation": "update", "tags": ["t2"], "lsn": "7"},
            },
        ]
    )
    assert merged["value"] == {"id": "1", "a": "3", "b": "2"}
    assert merged["old_value"] == {"a": "0", "b": "9"}
    assert merged["headers"]["tags"] == ["t2"]
    assert merged["headers"]["removed_tags"] == ["t0", "t1"]
    assert merged["headers"]["lsn"] == "7"


def test_a_log_that_compaction_cannot_shrink_is_not_rewritten(tmp_path: Path) -> None:
    log = new_log(tmp_path / "s")
    for k in range(40):  # inserts only: nothing to merge
        tx = 1000 + k
        log.append_transaction(tx, encoded([(0, message(k, "insert", {"a": "1"}, tx, 0))]))
    generation, size = log.compaction_source() or (0, 0)
    assert compact_log(os.fspath(log.directory), generation, size, CHUNK, min_gain=0.1) is None
    assert not temporary_log(tmp_path / "s", 1).exists()
    assert compact_log(os.fspath(log.directory), generation, size, CHUNK) is not None


def test_a_damaged_log_fails_its_compaction_once_and_waits_to_grow(tmp_path: Path) -> None:
    """Whatever the worker meets in a log (here a record whose length is wrong) is a failed
    compaction: counted, its files removed, the log left as it was and not tried again
    at every look, only once it has grown as after a compaction; other logs go on."""
    log = new_log(tmp_path / "s")
    for tx, entries in workload(3, transactions=40):
        log.append_transaction(tx, encoded(entries))
    log.sync()
    generation, size = log.compaction_source() or (0, 0)
    with open(log.directory / log_file_name(generation), "r+b") as f:
        tx, op, flags, _ = _RECORD.unpack(f.read(_RECORD.size))
        f.seek(0)  # the first record now ends 5 bytes before the log does
        f.write(_RECORD.pack(tx, op, flags, size - _RECORD.size - 5))
    shape = cast(ShapeState, SimpleNamespace(status="ready", log=log, handle="h"))
    compactor = Compactor(CompactionSettings(min_bytes=1024, idle_min_bytes=1024), lambda: [shape])
    try:
        assert compactor.next_due(0.0) is None  # first look: size noted
        assert compactor.next_due(1.0) is shape
        assert not asyncio.run(compactor.compact(shape))
    finally:
        compactor.close()
    assert compactor.failures == 1 and compactor.compactions == 0
    assert not temporary_log(log.directory, generation + 1).exists()
    assert not temporary_index(log.directory, generation + 1).exists()
    assert log.compaction_source() == (generation, size)
    assert compactor.next_due(2.0) is None and compactor.next_due(3.0) is None
    for tx, entries in workload(4, transactions=200):
        log.append_transaction(10**6 + tx, encoded(entries))
    compactor.next_due(4.0)
    assert compactor.next_due(5.0) is shape
