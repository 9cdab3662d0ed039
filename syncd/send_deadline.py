"""Bounded sending: a small transport buffer per connection, and the send deadline.

Layer: ``syncd``. Theory of operation: uvicorn writes each response piece to the connection's
transport and, before the next one, waits while the transport's write buffer is above its
high-water mark. A reader that stops reading therefore holds what the kernel's send buffer
takes, one piece, and the transport's buffer up to that mark; its response handler waits in
``send``. :func:`with_send_deadline` lowers the mark (:data:`WRITE_HIGH_WATER`) and arms one
timer each time the transport pauses writing (buffer above the mark), disarmed when it resumes
(drained below the low-water mark): if the buffer has not drained within the deadline, the
connection is reset, that is aborted with a zero linger, so that the transport's and the
kernel's unsent bytes are dropped at once (a plain close would keep them until the peer
reads), and the protocol's ``connection_lost`` wakes the waiting handler, which then sees a
disconnect.

Each request's ASGI scope also carries the connection's :func:`connection_gone` signal, set when
the connection is lost: a held long-poll or an open SSE stream waits on it instead of on a task
of its own that reads the request's ``http.disconnect`` message, which costs a few kilobytes per
waiting request.

Memory freed by many such connections at once is scattered over the C heap, which the
allocator does not hand back to the system by itself: after a connection that had paused
ends, :class:`HeapTrim` asks it to (``malloc_trim``, glibc only), at most once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any, Final

from starlette.types import Scope

from syncd.connection_memory import trim_connection, trim_request
from syncd.shape_state import Wakeup

log = logging.getLogger("syncd.http")

WRITE_HIGH_WATER: Final = 16 * 1024
"""The transport's write-buffer high-water mark (asyncio's default is 64 KiB)."""
TRIM_DELAY: Final = 1.0
_RESET_ON_CLOSE: Final = struct.pack("ii", 1, 0)
_GONE_KEY: Final = "syncd.connection_gone"


def connection_gone(scope: Scope) -> Wakeup | None:
    """The signal set when the request's connection is lost, under ``python -m syncd``; None
    under any other ASGI server (wait for ``http.disconnect`` then)."""
    gone = scope.get(_GONE_KEY)
    return gone if isinstance(gone, Wakeup) else None


class HeapTrim:
    """Returns free C heap memory to the system, at most once per :data:`TRIM_DELAY`."""

    def __init__(self) -> None:
        self._trim = _load_malloc_trim()
        self._pending: asyncio.TimerHandle | None = None

    def soon(self) -> None:
        """Trim once, :data:`TRIM_DELAY` from now (a no-op if one is already due)."""
        if self._trim is not None and self._pending is None:
            loop = asyncio.get_running_loop()
            self._pending = loop.call_later(TRIM_DELAY, self._run)

    def _run(self) -> None:
        self._pending = None
        if self._trim is not None:
            self._trim(0)


def _load_malloc_trim() -> Callable[[int], Any] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], Any] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


def with_send_deadline(base: type[Any], seconds: float) -> type[asyncio.Protocol]:
    """A subclass of the uvicorn HTTP protocol ``base`` with a small transport buffer that resets
    a connection whose write buffer stays above the high-water mark for ``seconds``."""
    heap_trim = HeapTrim()

    class DeadlineProtocol(base):  # type: ignore[misc]
        _send_timer: asyncio.TimerHandle | None = None
        _paused_once = False
        _gone: Wakeup | None = None

        def on_headers_complete(self) -> None:
            super().on_headers_complete()  # the request's task is created, not started yet
            trim_request(self)
            if self._gone is None:
                self._gone = Wakeup()
            self.scope[_GONE_KEY] = self._gone

        def connection_made(self, transport: asyncio.Transport) -> None:
            transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
            super().connection_made(transport)
            trim_connection(self)

        def pause_writing(self) -> None:
            super().pause_writing()
            self._paused_once = True
            if self._send_timer is None:
                loop = asyncio.get_running_loop()
                self._send_timer = loop.call_later(seconds, self._send_deadline_passed)

        def resume_writing(self) -> None:
            self._disarm_send_timer()
            super().resume_writing()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_send_timer()
            super().connection_lost(exc)
            if self._gone is not None:
                self._gone.set()
            if self._paused_once:
                heap_trim.soon()

        def _disarm_send_timer(self) -> None:
            if self._send_timer is not None:
                self._send_timer.cancel()
                self._send_timer = None

        def _send_deadline_passed(self) -> None:
            self._send_timer = None
            transport: asyncio.Transport | None = self.transport
            if transport is None:
                return
            log.info(
                "closing a connection whose reader did not drain its response in %g s (%s)",
                seconds,
                _peer(transport),
            )
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # closing with unsent data would wait on the peer; a zero linger resets
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
            transport.abort()

    DeadlineProtocol.__name__ = DeadlineProtocol.__qualname__ = f"Deadline{base.__name__}"
    return DeadlineProtocol


def _peer(transport: asyncio.Transport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "unknown peer"
