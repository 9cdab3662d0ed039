"""The send deadline: a connection whose reader stops draining is closed after a time limit.

Layer: ``syncd``. Theory of operation: uvicorn writes each response piece to the connection's
transport and, before the next one, waits while the transport's write buffer is above its
high-water mark (64 KiB). A reader that stops reading therefore holds at most one piece plus
that buffer, and its response handler waits in ``send``. The asyncio transport tells its
protocol when the buffer crosses the mark (``pause_writing``) and when it has drained below
the low-water mark (``resume_writing``). :func:`with_send_deadline` arms one timer at each
pause and disarms it at the resume: if the buffer has not drained within the deadline, the
connection is aborted. Aborting (unlike closing) drops the unsent bytes at once, and the
protocol's ``connection_lost`` wakes the waiting handler, which then sees a disconnect.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("syncd.http")


def with_send_deadline(base: type[Any], seconds: float) -> type[asyncio.Protocol]:
    """A subclass of the uvicorn HTTP protocol ``base`` that aborts a connection whose write
    buffer stays above the high-water mark for ``seconds``."""

    class DeadlineProtocol(base):  # type: ignore[misc]
        _send_timer: asyncio.TimerHandle | None = None

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._send_timer is None:
                loop = asyncio.get_running_loop()
                self._send_timer = loop.call_later(seconds, self._send_deadline_passed)

        def resume_writing(self) -> None:
            self._disarm_send_timer()
            super().resume_writing()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_send_timer()
            super().connection_lost(exc)

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
            transport.abort()

    DeadlineProtocol.__name__ = DeadlineProtocol.__qualname__ = f"Deadline{base.__name__}"
    return DeadlineProtocol


def _peer(transport: asyncio.Transport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "unknown peer"
