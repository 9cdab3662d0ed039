"""The Messages API failing (429, 500, timeouts, malformed tool input) and budgets running out:
agents back off and recover, or stop visibly; never crash, never write twice."""

from __future__ import annotations

import uuid
from typing import Any

from agents.agent import AgentSettings
from agents.decide import Rules
from agents.fake_api import FakeApi, Fault
from agents.llm import LlmClient
from agents.personas import SARAH_ID
from agents.settings import LlmSettings
from agents.turns import BudgetLimits
from tests.agents.conftest import Runtime, fetch, make_thread, wait_until

FAST = Rules(debounce_seconds=0.05)


async def post(runtime: Runtime, thread: uuid.UUID, user: uuid.UUID, text: str) -> None:
    async with runtime.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO events (id, thread_id, user_id, kind, data)"
            " VALUES (%s, %s, %s, 'text', jsonb_build_object('text', %s::text))",
            (uuid.uuid4(), thread, user, text),
        )


async def sarah_calls(runtime: Runtime, thread: uuid.UUID) -> list[tuple[Any, ...]]:
    return await fetch(
        runtime.pool,
        "SELECT status, coalesce(failure, '') FROM agents.llm_calls"
        " WHERE thread_id = %s AND agent_id = %s ORDER BY started_at",
        thread,
        SARAH_ID,
    )


async def test_failures_back_off_and_recover(runtime: Runtime, fake: FakeApi) -> None:
    runtime.llm = LlmClient(
        LlmSettings(api_key="t", base_url=runtime.llm.settings.base_url, max_retries=0,
                    timeout_seconds=0.5)
    )  # fmt: skip
    fake.inject(
        Fault("rate_limit", persona="sarah", retry_after=0.1),
        Fault("server_error", persona="sarah"),
        Fault("delay", persona="sarah", seconds=3.0),
        Fault("stream_error", persona="sarah"),
        Fault("malformed_tool_input", persona="sarah"),
    )
    settings = AgentSettings(rules=FAST, backoff_base=0.05, max_failures=10)
    runtime.start_worker("w1", agent=settings)
    thread, owner = await make_thread(runtime.pool)
    await post(runtime, thread, owner, "I sell seashells by the seashore.")

    async def extracted() -> bool:
        rows = await fetch(runtime.pool, "SELECT count(*) FROM facts WHERE thread_id = %s", thread)
        return bool(rows[0][0] == 1)

    await wait_until(extracted)
    calls = await sarah_calls(runtime, thread)
    kinds = [status if status != "failed" else failure.split(":")[0] for status, failure in calls]
    assert kinds[:6] == [
        "rate_limited",
        "server_error",
        "timeout",
        "stream_error",
        "invalid",
        "replied",
    ]
    status = await fetch(
        runtime.pool, "SELECT state FROM agent_status WHERE agent_id = %s", SARAH_ID
    )
    assert status == [("running",)]
    leases = await fetch(
        runtime.pool, "SELECT status, failures FROM agents.leases WHERE agent_id = %s", SARAH_ID
    )
    assert leases == [("active", 0)]
    events = await fetch(
        runtime.pool,
        "SELECT count(*) FROM events WHERE thread_id = %s AND data->>'name' = 'extract_facts'",
        thread,
    )
    assert events == [(1,)]
    budget = await fetch(runtime.pool, "SELECT reserved FROM agents.budgets")
    assert budget[0][0] >= 0
    await runtime.llm.aclose()


async def test_an_agent_that_keeps_failing_is_quarantined(runtime: Runtime, fake: FakeApi) -> None:
    fake.inject(*[Fault("server_error", persona="sarah") for _ in range(3)])
    settings = AgentSettings(rules=FAST, backoff_base=0.01, max_failures=3)
    runtime.start_worker("w1", agent=settings)
    thread, owner = await make_thread(runtime.pool)
    await post(runtime, thread, owner, "Quarantine me.")

    async def quarantined() -> bool:
        rows = await fetch(
            runtime.pool,
            "SELECT l.status, s.state FROM agents.leases l JOIN agent_status s"
            " USING (thread_id, agent_id) WHERE agent_id = %s",
            SARAH_ID,
        )
        return rows == [("quarantined", "quarantined")]

    await wait_until(quarantined)
    assert len([r for r in fake.requests if r.persona == "sarah"]) == 3


async def test_an_exhausted_budget_stops_the_agent_visibly(runtime: Runtime, fake: FakeApi) -> None:
    runtime.start_worker("w1", agent=AgentSettings(rules=FAST))
    thread, owner = await make_thread(runtime.pool)
    async with runtime.pool.connection() as conn:  # a thread that has spent nearly all of it
        await conn.execute(
            "INSERT INTO agents.budgets (thread_id, token_cap, spent, calls_per_minute)"
            " VALUES (%s, 50000, 49900, 30)",
            (thread,),
        )
    await post(runtime, thread, owner, "Spend it all.")

    async def over_budget() -> bool:
        rows = await fetch(
            runtime.pool,
            "SELECT s.state, l.status FROM agent_status s JOIN agents.leases l"
            " USING (thread_id, agent_id) WHERE agent_id = %s",
            SARAH_ID,
        )
        return rows == [("over_budget", "quarantined")]

    await wait_until(over_budget)
    assert [r for r in fake.requests if r.persona == "sarah"] == []
    budget = await fetch(runtime.pool, "SELECT spent, reserved FROM agents.budgets")
    assert budget == [(49900, 0)]


async def test_the_rate_limit_spaces_calls(runtime: Runtime, fake: FakeApi) -> None:
    settings = AgentSettings(rules=FAST, budget=BudgetLimits(calls_per_minute=1))
    runtime.start_worker("w1", agent=settings)
    thread, owner = await make_thread(runtime.pool)
    await post(runtime, thread, owner, "One.")

    async def one_call() -> bool:
        return len(await sarah_calls(runtime, thread)) == 1

    await wait_until(one_call)
    await post(runtime, thread, owner, "Two.")

    async def backing_off() -> bool:
        rows = await fetch(
            runtime.pool,
            "SELECT state, reason FROM agent_status WHERE agent_id = %s",
            SARAH_ID,
        )
        return rows == [("backing_off", "rate limit")]

    await wait_until(backing_off)
    assert len(await sarah_calls(runtime, thread)) == 1
