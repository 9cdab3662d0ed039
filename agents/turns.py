"""The agent's writes: turns, LLM call records, budget reservations, effects, positions.

Theory of operation (exactly-once effects around an at-least-once model call). A *turn* is one
agent's answer to one triggering event; ``(agent, trigger event)`` is unique, and every effect
of the turn has an id derived from the turn's id, so the same effect can never be inserted
twice. A turn goes through three fenced transactions (each checks the lease's worker and
epoch before it commits, so a worker that lost its lease writes nothing):

1. :func:`claim` (one statement, ``agents.claim_turn``) creates the turn (or finds it again
   after a crash), reserves the call's token estimate in the thread's budget and counts it
   against the thread's call rate, and records the call as ``sent`` with the hash of its
   request. A turn found ``replied`` is not called again: its recorded reply is applied. A
   turn found ``done`` or ``skipped`` only moves the position.
2. The model is called outside any transaction.
3. :func:`record_reply` stores the reply on the call and the turn (``replied``) and settles the
   budget (the reservation becomes the tokens actually used).
4. :func:`apply_reply` re-checks in SQL that the agent is still a member, writes the tool call
   as an event (finalising the streamed row, if any) and its facts, marks the turn ``done`` and
   moves the agent's position to the trigger, in one transaction.

A crash between 3 and 4 leaves a ``replied`` turn that the next holder applies without calling
the model; a crash before 3 repeats the call (a reply that was never recorded cannot be reused).
Every effect row is traceable to its turn (``effect_event_id``, the facts' ``tool_use_event_id``)
and the turn records the input position the agent acted on (``trigger_seq``, ``input_lsn``).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from agents.leases import (
    AgentKey,
    Connection,
    Lease,
    LeaseLost,
    Pool,
    advance,
    check_fence,
    fence,
    fence_query,
)
from agents.llm import LlmFailure, LlmReply, ToolUseBlock
from agents.tools import ExtractFacts, ToolCall

EFFECTS = uuid.UUID("6f1c4c2e-5a53-4d8e-9d0a-1b1f3f4c2a90")
"""Namespace of the ids derived from a turn."""


def turn_id(key_agent: uuid.UUID, trigger_event_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(EFFECTS, f"turn:{key_agent}:{trigger_event_id}")


def effect_event_id(turn: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(EFFECTS, f"event:{turn}")


def fact_id(turn: uuid.UUID, index: int) -> uuid.UUID:
    return uuid.uuid5(EFFECTS, f"fact:{turn}:{index}")


def request_hash(encoded: bytes) -> str:
    """The hash recorded for a call: of its parameters as JSON with sorted keys."""
    return hashlib.sha256(encoded).hexdigest()


@dataclass(frozen=True)
class BudgetLimits:
    token_cap: int = 200_000
    calls_per_minute: int = 30


@dataclass(frozen=True)
class Claim:
    """The outcome of :func:`claim`."""

    turn_id: uuid.UUID
    status: str
    """``calling`` (call the model now), ``replied``, ``done``, ``skipped`` or ``failed``."""
    call_id: uuid.UUID | None
    reply: dict[str, Any] | None


class OverBudget(Exception):
    """The thread's token budget cannot cover the call."""


class RateLimited(Exception):
    """The thread made its calls of this minute; ``retry_in`` seconds until the next window."""

    def __init__(self, retry_in: float) -> None:
        super().__init__(f"rate limited for {retry_in:.1f}s")
        self.retry_in = retry_in


async def _set_status(conn: Connection, lease: Lease, state: str, reason: str) -> None:
    await conn.execute(
        "INSERT INTO agent_status (thread_id, agent_id, state, reason) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (thread_id, agent_id) DO UPDATE SET state = excluded.state,"
        " reason = excluded.reason, updated_at = now()"
        " WHERE (agent_status.state, agent_status.reason)"
        " IS DISTINCT FROM (excluded.state, excluded.reason)",
        (lease.key.thread_id, lease.key.agent_id, state, reason[:500]),
    )


async def set_status(pool: Pool, lease: Lease, state: str, reason: str = "") -> None:
    """Show the agent's state to the UI (fenced)."""
    async with pool.connection() as conn, conn.transaction():
        await fence(conn, lease)
        await _set_status(conn, lease, state, reason)


