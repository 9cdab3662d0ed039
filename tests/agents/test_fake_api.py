"""The offline Messages API, driven by the real ``anthropic`` SDK."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from agents.fake_api import FakeApi, Fault, serve

USER_A = "11111111-1111-4111-8111-111111111111"
EVENT_1 = "22222222-2222-4222-8222-222222222222"
CONTEXT = f"""Here's everything that happened so far:

<user_message>
  from: {USER_A}
  id: {EVENT_1}
  text: I keep buying houseplants and forgetting to water them.
</user_message>

What's the next step?"""

TOOLS: list[Any] = [
    {
        "name": "ask_user_about_themselves",
        "description": "Ask a user about themselves.",
        "input_schema": {
            "type": "object",
            "properties": {"subject": {"type": "string"}, "question": {"type": "string"}},
            "required": ["subject", "question"],
        },
    },
    {
        "name": "roast_user",
        "description": "Roast a user.",
        "input_schema": {
            "type": "object",
            "properties": {"subject": {"type": "string"}, "roast": {"type": "string"}},
            "required": ["subject", "roast"],
        },
    },
]


OPEN_CLIENTS: list[anthropic.AsyncAnthropic] = []


@pytest.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    yield
    while OPEN_CLIENTS:
        await OPEN_CLIENTS.pop().close()


def client(base_url: str, **options: Any) -> anthropic.AsyncAnthropic:
    """The real SDK, validating every response strictly; closed after the test."""
    options.setdefault("max_retries", 0)
    api = anthropic.AsyncAnthropic(
        base_url=base_url, api_key="test", _strict_response_validation=True, **options
    )
    OPEN_CLIENTS.append(api)
    return api


def request(persona: str = "Jerry", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-test",
        "max_tokens": 512,
        "system": f"You are {persona}. Be brief.",
        "messages": [{"role": "user", "content": CONTEXT}],
        "tools": TOOLS,
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    }
    body.update(extra)
    return body


async def test_create_returns_a_tool_use_message(base_url: str, fake: FakeApi) -> None:
    message = await client(base_url).messages.create(**request("Jerry"))
    assert message.type == "message" and message.role == "assistant"
    assert message.model == "claude-test"
    assert message.stop_reason == "tool_use"
    assert message.id.startswith("msg_fake_")
    assert message._request_id is not None and message._request_id.startswith("req_fake_")
    [block] = message.content
    assert block.type == "tool_use"
    assert block.id.startswith("toolu_fake_")
    assert block.name == "roast_user"
    assert block.input["subject"] == USER_A
    assert "houseplants" in block.input["roast"]
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert [r.persona for r in fake.requests] == ["jerry"]
    assert fake.requests[0].body["system"] == "You are Jerry. Be brief."


async def test_persona_is_recognised_from_the_system_prompt(base_url: str) -> None:
    sarah = await client(base_url).messages.create(**request("Sarah"))
    [block] = sarah.content
    assert block.type == "tool_use" and block.name == "ask_user_about_themselves"
    assert block.input["subject"] == USER_A and block.input["question"].endswith("?")


async def test_forced_tool_is_the_one_called(base_url: str) -> None:
    body = request("Sarah", tool_choice={"type": "tool", "name": "roast_user"})
    message = await client(base_url).messages.create(**body)
    assert [b.name for b in message.content if b.type == "tool_use"] == ["roast_user"]


async def test_stream_delivers_the_same_message_as_create(base_url: str) -> None:
    api = client(base_url)
    created = await api.messages.create(**request("Frankie"))
    kinds: list[str] = []
    partial = ""
    async with api.messages.stream(**request("Frankie")) as stream:
        async for event in stream:
            kinds.append(event.type)
            if event.type == "input_json":
                partial += event.partial_json
        final = await stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert {"content_block_start", "content_block_delta", "content_block_stop"} <= set(kinds)
    assert "message_delta" in kinds
    assert kinds.count("input_json") > 1, "the tool input arrives in several deltas"
    [streamed], [whole] = final.content, created.content
    assert streamed.type == whole.type == "tool_use"
    assert json.loads(partial) == streamed.input == whole.input
    assert final.stop_reason == "tool_use"
    assert final.usage.output_tokens == created.usage.output_tokens


