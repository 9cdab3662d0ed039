"""Against the real Messages API: skipped unless ``ANTHROPIC_API_KEY`` is set.

One turn's request, as the runtime builds it, for each persona: the model must answer with one
tool call that validates against the thread.
"""

from __future__ import annotations

import os
import uuid

import pytest

from agents.agent import one_tool_call
from agents.context import EventRow, MembershipRow, ThreadState, UserRow, render
from agents.llm import LlmClient, LlmReply, LlmRequest
from agents.personas import FRANKIE, JERRY, SARAH, Persona
from agents.settings import llm_settings_from_env
from agents.tools import ToolCall

pytestmark = pytest.mark.skipif(
    not os.environ.get("ANTHROPIC_API_KEY"), reason="ANTHROPIC_API_KEY is not set"
)


def thread_state() -> ThreadState:
    alice = uuid.uuid4()
    users = {
        alice: UserRow(alice, "alice", "human"),
        **{p.user_id: UserRow(p.user_id, p.name, "agent") for p in (SARAH, JERRY, FRANKIE)},
    }
    members = [MembershipRow(alice, "owner")] + [
        MembershipRow(p.user_id, p.role) for p in (SARAH, JERRY, FRANKIE)
    ]
    said = EventRow(uuid.uuid4(), 1, alice, "text", {"text": "I run marathons in sandals."})
    return ThreadState(users, members, [said], [])


@pytest.mark.parametrize("persona", [SARAH, JERRY], ids=lambda p: p.name)
async def test_a_live_turn_gives_a_valid_tool_call(persona: Persona) -> None:
    state = thread_state()
    client = LlmClient(llm_settings_from_env())
    try:
        request = LlmRequest(persona.system_prompt, render(state).text, persona.tools)
        reply = await client.call(request, on_delta=lambda delta: None)
    finally:
        await client.aclose()
    assert isinstance(reply, LlmReply), reply
    tool_uses = [(b.id, b.name, b.input) for b in reply.tool_uses]
    assert isinstance(one_tool_call(tool_uses, persona, state), ToolCall)
    assert reply.usage.input_tokens > 0
