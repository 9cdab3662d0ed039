"""``LogCreator``: new shape logs asked for together are made in one trip to a thread, each
failing alone, and a log nobody waits for any more is removed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from shapes.offset import SNAPSHOT_END, LogOffset
from syncd.log_creation import LogCreator
from syncd.log_files import REMOVED_SUFFIX
from syncd.storage import ShapeLog
from tests.syncd.logs import read_all_changes

CHUNK_BYTES = 1 << 16


async def test_a_burst_of_requests_takes_few_trips(tmp_path: Path) -> None:
    creator = LogCreator(CHUNK_BYTES)
    # Asked for in one turn of the event loop: one trip.
    first = [asyncio.ensure_future(creator.create(tmp_path / f"s{i}")) for i in range(25)]
    await asyncio.sleep(0)  # they are asked for, and the trip is started...
    await asyncio.sleep(0)  # ...and on its way to the thread
    assert creator.trips == 1
    # Asked for while that trip runs: together, in the next one.
    later = [creator.create(tmp_path / f"s{i}") for i in range(25, 50)]
    logs = await asyncio.gather(*first, *later)
    assert creator.trips == 2
    for i, log in enumerate(logs):
        assert log.directory == tmp_path / f"s{i}"
        log.append_snapshot_rows([b'{"row":%d}' % i])
        log.finish_snapshot(b'{"end":true}')
        log.append_transaction(10 + i, [(0, b'{"change":%d}' % i)])
        log.sync()
        reopened = ShapeLog.open(tmp_path / f"s{i}", CHUNK_BYTES)
        assert reopened.latest_offset == LogOffset(10 + i, 0)
        assert read_all_changes(reopened) == [b'{"change":%d}' % i]
    # A request to an idle creator makes its trip alone, at once.
    alone = await creator.create(tmp_path / "alone")
    assert creator.trips == 3
    assert alone.latest_offset == SNAPSHOT_END


async def test_each_log_fails_alone(tmp_path: Path) -> None:
    creator = LogCreator(CHUNK_BYTES)
    taken = tmp_path / "taken"
    ShapeLog.create(taken, CHUNK_BYTES)
    (tmp_path / "a-file").write_bytes(b"")
    results = await asyncio.gather(
        creator.create(tmp_path / "first"),
        creator.create(taken),
        creator.create(tmp_path / "a-file" / "below"),
        creator.create(tmp_path / "last"),
        return_exceptions=True,
    )
    assert isinstance(results[0], ShapeLog) and isinstance(results[3], ShapeLog)
    assert isinstance(results[1], FileExistsError)
    assert isinstance(results[2], OSError)
    assert creator.trips == 1


async def test_a_log_nobody_waits_for_is_removed(tmp_path: Path) -> None:
    creator = LogCreator(CHUNK_BYTES)
    kept = asyncio.ensure_future(creator.create(tmp_path / "kept"))
    dropped = asyncio.ensure_future(creator.create(tmp_path / "dropped"))
    await asyncio.sleep(0)  # both asked for: the first trip is on its way
    dropped.cancel()
    assert isinstance(await kept, ShapeLog)
    with pytest.raises(asyncio.CancelledError):
        await dropped
    # Renamed aside at once, then removed by a background thread.
    assert await asyncio.to_thread(_names_once_settled, tmp_path) == ["kept"]


def _names_once_settled(directory: Path) -> list[str]:
    """The names in ``directory`` once no removal is under way (within 5 s)."""
    deadline = time.monotonic() + 5.0
    while any(path.name.endswith(REMOVED_SUFFIX) for path in directory.iterdir()):
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return sorted(path.name for path in directory.iterdir())
