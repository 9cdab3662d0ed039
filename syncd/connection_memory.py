"""Smaller per-connection state for uvicorn's HTTP protocol, for servers that hold thousands of
idle connections (held long-polls, open SSE streams).

Layer: ``syncd``. Theory of operation: each connection of uvicorn's httptools protocol keeps
three ``collections.deque`` objects that stay empty for almost all of its life: the pipeline
of requests queued behind the current one, and the waiters of two ``asyncio.Event`` objects
(the transport's flow control and the request's body messages). CPython gives every deque a
block of 64 slots at creation, about 600 bytes each: more than a tenth of what a held request
costs in all. A list holds the same few items in a few dozen bytes. :func:`trim_connection` and
:func:`trim_request` swap them, only while they are empty and only when they are what this
module expects (a deque in an ``asyncio.Event``'s ``_waiters``, a deque pipeline), so a
different uvicorn or Python leaves them as they are. ``asyncio.Event`` only appends to,
removes from and iterates over its waiters, which a list does alike.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any


class Pipeline(list[Any]):
    """The requests queued behind the current one on a connection, as uvicorn uses them
    (``appendleft``, ``pop`` from the right, truth)."""

    __slots__ = ()

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


def lean_event(event: object) -> bool:
    """Give an empty ``asyncio.Event`` a list of waiters instead of a deque; True if it did."""
    if not isinstance(event, asyncio.Event):
        return False
    waiters = getattr(event, "_waiters", None)
    if type(waiters) is not collections.deque or waiters:
        return False
    event._waiters = []  # type: ignore[assignment]
    return True


def trim_connection(protocol: Any) -> None:
    """After ``connection_made``: the flow-control event and the request pipeline."""
    lean_event(getattr(getattr(protocol, "flow", None), "_is_writable_event", None))
    pipeline = getattr(protocol, "pipeline", None)
    if type(pipeline) is collections.deque and not pipeline:
        protocol.pipeline = Pipeline()


def trim_request(protocol: Any) -> None:
    """After a request's head: the event its body messages wake."""
    lean_event(getattr(getattr(protocol, "cycle", None), "message_event", None))
