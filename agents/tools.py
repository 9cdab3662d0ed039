"""The agents' tools: their names, descriptions and input schemas as sent to the model, and the
validation of a tool call the model returns.

A model's tool input is untrusted: it may be malformed JSON-wise (wrong types, missing or extra
keys), or well-formed but wrong for the thread (a subject who is not a member, a source event
from elsewhere, a confidence out of range, a text too long for the database). ``validate_call``
turns any input into either a typed ``ToolCall`` or an ``InvalidToolCall`` carrying a reason fit
to send back to the model as an ``is_error`` tool result; it never raises, and it logs every
rejection.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final

import msgspec

logger = logging.getLogger(__name__)

FACT_TEXT_MAX = 255
"""Longest ``facts.predicate``, ``object`` and ``category`` (a CHECK in the schema)."""
QUESTION_MAX = 500
ROAST_MAX = 600
FACTS_PER_CALL_MAX = 20

FactText = Annotated[str, msgspec.Meta(min_length=1, max_length=FACT_TEXT_MAX)]


class AskUserAboutThemselves(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    subject: str
    question: Annotated[str, msgspec.Meta(min_length=1, max_length=QUESTION_MAX)]


class DoNothing(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class Fact(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    source_event: str
    subject: str
    predicate: FactText
    object: FactText
    category: FactText
    confidence: Annotated[float, msgspec.Meta(gt=0, le=1)]
    disputed: bool


class ExtractFacts(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    facts: Annotated[list[Fact], msgspec.Meta(min_length=1, max_length=FACTS_PER_CALL_MAX)]


class RoastUser(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    subject: str
    roast: Annotated[str, msgspec.Meta(min_length=1, max_length=ROAST_MAX)]


ToolInput = AskUserAboutThemselves | DoNothing | ExtractFacts | RoastUser


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    input_schema: Mapping[str, Any]
    input_type: type[ToolInput]

    def param(self) -> dict[str, Any]:
        """The tool as the Messages API's ``tools`` list takes it."""
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": dict(self.input_schema),
        }


def _string() -> dict[str, str]:
    return {"type": "string"}


ASK_USER_ABOUT_THEMSELVES: Final = Tool(
    name="ask_user_about_themselves",
    description=(
        "Put one question to one user of the thread about that user's own life. `subject` is "
        "the id of the user you are asking (the `from` of their messages); `question` is what "
        "you ask them. Keep it short (two sentences at most) and open, so the answer holds "
        "things that can become facts. Never ask a user about somebody else."
    ),
    input_schema={
        "title": "AskUserAboutThemselves",
        "type": "object",
        "required": ["question", "subject"],
        "properties": {"subject": _string(), "question": _string()},
        "additionalProperties": False,
    },
    input_type=AskUserAboutThemselves,
)

DO_NOTHING: Final = Tool(
    name="do_nothing",
    description="Take no action this time.",
    input_schema={"type": "object", "properties": {}, "additionalProperties": False},
    input_type=DoNothing,
)

EXTRACT_FACTS: Final = Tool(
    name="extract_facts",
    description=(
        "Record facts about users as subject / predicate / object. `subject` is the id of the "
        "user the fact is about (the `from` of that user's messages: do not mix users up). "
        "`source_event` is the `id` of the message the fact comes from; for a fact one user "
        "confirms or denies about themselves, use the confirming or denying message. One call "
        "may carry several facts, from several messages, about several users. `confidence` is "
        "between 0.1 and 1.0 with one decimal (0.8 means quite sure). Set `disputed` only when "
        "the user clearly disputes the fact."
    ),
    input_schema={
        "title": "ExtractFacts",
        "type": "object",
        "required": ["facts"],
        "properties": {"facts": {"type": "array", "items": {"$ref": "#/$defs/Fact"}}},
        "additionalProperties": False,
        "$defs": {
            "Fact": {
                "title": "Fact",
                "type": "object",
                "required": [
                    "category",
                    "confidence",
                    "disputed",
                    "object",
                    "predicate",
                    "source_event",
                    "subject",
                ],
                "properties": {
                    "source_event": _string(),
                    "subject": _string(),
                    "predicate": _string(),
                    "object": _string(),
                    "category": _string(),
                    "confidence": {"type": "number"},
                    "disputed": {"type": "boolean"},
                },
                "additionalProperties": False,
            }
        },
    },
    input_type=ExtractFacts,
)

