"""Live requests: long-polls held until the log grows, SSE streams counted while open, and
their release when the server shuts down.

Layer: ``syncd``. :class:`~syncd.http.ShapeApi` decides what to answer; this module owns the
waiting: how long, on which signals (new entries, the client gone, shutdown), and the counts of
what is waiting (for admission control, retention and the metrics).
"""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request

from shapes.offset import LogOffset
from syncd.admission import Admission, Occupancy
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
                del plan  # an empty plan, not kept while waiting
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

    def stream_opened(self, shape: ShapeState) -> OpenStream:
        """Count a live SSE stream on ``shape`` (admission, readers) until the returned count is
        called; calling it again does nothing."""
        self.sse_streams += 1
        shape.readers += 1
        return OpenStream(self, shape, self._admission.occupy("existing"))


class OpenStream:
    """The counts one live SSE stream holds (:meth:`LiveRequests.stream_opened`); calling it
    gives them back, once. A small object: a stream keeps it for its whole life."""

    __slots__ = ("_live", "_shape", "_place")

    def __init__(self, live: LiveRequests, shape: ShapeState, place: Occupancy) -> None:
        self._live = live
        self._shape = shape
        self._place = place

    def __call__(self) -> None:
        if self._place.admitted:
            self._place.release()
            self._live.sse_streams -= 1
            self._shape.readers -= 1
            self._shape.last_used = time.monotonic()
