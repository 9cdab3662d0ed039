"""Personas and tools: schemas as the model sees them, and validation of what the model returns."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import anthropic
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.fake_api import FakeApi, Fault, persona_of, serve
from agents.personas import BY_NAME, FRANKIE, JERRY, PERSONAS, SARAH, Persona
from agents.tools import (
    TOOLS,
    ExtractFacts,
    InvalidToolCall,
    RoastUser,
    ThreadFacts,
    ToolCall,
    validate_call,
)

ALICE = uuid.UUID("11111111-1111-4111-8111-111111111111")
BOB = uuid.UUID("33333333-3333-4333-8333-333333333333")
MESSAGE = uuid.UUID("22222222-2222-4222-8222-222222222222")
THREAD = ThreadFacts(member_ids={ALICE, BOB, SARAH.user_id}, event_ids={MESSAGE})


def fact(**change: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "source_event": str(MESSAGE),
        "subject": str(ALICE),
        "predicate": "forgets to water",
        "object": "houseplants",
        "category": "habit",
        "confidence": 0.8,
        "disputed": False,
    }
    value.update(change)
    return value


def test_personas_match_the_seeded_agent_users() -> None:
    assert {p.name: str(p.user_id) for p in PERSONAS.values()} == {
        "sarah": "00000000-0000-4000-8000-000000000001",
        "jerry": "00000000-0000-4000-8000-000000000002",
        "frankie": "00000000-0000-4000-8000-000000000003",
    }
    assert SARAH.role == "producer" and JERRY.role == FRANKIE.role == "comedian"
    assert SARAH.tool_names == {"ask_user_about_themselves", "extract_facts", "do_nothing"}
    assert JERRY.tool_names == FRANKIE.tool_names == {"roast_user"}


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_the_fake_recognises_each_persona(name: str) -> None:
    persona = BY_NAME[name]
    assert persona_of({"system": persona.system_prompt}) == name


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_schema_lists_exactly_the_struct_fields(name: str) -> None:
    tool = TOOLS[name]
    schema = tool.param()["input_schema"]
    fields = {f.name for f in msgspec.structs.fields(tool.input_type)}
    assert set(schema["properties"]) == fields
    assert set(schema.get("required", [])) == fields
    assert schema["additionalProperties"] is False


def test_fact_schema_lists_exactly_the_fact_fields() -> None:
    fact_schema = TOOLS["extract_facts"].input_schema["$defs"]["Fact"]
    assert set(fact_schema["required"]) == set(fact())


def test_valid_calls_become_typed_inputs() -> None:
    roast = validate_call(
        "toolu_1", "roast_user", {"subject": str(ALICE), "roast": "Hi."}, {"roast_user"}, THREAD
    )
    assert roast == ToolCall("toolu_1", "roast_user", RoastUser(str(ALICE), "Hi."))
    facts = validate_call("toolu_2", "extract_facts", {"facts": [fact()]}, SARAH.tool_names, THREAD)
    assert isinstance(facts, ToolCall) and isinstance(facts.input, ExtractFacts)
    assert facts.input.facts[0].confidence == 0.8
    nothing = validate_call("toolu_3", "do_nothing", {}, SARAH.tool_names, THREAD)
    assert isinstance(nothing, ToolCall)


@pytest.mark.parametrize(
    ("name", "tool_input", "reason"),
    [
        ("roast_user", {"subject": str(ALICE)}, "missing required field `roast`"),
        ("roast_user", {"subject": 42, "roast": 42}, "Expected `str`"),
        ("roast_user", {"subject": str(ALICE), "roast": "x", "extra": 1}, "unknown field"),
        ("roast_user", {"subject": str(uuid.uuid4()), "roast": "x"}, "not the id of a member"),
        ("roast_user", {"subject": "alice", "roast": "x"}, "not the id of a member"),
        ("roast_user", {"subject": str(ALICE), "roast": "   "}, "blank"),
        ("roast_user", {"subject": str(ALICE), "roast": "x" * 601}, "length <= 600"),
        ("extract_facts", {"facts": []}, "length >= 1"),
        ("extract_facts", {"facts": [fact(confidence=1.5)]}, "<= 1"),
        ("extract_facts", {"facts": [fact(confidence=0)]}, "> 0"),
        ("extract_facts", {"facts": [fact(object="x" * 256)]}, "length <= 255"),
        ("extract_facts", {"facts": [fact(), fact(source_event=str(uuid.uuid4()))]}, "facts[1]"),
        ("extract_facts", {"facts": [fact(disputed="no")]}, "Expected `bool`"),
        ("ask_user_about_themselves", {"subject": str(BOB)}, "missing required field"),
        ("launch_rockets", {}, "unknown tool"),
        ("do_nothing", [], "Expected `object`"),
    ],
)
def test_invalid_calls_are_rejected_with_a_reason_and_logged(
    name: str, tool_input: Any, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    allowed = {"roast_user", *SARAH.tool_names}
    with caplog.at_level(logging.WARNING, logger="agents.tools"):
        outcome = validate_call("toolu_9", name, tool_input, allowed, THREAD)
    assert isinstance(outcome, InvalidToolCall)
    assert reason in outcome.reason
    assert "toolu_9" in caplog.text and reason in caplog.text


def test_a_tool_of_another_persona_is_rejected() -> None:
    roast = {"subject": str(ALICE), "roast": "x"}
    outcome = validate_call("toolu_1", "roast_user", roast, SARAH.tool_names, THREAD)
    assert isinstance(outcome, InvalidToolCall) and "unknown tool" in outcome.reason


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(name=st.sampled_from([*TOOLS, "other"]), tool_input=json_values)
def test_any_json_input_gives_an_outcome_never_an_exception(name: str, tool_input: Any) -> None:
    outcome = validate_call("toolu_x", name, tool_input, set(TOOLS), THREAD)
    assert isinstance(outcome, ToolCall | InvalidToolCall)


def persona_request(persona: Persona, context: str) -> dict[str, Any]:
    return {
        "model": "claude-test",
        "max_tokens": 512,
        "system": persona.system_prompt,
        "messages": [{"role": "user", "content": context}],
        "tools": [tool.param() for tool in persona.tools],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    }


async def test_persona_requests_through_the_fake_validate() -> None:
    """Each persona's tools and prompt, sent with the real SDK: the scripted reply validates, and
    an injected malformed input is rejected without raising."""
    context = (
        "<user_message>\n"
        f"  from: {ALICE}\n  id: {MESSAGE}\n  text: I collect vintage kettles.\n"
        "</user_message>"
    )
    fake = FakeApi(seed=1)
    async with (
        serve(fake) as url,
        anthropic.AsyncAnthropic(
            base_url=url, api_key="test", max_retries=0, _strict_response_validation=True
        ) as api,
    ):
        for persona, expected in ((SARAH, "extract_facts"), (JERRY, "roast_user")):
            message = await api.messages.create(**persona_request(persona, context))
            [block] = message.content
            assert block.type == "tool_use" and block.name == expected
            outcome = validate_call(block.id, block.name, block.input, persona.tool_names, THREAD)
            assert isinstance(outcome, ToolCall), outcome
        fake.inject(Fault("malformed_tool_input"))
        message = await api.messages.create(**persona_request(FRANKIE, context))
        [block] = message.content
        assert block.type == "tool_use"
        outcome = validate_call(block.id, block.name, block.input, FRANKIE.tool_names, THREAD)
        assert isinstance(outcome, InvalidToolCall) and "schema" in outcome.reason
