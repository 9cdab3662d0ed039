"""A second syncd (a daemon or an embedded engine) on a slot that another process streams from
stops with one line naming that process, instead of retrying for ever."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from syncd.embed import EmbeddedSyncd
from syncd.errors import SlotInUse
from tests.syncd_process import ROOT, SyncdProcess


@pytest.fixture
def first(pg_dsn: str, tmp_path: Path) -> Iterator[SyncdProcess]:
    daemon = SyncdProcess(pg_dsn, tmp_path / "first")
    daemon.start()
    yield daemon
    daemon.stop()


def walsender_pid(daemon: SyncdProcess) -> int:
    with psycopg.connect(daemon.dsn) as conn:
        row = conn.execute(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
            [daemon.settings["slot"]],
        ).fetchone()
    assert row is not None and row[0] is not None
    return int(row[0])


async def second_daemon(daemon: SyncdProcess, storage: Path) -> tuple[int | None, str]:
    """Run ``python -m syncd`` on the first daemon's slot; its exit status and output."""
    second = SyncdProcess(daemon.dsn, storage, slot=daemon.settings["slot"])
    env = second.environment()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "syncd",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode, output.decode()


async def test_a_second_syncd_on_a_busy_slot_says_who_holds_it(
    first: SyncdProcess, tmp_path: Path
) -> None:
    pid = walsender_pid(first)
    started = time.monotonic()
    daemon = asyncio.ensure_future(second_daemon(first, tmp_path / "second"))
    embedded = EmbeddedSyncd(first.dsn, tmp_path / "embedded", slot=first.settings["slot"])
    with pytest.raises(SlotInUse) as refused:
        await embedded.start()
    status, output = await daemon
    assert time.monotonic() - started < 15
    expected = f"is in use by another process: walsender pid {pid}"
    assert expected in str(refused.value)
    assert "--slot" in str(refused.value)
    assert status == 1, output
    assert "Traceback" not in output
    [line] = [line for line in output.splitlines() if expected in line]
    assert "CRITICAL" in line and f"pg_terminate_backend({pid})" in line
    assert "WARNING" not in output
    assert walsender_pid(first) == pid  # the first one streams on