ROAST_USER: Final = Tool(
    name="roast_user",
    description=(
        "Roast one user of the thread. `subject` is the id of the user you roast; `roast` is "
        "the joke: at most three sentences, direct and personal, built on what the user shared "
        "and the facts extracted about them (contradictions and pretensions are gold). Stay off "
        "sexuality, mental health, trauma and deep personal struggles."
    ),
    input_schema={
        "title": "RoastUser",
        "type": "object",
        "required": ["roast", "subject"],
        "properties": {"subject": _string(), "roast": _string()},
        "additionalProperties": False,
    },
    input_type=RoastUser,
)

TOOLS: Final[Mapping[str, Tool]] = {
    tool.name: tool for tool in (ASK_USER_ABOUT_THEMSELVES, DO_NOTHING, EXTRACT_FACTS, ROAST_USER)
}


@dataclass(frozen=True)
class ThreadFacts:
    """What validation checks a call against: the thread's members and its events' ids."""

    member_ids: Collection[uuid.UUID]
    event_ids: Collection[uuid.UUID]


@dataclass(frozen=True)
class ToolCall:
    """A validated tool call: ``tool_use_id`` is the model's id of the block."""

    tool_use_id: str
    name: str
    input: ToolInput


@dataclass(frozen=True)
class InvalidToolCall:
    """A tool call the agent cannot perform; ``reason`` is written for the model to fix it."""

    tool_use_id: str
    name: str
    reason: str


def _as_uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def _subject_problem(subject: str, thread: ThreadFacts) -> str | None:
    found = _as_uuid(subject)
    if found is None or found not in thread.member_ids:
        return f"subject {subject!r} is not the id of a member of this thread"
    return None


def _semantic_problem(value: ToolInput, thread: ThreadFacts) -> str | None:
    """What makes a well-typed input wrong for this thread, or None."""
    if isinstance(value, AskUserAboutThemselves):
        if not value.question.strip():
            return "question is blank"
        return _subject_problem(value.subject, thread)
    if isinstance(value, RoastUser):
        if not value.roast.strip():
            return "roast is blank"
        return _subject_problem(value.subject, thread)
    if isinstance(value, ExtractFacts):
        for position, fact in enumerate(value.facts):
            problem = _subject_problem(fact.subject, thread)
            source = _as_uuid(fact.source_event)
            if problem is None and (source is None or source not in thread.event_ids):
                problem = f"source_event {fact.source_event!r} is not a message of this thread"
            if problem is None and not all(
                text.strip() for text in (fact.predicate, fact.object, fact.category)
            ):
                problem = "predicate, object and category must not be blank"
            if problem is not None:
                return f"facts[{position}]: {problem}"
    return None


def validate_call(
    tool_use_id: str,
    name: str,
    raw_input: object,
    allowed: Collection[str],
    thread: ThreadFacts,
) -> ToolCall | InvalidToolCall:
    """Check a ``tool_use`` block from the model against the agent's tools and the thread."""
    tool = TOOLS.get(name)
    if tool is None or name not in allowed:
        reason = f"unknown tool {name!r}; use one of: {', '.join(sorted(allowed))}"
        return _reject(tool_use_id, name, reason)
    try:
        value = msgspec.convert(raw_input, type=tool.input_type)
    except msgspec.ValidationError as error:
        return _reject(tool_use_id, name, f"input does not match the schema: {error}")
    problem = _semantic_problem(value, thread)
    if problem is not None:
        return _reject(tool_use_id, name, problem)
    return ToolCall(tool_use_id, name, value)


def _reject(tool_use_id: str, name: str, reason: str) -> InvalidToolCall:
    logger.warning("invalid %s tool call %s: %s", name, tool_use_id, reason)
    return InvalidToolCall(tool_use_id, name, reason)