async def claim(
    pool: Pool,
    lease: Lease,
    trigger_event_id: uuid.UUID,
    trigger_seq: int,
    input_lsn: int,
    estimate: int,
    hashed_request: str,
    limits: BudgetLimits,
) -> Claim:
    """Transaction A: create or find the turn, reserve its budget and record the call as sent.

    It sits between a person's message and the agent's call, so it is one statement, the
    function ``agents.claim_turn`` (one round trip; the function documents the steps).

    Raises:
        LeaseLost, OverBudget, RateLimited: nothing was written.
    """
    turn = turn_id(lease.key.agent_id, trigger_event_id)
    async with pool.connection() as conn:
        try:
            cursor = await conn.execute(
                "SELECT status, reply, call_id FROM agents.claim_turn("
                "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    turn,
                    *_key(lease),
                    lease.worker,
                    lease.epoch,
                    trigger_event_id,
                    trigger_seq,
                    input_lsn,
                    estimate,
                    hashed_request,
                    limits.token_cap,
                    limits.calls_per_minute,
                ),
            )
        except psycopg.Error as error:
            raise _claim_refused(error) from None
        row = await cursor.fetchone()
    assert row is not None
    status, reply, call = str(row[0]), row[1], row[2]
    return Claim(turn, status, call, reply if status != "calling" else None)


def _claim_refused(error: psycopg.Error) -> Exception:
    """The exception for a refusal of ``agents.claim_turn`` (by the SQLSTATEs of
    ``sql/008_agent_writes.sql``); other errors as they are."""
    message = error.diag.message_primary or str(error)
    if error.sqlstate == "AGL01":
        return LeaseLost(message)
    if error.sqlstate == "AGB01":
        return OverBudget(message)
    if error.sqlstate == "AGR01":
        return RateLimited(float(error.diag.message_detail or "1"))
    return error


def _key(lease: Lease) -> tuple[uuid.UUID, uuid.UUID]:
    return lease.key.thread_id, lease.key.agent_id


