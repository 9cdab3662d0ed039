"""When an agent calls the model: a pure function of a consistent snapshot of its thread's rows,
the position it has handled up to, and the time.

``decide`` answers one of:

- ``Idle``: no event past the agent's position; nothing to do.
- ``Wait(until)``: there are new events but the newest is younger than the debounce window;
  decide again at ``until``. A burst of messages therefore becomes one call.
- ``Skip(upto_seq, reason)``: the new events need no call; the position moves to ``upto_seq``.
- ``Call(trigger_seq, trigger_event_id, reason)``: call the model once for everything up to
  ``trigger_seq`` (the newest event: new events are coalesced, never answered one by one); the
  position moves there when the turn is recorded.

Rules, and why (they fix what the original agents got wrong):

- An agent acts only while it is a member of the thread.
- Events the agent wrote itself never wake it, with one exception: the producer goes on asking
  after its own fact extraction while someone in it still has too few facts.
- Agents never answer each other forever: after ``max_agent_events_without_human`` agent events
  with no human event in between, every agent skips until a human speaks. Comedians also need
  a fresh fact extraction since the last roast, which only the producer writes, and the producer
  is woken by agents only through its own extraction.
- Comedians take turns: the first in ``comedian_order`` goes first, nobody roasts twice in a row,
  and each has a threshold of facts some member must have reached.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from agents.context import EventRow, ThreadState
from agents.personas import FRANKIE, JERRY, Persona


@dataclass(frozen=True)
class Rules:
    debounce_seconds: float = 1.5
    max_agent_events_without_human: int = 6
    producer_facts_per_subject: int = 3
    """The producer keeps asking after its own extraction while a subject has fewer facts."""
    comedian_order: tuple[uuid.UUID, ...] = (JERRY.user_id, FRANKIE.user_id)
    comedian_fact_threshold: tuple[tuple[uuid.UUID, int], ...] = (
        (JERRY.user_id, 3),
        (FRANKIE.user_id, 4),
    )


@dataclass(frozen=True)
class Idle:
    pass


@dataclass(frozen=True)
class Wait:
    until: float


@dataclass(frozen=True)
class Skip:
    upto_seq: int
    reason: str


@dataclass(frozen=True)
class Call:
    trigger_seq: int
    trigger_event_id: uuid.UUID
    reason: str


Decision = Idle | Wait | Skip | Call


def is_tool(event: EventRow, name: str) -> bool:
    return event.kind == "tool_use" and event.data.get("name") == name


def is_human(event: EventRow, state: ThreadState) -> bool:
    author = state.users.get(event.user_id)
    return author is not None and author.kind == "human"


def agent_events_since_human(events: Sequence[EventRow], state: ThreadState) -> int:
    count = 0
    for event in reversed(events):
        if is_human(event, state):
            break
        if not is_tool(event, "do_nothing"):
            count += 1
    return count


def fact_counts(state: ThreadState) -> Counter[uuid.UUID]:
    """Undisputed facts per subject."""
    return Counter(f.subject_id for f in state.facts if not f.disputed)


def extraction_subjects(event: EventRow) -> set[str]:
    tool_input = event.data.get("input")
    facts = tool_input.get("facts") if isinstance(tool_input, dict) else None
    if not isinstance(facts, list):
        return set()
    return {str(f.get("subject")) for f in facts if isinstance(f, dict)}


def producer_reason(
    new: Sequence[EventRow], persona: Persona, state: ThreadState, rules: Rules
) -> str | None:
    spoken = [e for e in new if not is_tool(e, "do_nothing")]
    if not spoken:
        return None
    if any(is_human(e, state) for e in spoken):
        return "a person spoke"
    last = spoken[-1]
    if last.user_id == persona.user_id and is_tool(last, "extract_facts"):
        counts = fact_counts(state)
        short = [
            s for s in extraction_subjects(last)
            if counts[_uuid_or_nil(s)] < rules.producer_facts_per_subject
        ]  # fmt: skip
        if short:
            return "someone in the last extraction still has too few facts"
    return None


def _uuid_or_nil(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        return uuid.UUID(int=0)


def comedian_reason(
    events: Sequence[EventRow], position: int, persona: Persona, state: ThreadState, rules: Rules
) -> str | None:
    roasts = [e for e in events if is_tool(e, "roast_user")]
    last_roast = roasts[-1] if roasts else None
    if last_roast is not None and last_roast.user_id == persona.user_id:
        return None
    order = [c for c in rules.comedian_order if c in member_ids(state)]
    if last_roast is None and (not order or order[0] != persona.user_id):
        return None
    threshold = dict(rules.comedian_fact_threshold).get(persona.user_id, 3)
    counts = fact_counts(state)
    if not counts or max(counts.values()) < threshold:
        return None
    after = last_roast.seq if last_roast is not None else -1
    fresh = [e for e in events if is_tool(e, "extract_facts") and e.seq > max(after, position)]
    if not fresh:
        return None
    return "my turn, and new facts since the last roast"


def member_ids(state: ThreadState) -> set[uuid.UUID]:
    return {m.user_id for m in state.memberships}


def decide(
    persona: Persona, state: ThreadState, position: int, now: float, rules: Rules = Rules()
) -> Decision:
    """What ``persona`` does next, having handled every event up to ``position`` (a ``seq``)."""
    events = sorted(state.events, key=lambda e: e.seq)
    new = [e for e in events if e.seq > position]
    if not new:
        return Idle()
    newest = new[-1]
    if persona.user_id not in member_ids(state):
        return Skip(newest.seq, "not a member of the thread")
    if newest.at + rules.debounce_seconds > now:
        return Wait(newest.at + rules.debounce_seconds)
    if agent_events_since_human(events, state) >= rules.max_agent_events_without_human:
        return Skip(newest.seq, "agents have spoken enough; waiting for a person")
    if persona.role == "producer":
        reason = producer_reason(new, persona, state, rules)
    else:
        reason = comedian_reason(events, position, persona, state, rules)
    if reason is None:
        return Skip(newest.seq, "nothing for this agent")
    return Call(newest.seq, newest.id, reason)
