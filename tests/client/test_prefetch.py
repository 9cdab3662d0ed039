"""Catch-up requests sent one ahead (``shapes.client.stream._Prefetch``), against a scripted
transport whose bodies arrive only when the test lets them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from shapes.client import ShapeDefinition, ShapeStream

URL = "http://127.0.0.1/v1/shape"
SCHEMA = json.dumps({"id": {"type": "int4"}})
UP_TO_DATE = {"headers": {"control": "up-to-date", "global_last_seen_lsn": "9"}}


def insert(row_id: int) -> dict[str, Any]:
    return {"key": f"k{row_id}", "value": {"id": str(row_id)}, "headers": {"operation": "insert"}}


def page(offset: str, up_to_date: bool = False) -> dict[str, str]:
    headers = {"electric-handle": "h", "electric-offset": offset, "electric-schema": SCHEMA}
    if up_to_date:
        headers["electric-up-to-date"] = ""
    return headers


async def held_body(gate: asyncio.Event, payload: bytes) -> AsyncIterator[bytes]:
    await asyncio.wait_for(gate.wait(), 5.0)
    yield payload


@pytest.mark.asyncio
async def test_the_next_page_is_requested_when_the_head_of_the_one_before_arrives() -> None:
    """The body of the first page is held until the request for the second page has arrived:
    without prefetching the stream would wait for it forever (here: 5 s, then fail)."""
    asked: list[str] = []
    second_asked = asyncio.Event()
    third_asked = asyncio.Event()

    def respond(request: httpx.Request) -> httpx.Response:
        offset = request.url.params["offset"]
        asked.append(offset)
        if offset == "-1":
            body = json.dumps([insert(1)]).encode()
            return httpx.Response(200, headers=page("0_0"), content=held_body(second_asked, body))
        if offset == "0_0":
            second_asked.set()
            body = json.dumps([insert(2)]).encode()
            return httpx.Response(200, headers=page("5_0"), content=held_body(third_asked, body))
        assert offset == "5_0"
        third_asked.set()
        messages = [insert(3), UP_TO_DATE]
        return httpx.Response(200, headers=page("5_2", up_to_date=True), json=messages)

    async with httpx.AsyncClient(transport=httpx.MockTransport(respond)) as client:
        stream = ShapeStream(URL, ShapeDefinition.of("t"), client=client, live=False)
        batch = await anext(aiter(stream))
        await stream.aclose()
    assert [m["value"]["id"] for m in batch if "key" in m] == [1, 2, 3]
    assert asked == ["-1", "0_0", "5_0"]  # nothing is prefetched after an up-to-date answer
    assert (stream.handle, stream.offset) == ("h", "5_2")


@pytest.mark.asyncio
async def test_a_request_ahead_is_cancelled_when_the_stream_is_given_up() -> None:
    ahead_started = asyncio.Event()
    ahead_cancelled = asyncio.Event()

    async def respond(request: httpx.Request) -> httpx.Response:
        if request.url.params["offset"] == "-1":
            return httpx.Response(200, headers=page("0_0"), json=[insert(1)])
        ahead_started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            ahead_cancelled.set()
            raise
        raise AssertionError("the request ahead was not cancelled")

    async with httpx.AsyncClient(transport=httpx.MockTransport(respond)) as client:
        stream = ShapeStream(URL, ShapeDefinition.of("t"), client=client, live=False)
        batches = aiter(stream)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(batches), 0.3)
        assert ahead_started.is_set()
        await stream.aclose()
    await asyncio.wait_for(ahead_cancelled.wait(), 5.0)


@pytest.mark.asyncio
async def test_a_prefetched_answer_for_another_query_is_dropped() -> None:
    """After a 409, a cached copy with the expired handle makes the stream change its next
    query (a new cache-buster, its own handle and offset): the request sent ahead from that
    copy's headers is not used."""
    asked: list[dict[str, str]] = []

    def respond(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        asked.append(params)
        if "cache-buster" not in params:
            return httpx.Response(409, headers={"electric-handle": "new"}, json=[])
        if params["offset"] == "3_0":  # sent ahead from the stale copy's headers
            body = [insert(8), UP_TO_DATE]
            return httpx.Response(200, headers=page("3_1", up_to_date=True), json=body)
        if len(asked) == 2:  # the first request after the 409: a stale copy, not up to date
            headers = {"electric-handle": "old", "electric-offset": "3_0"}
            return httpx.Response(200, headers=headers, json=[insert(7)])
        body = [insert(1), UP_TO_DATE]
        return httpx.Response(200, headers=page("0_inf", up_to_date=True), json=body)

    async with httpx.AsyncClient(transport=httpx.MockTransport(respond)) as client:
        stream = ShapeStream(
            URL, ShapeDefinition.of("t"), client=client, handle="old", offset="0_inf", live=False
        )
        batches = aiter(stream)
        assert await anext(batches) == [{"headers": {"control": "must-refetch"}}]
        batch = await anext(batches)
        await stream.aclose()
    assert [m["value"]["id"] for m in batch if "key" in m] == [1]
    ahead = [params for params in asked if params["offset"] == "3_0"]
    assert len(ahead) == 1 and ahead[0]["handle"] == "old"
    assert asked[-1]["offset"] == "-1"
    assert asked[-1]["cache-buster"] != asked[1]["cache-buster"]