async def test_text_stream_without_tools(base_url: str) -> None:
    api = client(base_url)
    async with api.messages.stream(
        **request("Jerry", tools=anthropic.omit, tool_choice=anthropic.omit)
    ) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert len(pieces) > 1
    assert final.stop_reason == "end_turn"
    [block] = final.content
    assert block.type == "text" and block.text == "".join(pieces)


async def test_stream_wire_format(base_url: str) -> None:
    """Every event has an ``event:`` line whose name repeats the data's ``type``; pings appear."""
    headers = {"x-api-key": "test", "anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{base_url}/v1/messages", json=request(stream=True), headers=headers
        )
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [e for e in response.text.replace("\r\n", "\n").split("\n\n") if e.strip()]
    names = []
    for event in events:
        lines = dict(line.split(": ", 1) for line in event.splitlines())
        assert json.loads(lines["data"])["type"] == lines["event"]
        names.append(lines["event"])
    assert names[:2] == ["message_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]


async def test_same_seed_same_reply_other_seed_other_replies() -> None:
    async def replies(seed: int) -> list[Any]:
        fake = FakeApi(seed=seed)
        async with serve(fake) as url:
            api = client(url)
            out = []
            for persona in ("Sarah", "Jerry", "Frankie"):
                message = await api.messages.create(**request(persona))
                out.append(message.content[0].model_dump())
            return out

    first, again = await replies(1), await replies(1)
    assert first == again
    others = [await replies(seed) for seed in range(2, 8)]
    assert any(other != first for other in others)


async def test_sdk_retries_429_and_500_then_succeeds(base_url: str, fake: FakeApi) -> None:
    fake.inject(Fault("rate_limit", retry_after=0.05), Fault("server_error", retry_after=0.05))
    message = await client(base_url, max_retries=2).messages.create(**request())
    assert message.stop_reason == "tool_use"
    assert [r.headers["x-stainless-retry-count"] for r in fake.requests] == ["0", "1", "2"]
    gaps = [
        b.received_at - a.received_at
        for a, b in zip(fake.requests, fake.requests[1:], strict=False)
    ]
    assert all(gap >= 0.05 for gap in gaps), "the SDK waited the retry-after"


async def test_429_after_retries_is_a_rate_limit_error(base_url: str, fake: FakeApi) -> None:
    fake.inject(*[Fault("rate_limit", retry_after=0.01)] * 3)
    with pytest.raises(anthropic.RateLimitError) as caught:
        await client(base_url, max_retries=2).messages.create(**request())
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "0.01"
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "rate_limit_error"
    assert len(fake.requests) == 3


@pytest.mark.parametrize(
    ("kind", "error", "status"),
    [
        ("server_error", anthropic.InternalServerError, 500),
        ("overloaded", anthropic.OverloadedError, 529),
        ("bad_request", anthropic.BadRequestError, 400),
    ],
)
async def test_error_statuses(
    base_url: str, fake: FakeApi, kind: Any, error: type[anthropic.APIStatusError], status: int
) -> None:
    fake.inject(Fault(kind))
    with pytest.raises(error) as caught:
        await client(base_url).messages.create(**request())
    assert caught.value.status_code == status
    assert caught.value.request_id is not None


async def test_should_retry_false_stops_the_sdk_retrying(base_url: str, fake: FakeApi) -> None:
    fake.inject(Fault("server_error", should_retry=False))
    with pytest.raises(anthropic.InternalServerError):
        await client(base_url, max_retries=2).messages.create(**request())
    assert len(fake.requests) == 1


async def test_delay_past_the_timeout(base_url: str, fake: FakeApi) -> None:
    fake.inject(Fault("delay", seconds=30))
    api = client(base_url, timeout=0.3)
    with pytest.raises(anthropic.APITimeoutError):
        await api.messages.create(**request())
    assert (await api.messages.create(**request())).stop_reason == "tool_use"


async def test_malformed_tool_input(base_url: str, fake: FakeApi) -> None:
    fake.inject(Fault("malformed_tool_input"))
    [block] = (await client(base_url).messages.create(**request())).content
    assert block.type == "tool_use" and block.name == "roast_user"
    assert block.input == {"unexpected": True, "subject": 42, "roast": 42}


async def test_fault_for_one_persona_spares_the_others(base_url: str, fake: FakeApi) -> None:
    fake.inject(Fault("overloaded", persona="frankie"))
    api = client(base_url)
    assert (await api.messages.create(**request("Jerry"))).stop_reason == "tool_use"
    with pytest.raises(anthropic.OverloadedError):
        await api.messages.create(**request("Frankie"))


@pytest.mark.parametrize(
    "change",
    [
        {"tool_choice": {"type": "tool", "name": "no_such_tool"}},
        {"max_tokens": 0},
        {"messages": []},
        {"messages": [{"role": "assistant", "content": "hi"}]},
    ],
)
async def test_invalid_requests_are_400(base_url: str, change: dict[str, Any]) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client(base_url).messages.create(**request(**change))
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "invalid_request_error"


async def test_missing_key_is_401_and_unknown_path_404(base_url: str) -> None:
    async with httpx.AsyncClient() as http:
        unauthenticated = await http.post(f"{base_url}/v1/messages", json=request())
        missing = await http.get(f"{base_url}/v1/nothing")
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["error"]["type"] == "authentication_error"
    assert missing.status_code == 404 and missing.json()["type"] == "error"


async def test_faults_queued_over_http(base_url: str) -> None:
    async with httpx.AsyncClient() as http:
        queued = await http.post(f"{base_url}/_fake/faults", json=[{"kind": "rate_limit"}])
        rejected = await http.post(f"{base_url}/_fake/faults", json=[{"kind": "explode"}])
    assert queued.status_code == 200 and rejected.status_code == 400
    with pytest.raises(anthropic.RateLimitError):
        await client(base_url).messages.create(**request())
    async with httpx.AsyncClient() as http:
        seen = (await http.get(f"{base_url}/_fake/requests")).json()
    assert [r["persona"] for r in seen] == ["jerry"]


async def test_recorded_session_replays_as_a_regression_test(tmp_path: Path) -> None:
    session = tmp_path / "session.jsonl"
    recorder = FakeApi(seed=3, record_to=session)
    async with serve(recorder) as url:
        api = client(url)
        original = [
            (await api.messages.create(**request(persona))).content[0].model_dump()
            for persona in ("Sarah", "Jerry")
        ]
    assert len(session.read_text().splitlines()) == 2

    replayer = FakeApi(seed=99)
    replayer.load_replay(session)
    async with serve(replayer) as url:
        api = client(url)
        sarah = await api.messages.create(**request("Sarah"))
        async with api.messages.stream(**request("Jerry")) as stream:
            jerry = await stream.get_final_message()
        replayed = [sarah.content[0].model_dump(), jerry.content[0].model_dump()]
        with pytest.raises(anthropic.BadRequestError, match="recorded session has only 2"):
            await api.messages.create(**request("Frankie"))
    assert [b["input"] for b in replayed] == [b["input"] for b in original]


async def test_replay_rejects_a_different_request(tmp_path: Path) -> None:
    session = tmp_path / "session.jsonl"
    async with serve(FakeApi(record_to=session)) as url:
        await client(url).messages.create(**request("Sarah"))
    replayer = FakeApi()
    replayer.load_replay(session)
    async with serve(replayer) as url:
        with pytest.raises(anthropic.BadRequestError, match="differs from the recorded"):
            await client(url).messages.create(**request("Jerry"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_command_line_serves_the_fake() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "agents", "fake-api", "--port", str(port), "--seed", "5"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        assert f"127.0.0.1:{port}" in process.stdout.readline()
        with anthropic.Anthropic(
            base_url=f"http://127.0.0.1:{port}", api_key="test", max_retries=10
        ) as api:
            message = api.messages.create(**request())
        assert message.stop_reason == "tool_use"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


async def test_a_fake_serves_again_after_a_restart() -> None:
    fake = FakeApi()
    async with serve(fake) as url:
        await client(url).messages.create(**request())
    fake.inject(Fault("delay", seconds=0.2))
    async with serve(fake) as url:
        started = time.monotonic()
        message = await client(url).messages.create(**request())
        waited = time.monotonic() - started
    assert message.stop_reason == "tool_use" and len(fake.requests) == 2
    assert waited >= 0.2, "the delay of the second run was honoured, not cut short"
