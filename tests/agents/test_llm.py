"""The LLM adapter against the offline API: requests built from settings, replies and usage,
streamed deltas, and every failure surfaced as a typed outcome after the SDK's retries."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator

import pytest

from agents.fake_api import FakeApi, Fault
from agents.llm import Delta, LlmClient, LlmFailure, LlmReply, LlmRequest
from agents.personas import JERRY, SARAH
from agents.settings import OFFLINE_KEY, LlmSettings, SettingsError, llm_settings_from_env

ALICE = "11111111-1111-4111-8111-111111111111"
CONTEXT = (
    "Here's everything that happened so far:\n\n<user_message>\n"
    f'  from: "{ALICE}"\n  id: "22222222-2222-4222-8222-222222222222"\n'
    '  text: "I alphabetise my spice rack."\n</user_message>\n\nWhat\'s the next step?'
)
JERRY_REQUEST = LlmRequest(JERRY.system_prompt, CONTEXT, JERRY.tools, metadata_user_id="t-hash")


@pytest.fixture
async def llm(base_url: str) -> AsyncIterator[LlmClient]:
    settings = LlmSettings(
        api_key="test", base_url=base_url, model="claude-test", max_tokens=300, max_retries=2
    )
    client = LlmClient(settings)
    yield client
    await client.aclose()


async def test_call_sends_settings_and_forces_a_tool(llm: LlmClient, fake: FakeApi) -> None:
    reply = await llm.call(JERRY_REQUEST)
    assert isinstance(reply, LlmReply)
    [body] = [r.body for r in fake.requests]
    assert body["model"] == "claude-test" and body["max_tokens"] == 300
    assert body["system"] == JERRY.system_prompt
    assert body["messages"] == [{"role": "user", "content": CONTEXT}]
    assert [t["name"] for t in body["tools"]] == ["roast_user"]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert body["metadata"] == {"user_id": "t-hash"}
    [tool_use] = reply.tool_uses
    assert tool_use.name == "roast_user" and isinstance(tool_use.input, dict)
    assert tool_use.input["subject"] == ALICE
    assert reply.stop_reason == "tool_use"
    assert reply.usage.input_tokens > 0 and reply.usage.output_tokens > 0
    assert reply.latency_seconds > 0
    assert reply.request_id is not None and reply.message_id.startswith("msg_fake_")


async def test_a_named_tool_can_be_forced(llm: LlmClient, fake: FakeApi) -> None:
    request = LlmRequest(SARAH.system_prompt, CONTEXT, SARAH.tools, force_tool="do_nothing")
    reply = await llm.call(request)
    assert isinstance(reply, LlmReply)
    assert [t.name for t in reply.tool_uses] == ["do_nothing"]
    assert fake.requests[0].body["tool_choice"]["name"] == "do_nothing"


async def test_streaming_reports_every_tool_input_delta(llm: LlmClient) -> None:
    seen: list[Delta] = []
    reply = await llm.call(JERRY_REQUEST, seen.append)
    assert isinstance(reply, LlmReply)
    assert len(seen) > 1 and {d.kind for d in seen} == {"tool_input"}
    assert seen[-1].accumulated == "".join(d.piece for d in seen)
    assert json.loads(seen[-1].accumulated) == reply.tool_uses[0].input
    assert reply.request_id is not None and reply.stop_reason == "tool_use"


async def test_streaming_text_with_an_async_callback(llm: LlmClient) -> None:
    pieces: list[str] = []

    async def collect(delta: Delta) -> None:
        assert delta.kind == "text"
        pieces.append(delta.piece)

    reply = await llm.call(LlmRequest(JERRY.system_prompt, CONTEXT, ()), collect)
    assert isinstance(reply, LlmReply)
    assert reply.stop_reason == "end_turn"
    assert [b.text for b in reply.content if hasattr(b, "text")] == ["".join(pieces)]


@pytest.mark.parametrize(
    ("fault", "kind", "status", "attempts"),
    [
        (Fault("rate_limit", retry_after=0.01), "rate_limited", 429, 3),
        (Fault("server_error", retry_after=0.01), "server_error", 500, 3),
        (Fault("overloaded", retry_after=0.01), "overloaded", 529, 3),
        (Fault("bad_request"), "bad_request", 400, 1),
    ],
)
async def test_status_failures_after_the_sdk_retries(
    llm: LlmClient, fake: FakeApi, fault: Fault, kind: str, status: int, attempts: int
) -> None:
    fake.inject(*[fault] * 3)
    outcome = await llm.call(JERRY_REQUEST)
    assert isinstance(outcome, LlmFailure)
    assert (outcome.kind, outcome.status) == (kind, status)
    assert outcome.request_id is not None
    assert len(fake.requests) == attempts
    assert outcome.transient == (kind != "bad_request")
    if fault.retry_after is not None:
        assert outcome.retry_after_seconds == pytest.approx(0.01)


async def test_a_retry_that_succeeds_is_a_reply(llm: LlmClient, fake: FakeApi) -> None:
    fake.inject(Fault("rate_limit", retry_after=0.01))
    assert isinstance(await llm.call(JERRY_REQUEST), LlmReply)
    assert len(fake.requests) == 2


async def test_timeout_is_a_typed_failure(base_url: str, fake: FakeApi) -> None:
    fake.inject(Fault("delay", seconds=30))
    client = LlmClient(
        LlmSettings(api_key="k", base_url=base_url, timeout_seconds=0.3, max_retries=0)
    )
    try:
        outcome = await client.call(JERRY_REQUEST)
    finally:
        await client.aclose()
    assert isinstance(outcome, LlmFailure) and outcome.kind == "timeout" and outcome.transient


async def test_connection_refused_is_a_typed_failure() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = LlmClient(LlmSettings(api_key="k", base_url=f"http://127.0.0.1:{port}", max_retries=0))
    try:
        outcome = await client.call(JERRY_REQUEST)
    finally:
        await client.aclose()
    assert isinstance(outcome, LlmFailure) and outcome.kind == "connection"


@pytest.mark.parametrize(("fault", "kind"), [("stream_error", "stream_error"),
                                             ("truncated_stream", "truncated")])  # fmt: skip
async def test_broken_streams_are_typed_failures(
    llm: LlmClient, fake: FakeApi, fault: str, kind: str
) -> None:
    fake.inject(Fault(fault))  # type: ignore[arg-type]
    seen: list[Delta] = []
    outcome = await llm.call(JERRY_REQUEST, seen.append)
    assert isinstance(outcome, LlmFailure) and outcome.kind == kind and outcome.transient
    assert len(seen) == 1


def test_settings_from_the_environment() -> None:
    settings = llm_settings_from_env(
        {
            "ANTHROPIC_API_KEY": "sk-test",
            "AGENTS_MODEL": "claude-x",
            "AGENTS_MAX_TOKENS": "256",
            "AGENTS_TIMEOUT_SECONDS": "12.5",
            "AGENTS_MAX_RETRIES": "0",
        }
    )
    assert (settings.api_key, settings.base_url, settings.model) == ("sk-test", None, "claude-x")
    assert (settings.max_tokens, settings.timeout_seconds, settings.max_retries) == (256, 12.5, 0)
    assert "sk-test" not in repr(settings)
    offline = llm_settings_from_env({"ANTHROPIC_BASE_URL": "http://127.0.0.1:1"})
    assert offline.api_key == OFFLINE_KEY and offline.base_url == "http://127.0.0.1:1"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "ANTHROPIC_API_KEY"),
        ({"ANTHROPIC_API_KEY": "k", "AGENTS_MAX_TOKENS": "lots"}, "AGENTS_MAX_TOKENS"),
        ({"ANTHROPIC_API_KEY": "k", "AGENTS_MAX_TOKENS": "0"}, "at least 1"),
        ({"ANTHROPIC_API_KEY": "k", "AGENTS_TIMEOUT_SECONDS": "nan"}, "AGENTS_TIMEOUT_SECONDS"),
        ({"ANTHROPIC_API_KEY": "k", "AGENTS_MAX_RETRIES": "-1"}, "AGENTS_MAX_RETRIES"),
    ],
)
def test_bad_settings_are_clear_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        llm_settings_from_env(env)
