"""Live requests: long-polls held until the log grows, SSE streams counted while open, and
their release when the server shuts down.

Layer: ``syncd``. :class:`~syncd.http.ShapeApi` decides what to answer; this module owns the
waiting: how long, on which signals (new entries, the client gone, shutdown), and the counts of
what is waiting (for admission control, retention and the metrics).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from starlette.requests import Request

from shapes.offset import LogOffset
from syncd.admission import Admission
from syncd.bodies import disconnected
from syncd.log_format import ReadPlan
from syncd.send_deadline import connection_gone
from syncd.shape_state import ShapeState, Wakeup, wait_briefly


class LiveRequests:
    """The live requests of one API (module docstring)."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self.closing = Wakeup()
        """Set by :meth:`release_all`: every held request answers, every stream ends."""
        self.held_long_polls = 0
        """Live long-polls waiting for changes now."""
        self.sse_streams = 0
        """Live SSE streams open now."""

    def release_all(self) -> None:
        """Answer every held long-poll now and end every SSE stream (for shutting down), so
        that the server can stop without cancelling handlers."""
        self.closing.set()

    async def wait_for(self, shape: ShapeState, offset: LogOffset, limit: float) -> bool:
        """Wait up to ``limit`` seconds for ``shape``'s log to reach ``offset``; whether the
        shape is still ready (it may have gone meanwhile)."""
        deadline = time.monotonic() + limit
        while shape.log.latest_offset < offset and shape.status == "ready":
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await wait_briefly((shape.notifier.wait(), self.closing), remaining)
        return shape.status == "ready"

    async def hold(
        self, request: Request, shape: ShapeState, offset: LogOffset, seconds: float
    ) -> ReadPlan:
        """Wait for entries after ``offset`` up to ``seconds``; an empty plan when none
        came, the client went away or the server is shutting down."""
        deadline = time.monotonic() + seconds
        signal = connection_gone(request.scope)
        gone = signal if signal is not None else asyncio.ensure_future(disconnected(request))
        closing = self.closing
        self.held_long_polls += 1
        shape.readers += 1
        try:
            while shape.status == "ready" and not gone.done() and not closing.done():
                waiter = shape.notifier.wait()
                plan = shape.log.plan_read(offset)
                if not plan.empty:
                    return plan
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                await wait_briefly((waiter, gone, closing), remaining)
        finally:
            self.held_long_polls -= 1
            shape.readers -= 1
            shape.last_used = time.monotonic()
            if isinstance(gone, asyncio.Future):
                if gone.done() and not gone.cancelled():
                    gone.exception()  # a receive() that failed also ends the wait; don't log it
                gone.cancel()
        return ReadPlan(None, offset, offset)

    def stream_opened(self, shape: ShapeState) -> Callable[[], None]:
        """Count a live SSE stream on ``shape`` (admission, readers) until the returned function
        is called; calling it again does nothing."""
        release_admission = self._admission.occupy("existing")
        self.sse_streams += 1
        shape.readers += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                release_admission()
                self.sse_streams -= 1
                shape.readers -= 1
                shape.last_used = time.monotonic()

        return release