def reply_json(reply: LlmReply) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    for block in reply.content:
        if isinstance(block, ToolUseBlock):
            content.append(
                {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
            )
        else:
            content.append({"type": "text", "text": block.text})
    return {
        "message_id": reply.message_id,
        "request_id": reply.request_id,
        "model": reply.model,
        "stop_reason": reply.stop_reason,
        "content": content,
    }


async def _settle(conn: Connection, lease: Lease, turn: uuid.UUID, used: int) -> None:
    """Turn the turn's reservation into ``used`` spent tokens."""
    await conn.execute(
        "UPDATE agents.budgets b SET reserved = greatest(b.reserved - t.reserved_tokens, 0),"
        " spent = b.spent + %s FROM agents.turns t WHERE t.id = %s AND b.thread_id = t.thread_id",
        (used, turn),
    )
    await conn.execute("UPDATE agents.turns SET reserved_tokens = 0 WHERE id = %s", (turn,))


async def record_reply(
    pool: Pool, lease: Lease, claim_: Claim, reply: LlmReply, tool_use_id: str | None
) -> dict[str, Any]:
    """Transaction B1: the reply is recorded (and paid for) before any of its effects.

    Sent as a pipeline: one round trip, then the commit."""
    recorded = reply_json(reply)
    used = reply.usage.input_tokens + reply.usage.output_tokens
    used += reply.usage.cache_creation_input_tokens + reply.usage.cache_read_input_tokens
    async with pool.connection() as conn, conn.transaction(), conn.pipeline():
        fenced = await fence_query(conn, lease)
        await conn.execute(
            "UPDATE agents.llm_calls SET status = 'replied', reply = %s, tool_use_id = %s,"
            " tokens_in = %s, tokens_out = %s, latency_ms = %s, finished_at = now()"
            " WHERE id = %s",
            (
                Jsonb(recorded),
                tool_use_id,
                reply.usage.input_tokens,
                reply.usage.output_tokens,
                reply.latency_seconds * 1000,
                claim_.call_id,
            ),
        )
        await conn.execute(
            "UPDATE agents.turns SET status = 'replied', reply = %s, tool_use_id = %s,"
            " updated_at = now() WHERE id = %s AND status = 'calling'",
            (Jsonb(recorded), tool_use_id, claim_.turn_id),
        )
        await _settle(conn, lease, claim_.turn_id, used)
        check_fence(await fenced.fetchone(), lease)  # a lost lease rolls everything back
    return recorded


async def record_failure(
    pool: Pool,
    lease: Lease,
    claim_: Claim,
    failure: LlmFailure | None,
    reason: str,
    *,
    reply: LlmReply | None = None,
) -> int:
    """A failed or invalid attempt: recorded, its reservation released (an invalid reply's
    tokens are spent), the agent's failure count raised; returns that count."""
    used = 0 if reply is None else reply.usage.input_tokens + reply.usage.output_tokens
    async with pool.connection() as conn, conn.transaction():
        await fence(conn, lease)
        await conn.execute(
            "UPDATE agents.llm_calls SET status = %s, failure = %s, reply = %s,"
            " tokens_in = %s, tokens_out = %s, latency_ms = %s, finished_at = now()"
            " WHERE id = %s",
            (
                "failed" if reply is None else "invalid",
                reason[:2000],
                None if reply is None else Jsonb(reply_json(reply)),
                None if reply is None else reply.usage.input_tokens,
                None if reply is None else reply.usage.output_tokens,
                None if failure is None else failure.latency_seconds * 1000,
                claim_.call_id,
            ),
        )
        await _settle(conn, lease, claim_.turn_id, used)
        cursor = await conn.execute(
            "UPDATE agents.leases SET failures = failures + 1"
            " WHERE thread_id = %s AND agent_id = %s RETURNING failures",
            _key(lease),
        )
        row = await cursor.fetchone()
        await conn.execute(
            "DELETE FROM events WHERE id = %s AND status = 'streaming'",
            (effect_event_id(claim_.turn_id),),
        )
    assert row is not None
    return int(row[0])


async def stream_step(
    pool: Pool, lease: Lease, turn: uuid.UUID, name: str, partial_input: dict[str, Any]
) -> None:
    """Write the reply streamed so far into the turn's event row (status ``streaming``)."""
    data = {"id": "streaming", "name": name, "input": partial_input}
    async with pool.connection() as conn, conn.transaction():
        await fence(conn, lease)
        await conn.execute(
            "INSERT INTO events (id, thread_id, user_id, kind, data, status)"
            " VALUES (%s, %s, %s, 'tool_use', %s, 'streaming')"
            " ON CONFLICT (id) DO UPDATE SET data = excluded.data"
            " WHERE events.status = 'streaming'",
            (effect_event_id(turn), *_key(lease), Jsonb(data)),
        )


async def apply_reply(
    pool: Pool,
    lease: Lease,
    turn: uuid.UUID,
    call: ToolCall | None,
    trigger_seq: int,
    input_lsn: int,
    before_commit: Any = None,
) -> bool:
    """Transaction B2: the tool call's event and facts, the turn ``done``, the position moved.

    Sent as a pipeline: the reads that decide in one round trip, the writes and the commit in
    the next.

    ``call`` None (a recorded reply that cannot be performed any more) skips the turn. Returns
    whether effects were written.
    """
    event = effect_event_id(turn)
    async with pool.connection() as conn, conn.transaction(), conn.pipeline():
        fenced = await fence_query(conn, lease)
        cursor = await conn.execute(
            "SELECT status FROM agents.turns WHERE id = %s FOR UPDATE", (turn,)
        )
        member = await conn.execute(
            "SELECT FROM memberships WHERE thread_id = %s AND user_id = %s", _key(lease)
        )
        check_fence(await fenced.fetchone(), lease)
        row = await cursor.fetchone()
        if row is None or row[0] in ("done", "skipped"):
            await advance(conn, lease, trigger_seq, input_lsn)
            return False
        if call is None or await member.fetchone() is None:
            await conn.execute(
                "UPDATE agents.turns SET status = 'skipped', reason = %s, updated_at = now()"
                " WHERE id = %s",
                ("not performed: not a member, or the reply is invalid", turn),
            )
            await conn.execute(
                "DELETE FROM events WHERE id = %s AND status = 'streaming'", (event,)
            )
            await advance(conn, lease, trigger_seq, input_lsn)
            return False
        data = {"id": call.tool_use_id, "name": call.name, "input": _input_json(call)}
        await conn.execute(
            "INSERT INTO events (id, thread_id, user_id, kind, data, status)"
            " VALUES (%s, %s, %s, 'tool_use', %s, 'final')"
            " ON CONFLICT (id) DO UPDATE SET data = excluded.data, status = 'final'"
            " WHERE events.status = 'streaming'",
            (event, *_key(lease), Jsonb(data)),
        )
        if isinstance(call.input, ExtractFacts):
            for index, fact in enumerate(call.input.facts):
                await conn.execute(
                    "INSERT INTO facts (id, thread_id, subject_id, source_event_id,"
                    " tool_use_event_id, predicate, object, category, confidence, disputed)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                    (
                        fact_id(turn, index),
                        lease.key.thread_id,
                        uuid.UUID(fact.subject),
                        uuid.UUID(fact.source_event),
                        event,
                        fact.predicate,
                        fact.object,
                        fact.category,
                        round(fact.confidence, 3),
                        fact.disputed,
                    ),
                )
        await conn.execute(
            "UPDATE agents.turns SET status = 'done', effect_event_id = %s, updated_at = now()"
            " WHERE id = %s",
            (event, turn),
        )
        await advance(conn, lease, trigger_seq, input_lsn)
        await _set_status(conn, lease, "running", "")
        if before_commit is not None:
            before_commit()
        return True


