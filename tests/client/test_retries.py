"""Retry rules of ``ShapeStream`` against a scripted transport (``docs/protocol.md``)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from shapes.client import (
    LiveMode,
    ShapeDefinition,
    ShapeRequestError,
    ShapeStream,
    backoff_delay,
    retry_after_seconds,
)

UP_TO_DATE = [{"headers": {"control": "up-to-date", "global_last_seen_lsn": "7"}}]


def test_retry_after_and_backoff() -> None:
    assert retry_after_seconds(None) == 0.0
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("soon") == 0.0
    assert retry_after_seconds("Thu, 01 Jan 1970 00:00:10 GMT", now=4.0) == 6.0
    for attempt in range(12):
        assert 0.0 <= backoff_delay(attempt) <= min(10.0, 0.1 * 2**attempt)
    assert backoff_delay(0, minimum=2.5) == 2.5


@pytest.mark.asyncio
async def test_retries_5xx_and_network_errors_then_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shapes.client.stream.BACKOFF_INITIAL", 0.001)
    script = ["503", "network", "429", "ok"]
    seen: list[str] = []

    def respond(request: httpx.Request) -> httpx.Response:
        step = script.pop(0)
        seen.append(step)
        if step == "network":
            raise httpx.ConnectError("refused", request=request)
        if step != "ok":
            return httpx.Response(int(step), headers={"retry-after": "0"}, json={"message": "x"})
        assert request.url.params["offset"] == "-1"
        headers = {
            "electric-handle": "h",
            "electric-offset": "0_inf",
            "electric-schema": json.dumps({"id": {"type": "int4"}}),
        }
        body = [{"key": "k", "value": {"id": "1"}, "headers": {"operation": "insert"}}, *UP_TO_DATE]
        return httpx.Response(200, headers=headers, json=body)

    async with httpx.AsyncClient(transport=httpx.MockTransport(respond)) as client:
        stream = ShapeStream("http://127.0.0.1/v1/shape", ShapeDefinition.of("t"), client=client)
        batch = await anext(aiter(stream))
    assert seen == ["503", "network", "429", "ok"]
    assert batch[0]["value"] == {"id": 1}
    assert (stream.handle, stream.offset) == ("h", "0_inf")


@pytest.mark.parametrize("live_sse", [False, True])
async def test_a_body_that_is_not_json_is_a_request_error(live_sse: bool) -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        headers = {"electric-handle": "h", "electric-offset": "0_inf"}
        if request.url.params.get("live_sse") == "true":
            text = "data: <html>\n\n"
            return httpx.Response(200, headers=headers, text=text)
        if request.url.params["offset"] == "-1" and live_sse:
            return httpx.Response(200, headers=headers, json=UP_TO_DATE)
        return httpx.Response(200, headers=headers, text="<html>a captive portal</html>")

    async with httpx.AsyncClient(transport=httpx.MockTransport(respond)) as client:
        live_mode: LiveMode = "sse" if live_sse else "long-poll"
        stream = ShapeStream(
            "http://127.0.0.1/v1/shape", ShapeDefinition.of("t"), client=client, live_mode=live_mode
        )
        with pytest.raises(ShapeRequestError) as raised:
            async for _batch in stream:
                pass
    assert raised.value.status == 200
    assert "html" in str(raised.value.body)


def change(lsn: int, op: int, row_id: int) -> dict[str, Any]:
    headers = {"operation": "insert", "lsn": str(lsn), "op_position": op}
    return {"key": f"k{row_id}", "value": {"id": str(row_id)}, "headers": headers}


@pytest.mark.asyncio
async def test_a_catch_up_interrupted_before_its_up_to_date_loses_nothing() -> None:
    """Changes read before an interrupted batch's end were never delivered: a new iteration
    of the same stream (from its unchanged offset) must deliver them, not drop them as seen."""
    gate = asyncio.Event()

    async def respond(request: httpx.Request) -> httpx.Response:
        headers = {"electric-handle": "h", "electric-schema": json.dumps({"id": {"type": "int4"}})}
        offset = request.url.params["offset"]
        if offset == "-1":
            return httpx.Response(200, headers={**headers, "electric-offset": "0_0"}, json=[])
        if offset == "0_0":  # first chunk of the log: no up-to-date yet
            body = [change(100, 0, 1)]
            return httpx.Response(200, headers={**headers, "electric-offset": "100_0"}, json=body)
        assert offset == "100_0"
        await gate.wait()
        body = [change(100, 2, 2), *UP_TO_DATE]
        return httpx.Response(200, headers={**headers, "electric-offset": "100_2"}, json=body)

    async with httpx.AsyncClient(transport=httpx.MockTransport(respond)) as client:
        stream = ShapeStream("http://127.0.0.1/v1/shape", ShapeDefinition.of("t"), client=client)
        with pytest.raises(TimeoutError):  # the caller gives up waiting in the middle
            await asyncio.wait_for(anext(aiter(stream)), 0.2)
        assert stream.offset == "-1"
        gate.set()
        batch = await anext(aiter(stream))
    assert [m["value"]["id"] for m in batch if "key" in m] == [1, 2]
    assert stream.offset == "100_2"


@pytest.mark.asyncio
async def test_an_sse_batch_cut_before_its_up_to_date_is_read_again() -> None:
    """An SSE connection that ends between a change and its up-to-date: the change comes again
    on the next request and is delivered then, once; the position is that change's own."""
    live_requests: list[str] = []

    def respond(request: httpx.Request) -> httpx.Response:
        params = request.url.params
        headers = {"electric-handle": "h", "electric-offset": params["offset"]}
        if params["offset"] == "-1":
            return httpx.Response(200, headers={**headers, "electric-offset": "0_0"}, json=[])
        if params.get("live") != "true":
            return httpx.Response(
                200, headers={**headers, "electric-offset": "0_inf"}, json=UP_TO_DATE
            )
        live_requests.append(params["offset"])
        events = [change(100, 0, 1), change(100, 2, 2)]
        if len(live_requests) > 1:
            events.append({"headers": {"control": "up-to-date", "global_last_seen_lsn": "100"}})
        text = "".join(f"data: {json.dumps(event)}\n\n" for event in events)
        return httpx.Response(200, headers=headers, text=text)

    async with httpx.AsyncClient(transport=httpx.MockTransport(respond)) as client:
        stream = ShapeStream(
            "http://127.0.0.1/v1/shape", ShapeDefinition.of("t"), client=client, live_mode="sse"
        )
        batches = aiter(stream)
        assert await anext(batches) == UP_TO_DATE
        batch = await anext(batches)
    assert live_requests == ["0_inf", "0_inf"]
    assert [m["key"] for m in batch if "key" in m] == ["k1", "k2"]
    assert stream.offset == "100_2"


