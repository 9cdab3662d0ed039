"""A minimal live client of the shape protocol, for benchmarks that measure syncd rather than a
client library.

:class:`RawFollower` catches up with a shape (httpx, any response size), then long-polls it live
on one keep-alive HTTP/1.1 connection of its own, parsing no more than the protocol needs: the
status line, the headers it uses and the body (by ``content-length`` or chunked). It costs a
fraction of what a full client costs per response, so with many followers in one process the
delays it records are mostly syncd's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import msgspec

_decode = msgspec.json.Decoder().decode

Rows = Callable[[list[dict[str, Any]], float], None]
"""Called with a live response's change messages and the wall-clock time it arrived."""


class RawFollower:
    """One shape (``params``: ``table``, ``where``, ...) followed live over long-poll."""

    def __init__(self, shape_url: str, params: dict[str, str]) -> None:
        parts = urlsplit(shape_url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._path = parts.path
        self._url = shape_url
        self.params = params
        self.handle = ""
        self.offset = "-1"
        self.rows = 0
        """Change messages received (snapshot and live)."""

    async def catch_up(self, client: httpx.AsyncClient) -> None:
        """Follow the shape from the start to ``up-to-date``."""
        query = {**self.params, "offset": "-1"}
        while True:
            answer = await client.get(self._url, params=query)
            answer.raise_for_status()
            self.rows += sum(1 for m in answer.json() if "key" in m)
            self.handle = answer.headers["electric-handle"]
            self.offset = answer.headers["electric-offset"]
            if "electric-up-to-date" in answer.headers:
                return
            query = {**self.params, "handle": self.handle, "offset": self.offset}

    async def follow(self, on_rows: Rows, ready: Callable[[], None] | None = None) -> None:
        """Long-poll from the caught-up position until cancelled; ``ready`` is called once the
        first live request is sent."""
        reader, writer = await asyncio.open_connection(self._host, self._port)
        cursor = ""
        try:
            while True:
                query = {**self.params, "handle": self.handle, "offset": self.offset}
                query["live"] = "true"
                if cursor:
                    query["cursor"] = cursor
                request = (
                    f"GET {self._path}?{urlencode(query)} HTTP/1.1\r\nhost: {self._host}\r\n\r\n"
                )
                writer.write(request.encode())
                if ready is not None:
                    ready()
                    ready = None
                status, headers, body = await read_response(reader)
                arrived = time.time()
                if status != 200:
                    raise RuntimeError(f"live request answered {status}: {body[:200]!r}")
                self.offset = headers["electric-offset"]
                cursor = headers.get("electric-cursor", cursor)
                changes = [m for m in _decode(body) if "key" in m]
                if changes:
                    self.rows += len(changes)
                    on_rows(changes, arrived)
        finally:
            writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response: status, headers (lower-case names) and the whole body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding") != "chunked":
        raise RuntimeError(f"a response without length: {headers}")
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return status, headers, b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def first_responses(
    shape_url: str,
    shapes: list[dict[str, str]],
    concurrency: int,
    progress: Callable[[int], None] | None = None,
) -> list[int]:
    """Ask for the first response (``offset=-1``) of every shape of ``shapes``, ``concurrency``
    at a time, each client on a keep-alive connection of its own; the rows each response held.
    ``progress`` is called with the count done after each response."""
    parts = urlsplit(shape_url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path
    rows = [0] * len(shapes)
    pending = iter(range(len(shapes)))
    done = 0

    async def client() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for k in pending:
                query = urlencode({**shapes[k], "offset": "-1"})
                writer.write(f"GET {path}?{query} HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
                status, _headers, body = await read_response(reader)
                if status != 200:
                    raise RuntimeError(f"{shapes[k]} answered {status}: {body[:200]!r}")
                rows[k] = sum(1 for m in _decode(body) if "key" in m)
                done += 1
                if progress is not None:
                    progress(done)
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return rows


async def catch_up_all(followers: list[RawFollower], concurrency: int = 64) -> None:
    """Catch every follower up, ``concurrency`` at a time."""
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=60) as client:

        async def catch_up(follower: RawFollower) -> None:
            async with gate:
                await follower.catch_up(client)

        await asyncio.gather(*(catch_up(f) for f in followers))


def id_noter(seen: dict[int, float]) -> Rows:
    """A :data:`Rows` callback noting when each row ``id`` first arrived in ``seen``."""

    def note(changes: list[dict[str, Any]], arrived: float) -> None:
        for message in changes:
            value = message["value"]
            assert isinstance(value, dict)
            seen.setdefault(int(value["id"]), arrived)

    return note


async def follow_all(followers: list[RawFollower], notes: list[Rows]) -> list[asyncio.Task[None]]:
    """Start every follower's live loop (``notes[i]`` for follower ``i``); return the tasks once
    each has sent its first live request. The caller cancels them."""
    all_live = asyncio.Event()
    live = 0

    def counted() -> None:
        nonlocal live
        live += 1
        if live == len(followers):
            all_live.set()

    tasks = [
        asyncio.create_task(f.follow(note, counted))
        for f, note in zip(followers, notes, strict=True)
    ]
    waiter = asyncio.create_task(all_live.wait())
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        for task in tasks:
            task.cancel()
        failed = next(task for task in done if task is not waiter)
        raise RuntimeError("a follower stopped before going live") from failed.exception()
    return tasks