def _input_json(call: ToolCall) -> dict[str, Any]:
    import msgspec

    value = msgspec.to_builtins(call.input)
    return value if isinstance(value, dict) else {}


async def write_skips(
    pool: Pool, worker: str, skips: Sequence[tuple[Lease, int, int]]
) -> set[AgentKey]:
    """Move the positions of many agents past events that need no call, in one statement
    (``agents.skip_to``); ``skips`` holds ``(lease, upto_seq, lsn)``. Returns the agents whose
    position moved: the others' leases are no longer this worker's.

    Committed without waiting for the WAL to reach the disk: most events need no call from most
    agents (every agent of a thread skips the others' replies), and a skip lost in a crash
    costs nothing: the next holder decides again, the same way, on the same events.
    """
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT moved_thread, moved_agent FROM agents.skip_to(%s, %s, %s, %s, %s, %s)",
            (
                worker,
                [lease.key.thread_id for lease, _, _ in skips],
                [lease.key.agent_id for lease, _, _ in skips],
                [lease.epoch for lease, _, _ in skips],
                [upto for _, upto, _ in skips],
                [lsn for _, _, lsn in skips],
            ),
        )
        rows = await cursor.fetchall()
    return {AgentKey(row[0], row[1]) for row in rows}


async def fail_turn(pool: Pool, lease: Lease, turn: uuid.UUID, reason: str) -> None:
    """Give up on a turn (e.g. too many invalid replies): nothing is written for it."""
    async with pool.connection() as conn, conn.transaction():
        await fence(conn, lease)
        await conn.execute(
            "UPDATE agents.turns SET status = 'failed', reason = %s, updated_at = now()"
            " WHERE id = %s AND status = 'calling'",
            (reason[:2000], turn),
        )
        await _settle(conn, lease, turn, 0)
        await conn.execute(
            "DELETE FROM events WHERE id = %s AND status = 'streaming'", (effect_event_id(turn),)
        )


async def halt(pool: Pool, lease: Lease, state: str, reason: str) -> None:
    """Stop the agent visibly (``quarantined`` or ``over_budget``): no worker takes it again
    until a person resets its lease."""
    async with pool.connection() as conn, conn.transaction():
        await fence(conn, lease)
        await conn.execute(
            "UPDATE agents.leases SET status = 'quarantined', worker = NULL,"
            " updated_at = now() WHERE thread_id = %s AND agent_id = %s",
            _key(lease),
        )
        await _set_status(conn, lease, state, reason)


async def clear_streaming(pool: Pool, lease: Lease) -> None:
    """Remove the half-streamed replies a previous holder left (a retry streams again)."""
    async with pool.connection() as conn, conn.transaction():
        await fence(conn, lease)
        await conn.execute(
            "DELETE FROM events WHERE thread_id = %s AND user_id = %s AND status = 'streaming'",
            _key(lease),
        )


async def recorded_turns(pool: Pool, lease: Lease) -> list[tuple[uuid.UUID, int, int, Any]]:
    """Turns of this agent whose reply was recorded but not applied (a crash in between)."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT id, trigger_seq, input_lsn, reply FROM agents.turns"
            " WHERE thread_id = %s AND agent_id = %s AND status = 'replied' ORDER BY trigger_seq",
            _key(lease),
        )
        rows = await cursor.fetchall()
    return [(r[0], int(r[1]), int(r[2]), r[3]) for r in rows]


async def backoff_agent(pool: Pool, lease: Lease, seconds: float, reason: str) -> None:
    """Show that the agent backs off (it keeps its lease and waits)."""
    async with pool.connection() as conn, conn.transaction():
        await fence(conn, lease)
        await _set_status(conn, lease, "backing_off", reason)
        await conn.execute(
            "UPDATE agents.leases SET next_attempt_at = now() + make_interval(secs => %s)"
            " WHERE thread_id = %s AND agent_id = %s",
            (seconds, *_key(lease)),
        )