def caching_proxy(always_stale: bool) -> httpx.MockTransport:
    """A shape whose handle rotated from ``old`` to ``new`` behind a cache that still holds the
    ``offset=-1`` answer from before: any URL it has not seen goes to the origin."""
    stale_snapshot = {"electric-handle": "old", "electric-offset": "0_0"}

    def respond(request: httpx.Request) -> httpx.Response:
        params = request.url.params
        if params["offset"] == "-1" and ("cache-buster" not in params or always_stale):
            return httpx.Response(200, headers=stale_snapshot, json=[])
        if params.get("handle") == "old":
            return httpx.Response(409, headers={"electric-handle": "new"}, json=[{}])
        offset = "0_0" if params["offset"] == "-1" else "0_inf"
        body = [] if offset == "0_0" else UP_TO_DATE
        return httpx.Response(
            200, headers={"electric-handle": "new", "electric-offset": offset}, json=body
        )

    return httpx.MockTransport(respond)


@pytest.mark.asyncio
async def test_after_a_409_a_cached_copy_with_the_expired_handle_is_not_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("shapes.client.stream.BACKOFF_INITIAL", 0.001)
    async with httpx.AsyncClient(transport=caching_proxy(always_stale=False)) as client:
        stream = ShapeStream(
            "http://127.0.0.1/v1/shape",
            ShapeDefinition.of("t"),
            client=client,
            handle="old",
            offset="0_inf",
            live=False,
        )
        batches = aiter(stream)
        first, second = await anext(batches), await anext(batches)
    assert first == [{"headers": {"control": "must-refetch"}}]
    assert second == UP_TO_DATE
    assert (stream.handle, stream.offset) == ("new", "0_inf")


@pytest.mark.asyncio
async def test_only_stale_copies_after_a_409_are_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shapes.client.stream.BACKOFF_INITIAL", 0.001)
    async with httpx.AsyncClient(transport=caching_proxy(always_stale=True)) as client:
        stream = ShapeStream(
            "http://127.0.0.1/v1/shape",
            ShapeDefinition.of("t"),
            client=client,
            handle="old",
            offset="0_inf",
            live=False,
        )
        batches = aiter(stream)
        assert await anext(batches) == [{"headers": {"control": "must-refetch"}}]
        with pytest.raises(ShapeRequestError) as raised:
            await anext(batches)
    assert raised.value.status == 502
