"""The decision step: debounce and coalescing, membership, turn-taking, and a simulation showing
agents without a human stop after a bounded number of events (Hypothesis)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.context import EventRow, FactRow, MembershipRow, ThreadState, UserRow
from agents.decide import Call, Idle, Rules, Skip, Wait, decide
from agents.personas import FRANKIE, JERRY, PERSONAS, SARAH, Persona

ALICE = UserRow(uuid.UUID("11111111-1111-4111-8111-111111111111"), "alice", "human")
USERS = {ALICE.id: ALICE} | {
    p.user_id: UserRow(p.user_id, p.name, "agent") for p in PERSONAS.values()
}
MEMBERS = [
    MembershipRow(ALICE.id, "owner"),
    MembershipRow(SARAH.user_id, "producer"),
    MembershipRow(JERRY.user_id, "comedian"),
    MembershipRow(FRANKIE.user_id, "comedian"),
]
NOW = 1000.0
RULES = Rules(debounce_seconds=1.0)


class Thread:
    """A growing thread for tests: events get increasing seqs."""

    def __init__(self) -> None:
        self.events: list[EventRow] = []
        self.facts: list[FactRow] = []

    def add(self, author: uuid.UUID, kind: str, data: dict[str, Any], at: float = 0.0) -> EventRow:
        seq = len(self.events) + 1
        event = EventRow(uuid.UUID(int=seq), seq, author, kind, data, at)
        self.events.append(event)
        return event

    def say(self, text: str = "hello", at: float = 0.0) -> EventRow:
        return self.add(ALICE.id, "text", {"text": text}, at)

    def tool(self, persona: Persona, name: str, tool_input: dict[str, Any]) -> EventRow:
        return self.add(persona.user_id, "tool_use", {"id": "t", "name": name, "input": tool_input})

    def extract(self, count: int = 1) -> EventRow:
        facts = [{"subject": str(ALICE.id)} for _ in range(count)]
        event = self.tool(SARAH, "extract_facts", {"facts": facts})
        for _ in range(count):
            n = len(self.facts)
            self.facts.append(
                FactRow(uuid.UUID(int=10_000 + n), ALICE.id, event.id, "p", "o", "c", 0.8, False, n)
            )
        return event

    def roast(self, persona: Persona) -> EventRow:
        return self.tool(persona, "roast_user", {"subject": str(ALICE.id), "roast": "ha"})

    def state(self, members: list[MembershipRow] = MEMBERS) -> ThreadState:
        return ThreadState(USERS, members, list(self.events), list(self.facts))


def test_nothing_new_is_idle() -> None:
    thread = Thread()
    assert decide(SARAH, thread.state(), 0, NOW, RULES) == Idle()
    event = thread.say()
    assert decide(SARAH, thread.state(), event.seq, NOW, RULES) == Idle()


def test_a_burst_is_debounced_then_coalesced_into_one_call() -> None:
    thread = Thread()
    burst = [thread.say(f"m{i}", at=NOW - 0.5 + i * 0.01) for i in range(20)]
    waiting = decide(SARAH, thread.state(), 0, NOW, RULES)
    assert waiting == Wait(burst[-1].at + 1.0)
    call = decide(SARAH, thread.state(), 0, waiting.until, RULES)
    assert call == Call(burst[-1].seq, burst[-1].id, "a person spoke")
    assert decide(SARAH, thread.state(), call.trigger_seq, NOW + 10, RULES) == Idle()


def test_an_agent_that_left_the_thread_does_not_act() -> None:
    thread = Thread()
    thread.say()
    without_sarah = [m for m in MEMBERS if m.user_id != SARAH.user_id]
    decision = decide(SARAH, thread.state(without_sarah), 0, NOW, RULES)
    assert isinstance(decision, Skip) and "member" in decision.reason


def test_the_producer_ignores_its_own_questions_and_other_agents() -> None:
    thread = Thread()
    human = thread.say()
    thread.tool(SARAH, "ask_user_about_themselves", {"subject": str(ALICE.id), "question": "?"})
    assert isinstance(decide(SARAH, thread.state(), human.seq, NOW, RULES), Skip)
    thread.roast(JERRY)
    assert isinstance(decide(SARAH, thread.state(), human.seq, NOW, RULES), Skip)


def test_a_person_in_a_batch_wakes_the_producer_even_if_an_agent_spoke_last() -> None:
    thread = Thread()
    thread.say()
    thread.roast(JERRY)
    assert isinstance(decide(SARAH, thread.state(), 0, NOW, RULES), Call)


def test_the_producer_keeps_asking_until_the_subject_has_enough_facts() -> None:
    thread = Thread()
    thread.say()
    first = thread.extract(1)
    assert isinstance(decide(SARAH, thread.state(), first.seq - 1, NOW, RULES), Call)
    second = thread.extract(2)
    assert isinstance(decide(SARAH, thread.state(), second.seq - 1, NOW, RULES), Skip)


def test_comedians_take_turns_jerry_first() -> None:
    thread = Thread()
    thread.say()
    thread.extract(4)
    assert isinstance(decide(FRANKIE, thread.state(), 0, NOW, RULES), Skip), "Jerry goes first"
    assert isinstance(decide(JERRY, thread.state(), 0, NOW, RULES), Call)
    roast = thread.roast(JERRY)
    assert isinstance(decide(JERRY, thread.state(), 0, NOW, RULES), Skip), "not twice in a row"
    assert isinstance(decide(FRANKIE, thread.state(), 0, NOW, RULES), Skip), "needs new facts"
    thread.say()
    thread.extract(1)
    assert isinstance(decide(FRANKIE, thread.state(), roast.seq, NOW, RULES), Call)
    assert isinstance(decide(JERRY, thread.state(), roast.seq, NOW, RULES), Skip)


def test_comedians_wait_for_enough_facts() -> None:
    thread = Thread()
    thread.say()
    thread.extract(2)
    assert isinstance(decide(JERRY, thread.state(), 0, NOW, RULES), Skip)


def reply(persona: Persona, thread: Thread, step: int) -> None:
    """What an agent might plausibly write when called (any of its tools)."""
    if persona.role == "comedian":
        thread.roast(persona)
    elif step % 3 == 0:
        thread.tool(SARAH, "ask_user_about_themselves", {"subject": str(ALICE.id), "question": "?"})
    elif step % 3 == 1:
        thread.extract(1)
    else:
        thread.tool(SARAH, "do_nothing", {})


@settings(max_examples=60, deadline=None)
@given(
    start_facts=st.integers(0, 6),
    human_messages=st.integers(1, 3),
    choices=st.lists(st.integers(0, 2), min_size=1, max_size=200),
    cap=st.integers(1, 8),
)
def test_agents_alone_stop_after_a_bounded_number_of_events(
    start_facts: int, human_messages: int, choices: list[int], cap: int
) -> None:
    thread = Thread()
    for _ in range(human_messages):
        thread.say()
    if start_facts:
        thread.extract(start_facts)
    rules = replace(RULES, max_agent_events_without_human=cap)
    positions = dict.fromkeys(PERSONAS, 0)
    agent_events = 0
    step = 0
    quiet_rounds = 0
    while quiet_rounds < 2:
        acted = False
        for persona in (SARAH, JERRY, FRANKIE):
            decision = decide(persona, thread.state(), positions[persona.user_id], NOW, rules)
            if isinstance(decision, Skip):
                positions[persona.user_id] = decision.upto_seq
            elif isinstance(decision, Call):
                positions[persona.user_id] = decision.trigger_seq
                reply(persona, thread, choices[step % len(choices)] + step)
                step += 1
                agent_events += 1
                acted = True
            assert not isinstance(decision, Wait)
        quiet_rounds = 0 if acted else quiet_rounds + 1
        assert agent_events <= cap, "agents kept answering each other"
    assert agent_events <= cap
