"""Per-connection trims of uvicorn's protocol state (``syncd.connection_memory``)."""

from __future__ import annotations

import asyncio
import collections
import sys

import pytest

from syncd.connection_memory import Pipeline, lean_event, trim_connection


@pytest.mark.asyncio
async def test_a_lean_event_wakes_every_waiter_and_forgets_them() -> None:
    event = asyncio.Event()
    assert lean_event(event) and isinstance(event._waiters, list)
    waiting = [asyncio.create_task(event.wait()) for _ in range(3)]
    cancelled = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    event.set()
    assert await asyncio.gather(*waiting) == [True, True, True]
    assert event._waiters == []
    event.clear()
    with pytest.raises(TimeoutError):  # cleared: a new waiter waits again
        await asyncio.wait_for(event.wait(), 0.05)
    assert event._waiters == []
    assert not lean_event(event)  # already lean
    assert not lean_event(object())


def test_the_trims_are_smaller_and_keep_the_pipeline_order() -> None:
    pipeline = Pipeline()
    assert sys.getsizeof(pipeline) < sys.getsizeof(collections.deque()) / 4
    for item in ("first", "second", "third"):
        pipeline.appendleft(item)
    assert [pipeline.pop() for _ in range(3)] == ["first", "second", "third"]
    assert not pipeline


def test_trim_connection_leaves_what_it_does_not_know() -> None:
    class Protocol:
        pipeline: object = collections.deque([("queued", None)])  # not empty: kept

    protocol = Protocol()
    trim_connection(protocol)
    assert isinstance(protocol.pipeline, collections.deque)
    protocol.pipeline = collections.deque()
    trim_connection(protocol)
    assert isinstance(protocol.pipeline, Pipeline)
