"""New shape logs made in batches, each batch in one trip to a worker thread.

Layer: ``syncd``.

Theory of operation
===================

Making a log (:meth:`syncd.storage.ShapeLog.create`: a directory and a file) waits for the
filesystem, so it does not run on the event loop. One thread trip per new shape is costly when
shapes come in bursts: every trip hands the interpreter lock to the worker thread and back
several times, and the shapes' snapshots, queued one by one as their trips end, are taken in
batches of one or two.

:class:`LogCreator` batches the way a group commit does. A request that finds it idle starts a
trip at once (no waiting for company); the requests made while a trip runs are made together by
the next trip. A trip makes each of its logs on its own, so one that fails (its directory holds
a log already, the disk is full) fails only its own request. Every request of a trip gets its
answer in the same turn of the event loop, so the shapes they belong to queue their snapshots
together, and one snapshot transaction reads them all.

A request cancelled while its trip runs leaves a log nobody registered: it is removed as soon as
the trip returns. A trip cancelled itself (at shutdown) cancels its requests and leaves the logs
its thread goes on making to the next start, which discards logs without metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from syncd.storage import ShapeLog


class LogCreator:
    """Makes new shape logs of one chunk size, in batches (module docstring)."""

    def __init__(self, chunk_bytes: int) -> None:
        self._chunk_bytes = chunk_bytes
        self._asked: list[tuple[Path, asyncio.Future[ShapeLog]]] = []
        self._trip: asyncio.Task[None] | None = None
        self.trips = 0
        """Trips to a worker thread made so far."""

    async def create(self, directory: Path) -> ShapeLog:
        """A new, empty log in ``directory`` (see :meth:`ShapeLog.create`).

        Raises:
            OSError: the directory could not be made, or already holds a log.
            ValueError: an invalid chunk size.
        """
        made: asyncio.Future[ShapeLog] = asyncio.get_running_loop().create_future()
        self._asked.append((directory, made))
        if self._trip is None:
            self._trip = asyncio.create_task(self._make_asked(), name="syncd-new-logs")
        return await made

    async def _make_asked(self) -> None:
        try:
            while self._asked:
                batch, self._asked = self._asked, []
                self.trips += 1
                try:
                    results = await asyncio.to_thread(
                        _make_logs, [directory for directory, _ in batch], self._chunk_bytes
                    )
                except BaseException:  # the trip itself was cancelled: so are its requests
                    for _directory, made in batch:
                        made.cancel()
                    raise
                for (_directory, made), result in zip(batch, results, strict=True):
                    _answer(made, result)
        finally:
            self._trip = None
            for _directory, made in self._asked:  # only when cancelled: nobody makes them
                made.cancel()
            self._asked = []


def _make_logs(directories: list[Path], chunk_bytes: int) -> list[ShapeLog | Exception]:
    """Each directory's new log, or the error that stopped it (worker thread)."""
    results: list[ShapeLog | Exception] = []
    devices: dict[str, int] = {}
    """The filesystem of each parent directory (usually one), looked up once per trip (by
    text: pathlib's ``parent`` and hashing cost more than the lookup saves)."""
    for directory in directories:
        try:
            parent = os.path.dirname(directory)
            device = devices.get(parent)
            if device is None:
                with contextlib.suppress(OSError):  # a missing parent: create makes it
                    device = devices[parent] = os.stat(parent).st_dev
            results.append(ShapeLog.create(directory, chunk_bytes, device=device))
        except Exception as error:  # this log's failure, not the others'
            results.append(error)
    return results


def _answer(made: asyncio.Future[ShapeLog], result: ShapeLog | Exception) -> None:
    if isinstance(result, Exception):
        if not made.cancelled():
            made.set_exception(result)
    elif made.cancelled():
        result.delete()  # nobody will register it
    else:
        made.set_result(result)
