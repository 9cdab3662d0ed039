"""Offline end to end: a person creates a thread through the web API and answers Sarah's
questions; facts appear; Jerry and Frankie roast in turn; a deleted membership stops its agent.

Everything is real but the model: Postgres, syncd (embedded), the web app (in-process), the
shape client, the agents' worker and the official SDK talking to the offline fake.
"""

from __future__ import annotations

import uuid
from typing import Any

from agents.fake_api import FakeApi
from agents.personas import FRANKIE_ID, JERRY_ID, SARAH_ID
from tests.agents.conftest import Runtime, fetch, wait_until
from tests.web.conftest import User

Row = tuple[Any, ...]


async def tool_events(runtime: Runtime, thread: uuid.UUID) -> list[Row]:
    return await fetch(
        runtime.pool,
        "SELECT user_id, data->>'name', data->'input', status FROM events"
        " WHERE thread_id = %s AND kind = 'tool_use' ORDER BY seq",
        thread,
    )


async def count(runtime: Runtime, thread: uuid.UUID, tool: str) -> int:
    rows = await tool_events(runtime, thread)
    return len([r for r in rows if r[1] == tool and r[3] == "final"])


async def facts_of(runtime: Runtime, thread: uuid.UUID) -> int:
    rows = await fetch(runtime.pool, "SELECT count(*) FROM facts WHERE thread_id = %s", thread)
    return int(rows[0][0])


async def say(runtime: Runtime, user: User, thread: uuid.UUID, text: str) -> None:
    answer = await runtime.api.write(user, thread, "messages", text=text)
    assert answer.status_code == 200, answer.text


async def test_a_thread_from_questions_to_roasts(runtime: Runtime, fake: FakeApi) -> None:
    runtime.start_worker("w1")
    user = await runtime.api.sign_up("alice")
    thread = await runtime.api.create_thread(user)
    await say(runtime, user, thread, "Hi! I run marathons in sandals.")
    for n in (1, 2):
        # Sarah records what was said, asks a question, and gets an answer
        async def asked(n: int = n) -> bool:
            questions = await count(runtime, thread, "ask_user_about_themselves")
            return await facts_of(runtime, thread) >= n and questions >= n

        await wait_until(asked)
        await say(runtime, user, thread, f"My answer number {n}: I collect spoons.")

    async def roasted_by(comedian: uuid.UUID, facts: int) -> bool:
        rows = await tool_events(runtime, thread)
        roasters = [r[0] for r in rows if r[1] == "roast_user" and r[3] == "final"]
        return await facts_of(runtime, thread) >= facts and comedian in roasters

    # three facts about the person: Jerry's turn; a fourth, extracted after his roast: Frankie's
    await wait_until(lambda: roasted_by(JERRY_ID, 3))
    await say(runtime, user, thread, "Also, I talk to my plants.")
    await wait_until(lambda: roasted_by(FRANKIE_ID, 4))
    await runtime.stop_worker("w1")
    rows = [r for r in await tool_events(runtime, thread) if r[3] == "final"]
    roasters = [r[0] for r in rows if r[1] == "roast_user"]
    assert roasters[:2] == [JERRY_ID, FRANKIE_ID]  # Jerry first, then they take turns
    assert all(a != b for a, b in zip(roasters, roasters[1:], strict=False))
    facts = await fetch(
        runtime.pool, "SELECT subject_id, tool_use_event_id FROM facts WHERE thread_id = %s", thread
    )
    assert {subject for subject, _ in facts} == {user.id}

    # every call is recorded with its tokens and latency, and every effect with its cause
    calls = await fetch(
        runtime.pool,
        "SELECT count(*), count(*) FILTER (WHERE tokens_in > 0 AND latency_ms > 0)"
        " FROM agents.llm_calls WHERE thread_id = %s AND status = 'replied'",
        thread,
    )
    assert calls[0][0] == calls[0][1] > 0
    turns = await fetch(
        runtime.pool,
        "SELECT count(*) FROM agents.turns t JOIN events e ON e.id = t.effect_event_id"
        " WHERE t.thread_id = %s AND t.status = 'done' AND t.input_lsn > 0",
        thread,
    )
    assert turns[0][0] == len(rows)


async def test_a_deleted_membership_stops_its_agent(runtime: Runtime, fake: FakeApi) -> None:
    runtime.start_worker("w1")
    user = await runtime.api.sign_up("bob")
    thread = await runtime.api.create_thread(user)

    async def sarah_runs() -> bool:
        rows = await fetch(
            runtime.pool,
            "SELECT worker FROM agents.leases WHERE thread_id = %s AND agent_id = %s",
            thread,
            SARAH_ID,
        )
        return bool(rows) and rows[0][0] == "w1"

    await wait_until(sarah_runs)
    await say(runtime, user, thread, "I knit sweaters for my cat.")

    async def extracted() -> bool:
        return await facts_of(runtime, thread) >= 1

    await wait_until(extracted)
    async with runtime.pool.connection() as conn:
        await conn.execute(
            "DELETE FROM memberships WHERE thread_id = %s AND user_id = %s", (thread, SARAH_ID)
        )

    async def stopped() -> bool:
        rows = await fetch(
            runtime.pool,
            "SELECT l.status, l.worker, s.state FROM agents.leases l JOIN agent_status s"
            " USING (thread_id, agent_id) WHERE thread_id = %s AND agent_id = %s",
            thread,
            SARAH_ID,
        )
        return rows == [("stopped", None, "stopped")]

    await wait_until(stopped)
    before = len(fake.requests)
    sarah_calls = [r for r in fake.requests if r.persona == "sarah"]
    await say(runtime, user, thread, "Anyone there?")
    # the message reaches the other agents (they look at it), Sarah never calls again
    await wait_until(lambda: _positions_past(runtime, thread))
    assert [r for r in fake.requests if r.persona == "sarah"] == sarah_calls
    assert len(fake.requests) >= before


async def _positions_past(runtime: Runtime, thread: uuid.UUID) -> bool:
    rows = await fetch(
        runtime.pool,
        "SELECT min(l.position) >= max(e.seq) FROM agents.leases l, events e"
        " WHERE l.thread_id = %s AND e.thread_id = %s AND l.status = 'active'",
        thread,
        thread,
    )
    return bool(rows[0][0])
