"""A live shape followed by the Python client in a process of its own, so that the delays it
notes are syncd's and the client's, not those of a benchmark's other clients sharing its event
loop (``shape-creation`` runs 64 of them beside it).

``python -m bench.live_follower URL TABLE MODE`` follows ``TABLE`` (``MODE``: ``sse`` or
``long-poll``) and writes ``ready`` once up to date, then ``<id> <time>`` for each inserted row
(``time.time()`` when its batch arrived), until it is stopped. :func:`following` runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import cast

from bench.write_to_client import note_inserts
from shapes.client import LiveMode
from syncd.daemon import event_loop_factory

READY_TIMEOUT = 60.0


@contextlib.asynccontextmanager
async def following(url: str, table: str, mode: LiveMode) -> AsyncIterator[dict[int, float]]:
    """Follow ``table`` in a child process while the block runs; yields, once the child is up
    to date, the dict of row ids to the times they arrived, filled as they do.

    Raises:
        RuntimeError: the child ended before it was up to date.
        TimeoutError: it was not up to date within :data:`READY_TIMEOUT` seconds.
    """
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.live_follower",
        url,
        table,
        mode,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
    )
    seen: dict[int, float] = {}
    assert child.stdout is not None
    stdout = child.stdout
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            if (await stdout.readline()).strip() != b"ready":
                raise RuntimeError(f"the live follower ended with status {await child.wait()}")
        reading = asyncio.create_task(_read_arrivals(stdout, seen))
        try:
            yield seen
        finally:
            await asyncio.sleep(0.5)  # the last lines on their way
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
    finally:
        if child.returncode is None:
            child.terminate()
            try:
                async with asyncio.timeout(10):
                    await child.wait()
            except TimeoutError:
                child.kill()
                await child.wait()


async def _read_arrivals(stdout: asyncio.StreamReader, seen: dict[int, float]) -> None:
    while line := await stdout.readline():
        row_id, at = line.split()
        seen.setdefault(int(row_id), float(at))


async def _follow(url: str, table: str, mode: LiveMode) -> None:
    seen: dict[int, float] = {}
    ready = asyncio.Event()
    task = asyncio.create_task(note_inserts(url, table, mode, seen, ready))
    await ready.wait()
    print("ready", flush=True)
    written = 0
    while not task.done():
        await asyncio.sleep(0.05)
        # ids are noted in commit order, once each: the dict's order is the arrival order
        arrived = list(seen.items())[written:]
        written += len(arrived)
        if arrived:
            sys.stdout.write("".join(f"{row_id} {at!r}\n" for row_id, at in arrived))
            sys.stdout.flush()
    await task


def main() -> None:
    url, table, mode = sys.argv[1:4]
    if mode not in ("sse", "long-poll"):
        raise SystemExit(f"mode must be sse or long-poll, not {mode!r}")
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(_follow(url, table, cast(LiveMode, mode)))


if __name__ == "__main__":
    main()
