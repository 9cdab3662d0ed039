"""``ShapeStream`` through :class:`AiohttpTransport` against a scripted aiohttp server on
loopback: failures are retried and cut streams resumed exactly as through httpx."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from shapes.client import AiohttpTransport, ShapeDefinition, ShapeStream

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

UP_TO_DATE = {"headers": {"control": "up-to-date", "global_last_seen_lsn": "100"}}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_get("/v1/shape", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}/v1/shape"

    yield start
    for runner in runners:
        await runner.cleanup()


def change(lsn: int, op: int, key: int) -> dict[str, object]:
    return {
        "key": f"k{key}",
        "value": {"id": str(key)},
        "headers": {"operation": "insert", "lsn": str(lsn), "op_position": op},
    }


async def test_failures_are_retried_then_the_shape_reads(
    serve: Callable[[Handler], Awaitable[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shapes.client.stream.BACKOFF_INITIAL", 0.001)
    script = ["503", "cut", "429", "ok"]
    seen: list[str] = []

    async def respond(request: web.Request) -> web.StreamResponse:
        step = script.pop(0)
        seen.append(step)
        if step == "cut":
            assert request.transport is not None
            request.transport.close()  # the connection ends with no answer
            return web.Response()
        if step != "ok":
            retry = {"retry-after": "0"}
            return web.json_response({"message": "x"}, status=int(step), headers=retry)
        headers = {
            "electric-handle": "h",
            "electric-offset": "0_inf",
            "electric-schema": json.dumps({"id": {"type": "int4"}}),
        }
        return web.json_response([change(100, 0, 1), UP_TO_DATE], headers=headers)

    url = await serve(respond)
    transport = AiohttpTransport()
    try:
        stream = ShapeStream(url, ShapeDefinition.of("t"), transport=transport)
        batch = await anext(aiter(stream))
    finally:
        await transport.aclose()
    assert seen == ["503", "cut", "429", "ok"]
    assert batch[0]["value"] == {"id": 1}
    assert (stream.handle, stream.offset) == ("h", "100_0")  # the change is further on


async def test_an_sse_stream_cut_before_its_up_to_date_is_read_again(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    live_offsets: list[str] = []

    async def respond(request: web.Request) -> web.StreamResponse:
        offset = request.query["offset"]
        if request.query.get("live") != "true":
            headers = {"electric-handle": "h", "electric-offset": "0_inf"}
            return web.json_response([UP_TO_DATE], headers=headers)
        live_offsets.append(offset)
        response = web.StreamResponse(
            headers={"electric-handle": "h", "content-type": "text/event-stream"}
        )
        await response.prepare(request)
        for event in (change(100, 0, 1), change(100, 2, 2)):
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        if len(live_offsets) > 1:
            await response.write(f"data: {json.dumps(UP_TO_DATE)}\n\n".encode())
        await response.write_eof()
        return response

    url = await serve(respond)
    transport = AiohttpTransport()
    try:
        stream = ShapeStream(url, ShapeDefinition.of("t"), transport=transport, live_mode="sse")
        batches = aiter(stream)
        assert await anext(batches) == [UP_TO_DATE]
        batch = await anext(batches)
    finally:
        await transport.aclose()
    assert live_offsets == ["0_inf", "0_inf"]
    assert [m["key"] for m in batch if "key" in m] == ["k1", "k2"]
    assert stream.offset == "100_2"


async def test_a_closed_transport_refuses_requests_and_opens_no_session(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    async def respond(request: web.Request) -> web.StreamResponse:
        return web.json_response([UP_TO_DATE], headers={"electric-up-to-date": ""})

    url = await serve(respond)
    transport = AiohttpTransport()
    async with transport.get(url, {"table": "items", "offset": "-1"}, {}) as answer:
        assert answer.status == 200
    await transport.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        async with transport.get(url, {"table": "items", "offset": "-1"}, {}):
            pass
    assert transport._session is None  # nothing left to close, nothing unclosed
    await transport.aclose()  # closing twice is fine
