"""One agent (a persona in a thread), run by a worker while it holds the agent's lease.

Theory of operation. The agent follows its thread through a shared
:class:`~agents.view.ThreadView` and keeps one number, its *position*: the ``seq`` of the last
event it has handled, stored in its lease row by every write that moves it. A wake is pending
exactly when the thread has a final event past the position, so a wake can never be lost: not
to a burst (``decide`` coalesces it into one call on the newest event, after a debounce), not to
a change arriving during a call (the loop decides again afterwards), not to a crash (the next
holder starts from the stored position).

Each round: read the state, ``decide``. ``Wait`` sleeps until the debounce ends or the shapes
change. ``Skip`` and ``Call`` are acted on only when the state is a consistent cut covering
the events they concern (:meth:`ThreadView.cut`; otherwise the agent waits for one and decides
again): on the events alone, a comedian could skip the extraction whose facts have not arrived
yet. ``Skip`` moves the position at once and leaves its write to the worker's
:class:`~agents.skips.Skips` (fenced, together with other agents' skips); ``Call`` decides again
on the cut, then runs a turn (:mod:`agents.turns`): claim and reserve, call the model (streaming
the reply into its event row), record the reply, write its effects. A ``replied`` turn left by
a crash is applied before anything else, without calling the model.

Failures: a transient API failure (429, 5xx, timeout, a cut stream) backs off exponentially,
honouring ``retry-after``, and retries the same turn; an invalid tool call is sent back to the
model with the reason, at most ``max_invalid`` times, then the turn is given up. Every failed
attempt counts; ``max_failures`` in a row quarantine the agent (a row the UI shows). A budget
that cannot cover a call stops the agent as ``over_budget``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jiter

from agents import turns
from agents.context import ThreadState, encode_sorted, render
from agents.decide import Call, Idle, Rules, Skip, Wait, decide
from agents.faults import crash_point
from agents.leases import Lease, LeaseLost, Pool
from agents.llm import Delta, LlmClient, LlmFailure, LlmReply, LlmRequest, request_params
from agents.personas import Persona
from agents.skips import Skips
from agents.tools import InvalidToolCall, ThreadFacts, ToolCall, validate_call
from agents.view import ThreadView

logger = logging.getLogger(__name__)
_RANDOM = random.Random()

STREAMED_FIELDS = {"roast": "roast_user", "question": "ask_user_about_themselves"}
"""The text field of a tool input that is shown while it streams, and its tool."""


@dataclass(frozen=True)
class AgentSettings:
    rules: Rules = field(default_factory=Rules)
    budget: turns.BudgetLimits = field(default_factory=turns.BudgetLimits)
    max_failures: int = 5
    """Failed attempts in a row that quarantine the agent."""
    max_invalid: int = 2
    """Corrective retries of a turn whose tool call was invalid."""
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    stream: bool = True
    stream_step_chars: int = 24
    """New characters of streamed text that make one update of the event row."""


@dataclass(frozen=True)
class Prepared:
    """A model request and its canonical encoding (see :meth:`Agent.prepare`)."""

    request: LlmRequest
    encoded: bytes


class AgentHalted(Exception):
    """The agent stopped itself visibly (quarantined or over budget)."""


def backoff_seconds(failures: int, retry_after: float | None, base: float, cap: float) -> float:
    delay: float = min(cap, base * 2.0 ** max(failures - 1, 0)) * _RANDOM.uniform(0.75, 1.0)
    return max(delay, retry_after or 0.0)


def thread_facts(state: ThreadState) -> ThreadFacts:
    return ThreadFacts({m.user_id for m in state.memberships}, {e.id for e in state.events})


def one_tool_call(
    tool_uses: list[tuple[str, str, object]], persona: Persona, state: ThreadState
) -> ToolCall | InvalidToolCall:
    if len(tool_uses) != 1:
        return InvalidToolCall("", "", f"expected exactly one tool call, got {len(tool_uses)}")
    tool_use_id, name, raw = tool_uses[0]
    return validate_call(tool_use_id, name, raw, persona.tool_names, thread_facts(state))


def recorded_tool_uses(reply: Any) -> list[tuple[str, str, object]]:
    content = reply.get("content", []) if isinstance(reply, dict) else []
    return [
        (str(b["id"]), str(b["name"]), b.get("input"))
        for b in content
        if isinstance(b, dict) and b.get("type") == "tool_use"
    ]


class Streamer:
    """Writes the text of a reply into its event row while it streams, in small steps."""

    def __init__(self, agent: Agent, turn: uuid.UUID) -> None:
        self.agent = agent
        self.turn = turn
        self.written = 0
        self.steps = 0

    async def on_delta(self, delta: Delta) -> None:
        if delta.kind != "tool_input":
            return
        try:
            partial = jiter.from_json(delta.accumulated.encode(), partial_mode="trailing-strings")
        except ValueError:
            return
        if not isinstance(partial, dict):
            return
        for text_field, tool in STREAMED_FIELDS.items():
            text = partial.get(text_field)
            if (
                isinstance(text, str)
                and len(text) - self.written >= self.agent.settings.stream_step_chars
            ):
                await self.agent.check_lease()
                await turns.stream_step(self.agent.pool, self.agent.lease, self.turn, tool, partial)
                self.written = len(text)
                self.steps += 1
                crash_point("mid_stream")
                return


class Agent:
    """One persona in one thread, under one lease."""

    def __init__(
        self,
        lease: Lease,
        persona: Persona,
        view: ThreadView,
        pool: Pool,
        llm: LlmClient,
        settings: AgentSettings,
        skips: Skips,
        lease_valid: Callable[[], bool] = lambda: True,
    ) -> None:
        self.lease = lease
        self.skips = skips
        self.persona = persona
        self.view = view
        self.pool = pool
        self.llm = llm
        self.settings = settings
        self.lease_valid = lease_valid
        self.position = lease.position
        self.busy = False
        """True during a turn (a worker sheds idle agents first)."""

    async def check_lease(self) -> None:
        """Start no call or write after the local lease deadline (the fence covers the rest)."""
        if not self.lease_valid():
            raise LeaseLost(f"the lease of {self.lease.key} ran out locally")

    async def run(self) -> None:
        wake = self.view.wake_event()
        try:
            await self.view.wait_ready()
            await self.finish_recorded_turns()
            while True:
                wake.clear()
                failure = self.view.failure()
                if failure is not None:
                    raise failure
                await self.step(wake)
        finally:
            self.view.drop_wake_event(wake)

    async def step(self, wake: asyncio.Event) -> None:
        state = self.view.state()
        decision = decide(self.persona, state, self.position, time.time(), self.settings.rules)
        if isinstance(decision, Idle):
            await wake.wait()
        elif isinstance(decision, Wait):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), max(decision.until - time.time(), 0.01))
        elif isinstance(decision, Skip):
            # A skip, like a call, is decided on a consistent cut: on the events alone, a
            # comedian could skip the extraction whose facts have not arrived yet.
            lsn = self.newest_lsn(state)
            if self.view.frontier < lsn:
                await self.view.cut(lsn)
                return  # decide again, on the cut
            await self.check_lease()
            self.skips.record(self.lease, decision.upto_seq, self.view.frontier)
            self.position = decision.upto_seq
        elif isinstance(decision, Call):
            state, frontier, prepared = await self.cut_and_prepare(decision)
            again = decide(self.persona, state, self.position, time.time(), self.settings.rules)
            if again == decision:
                self.busy = True
                try:
                    await self.turn(decision, state, frontier, prepared)
                finally:
                    self.busy = False

    def newest_lsn(self, state: ThreadState) -> int:
        """The commit LSN of the newest of the events past the agent's position."""
        return max(
            (self.view.event_lsn(e.id) for e in state.events if e.seq > self.position), default=0
        )

    async def cut_and_prepare(self, call: Call) -> tuple[ThreadState, int, Prepared | None]:
        """The state at a consistent cut covering the trigger, its frontier, and the request
        for that state when it could be built while the cut was awaited.

        Waiting for the cut is mostly waiting for the probes' answers; the request for the
        state at hand is rendered meanwhile, and kept when no batch arrived before the cut
        completed (the state is then the very same object)."""
        lsn = self.view.event_lsn(call.trigger_event_id)
        if self.view.frontier >= lsn:
            return self.view.state(), self.view.frontier, None
        cut = self.view.cut(lsn)
        try:
            await asyncio.sleep(0)  # the probes' requests leave before rendering takes the loop
            speculative = self.view.state()
            prepared = self.prepare(speculative, "")
            frontier = await cut
        finally:
            if not cut.done():
                cut.cancel()
        state = self.view.state()
        return state, frontier, prepared if state is speculative else None

    async def finish_recorded_turns(self) -> None:
        """Apply the replies a crash left recorded but not performed; never call them again."""
        for turn, trigger_seq, input_lsn, reply in await turns.recorded_turns(
            self.pool, self.lease
        ):
            call = one_tool_call(recorded_tool_uses(reply), self.persona, self.view.state())
            valid = call if isinstance(call, ToolCall) else None
            await self.check_lease()
            await turns.apply_reply(self.pool, self.lease, turn, valid, trigger_seq, input_lsn)
            self.position = max(self.position, trigger_seq)

    def prepare(self, state: ThreadState, correction: str) -> Prepared:
        """The model request for ``state`` and its canonical encoding (hash and estimate)."""
        rendered = render(state)
        thread_hash = hashlib.sha256(str(self.lease.key.thread_id).encode()).hexdigest()[:32]
        request = LlmRequest(
            system=self.persona.system_prompt,
            context=rendered.text + correction,
            tools=self.persona.tools,
            metadata_user_id=thread_hash,
        )
        return Prepared(request, encode_sorted(request_params(request, self.llm.settings)))

    async def turn(
        self, call: Call, state: ThreadState, frontier: int, prepared: Prepared | None = None
    ) -> None:
        """Answer ``call``: at most one recorded reply, its effects exactly once (``prepared``:
        the request for ``state`` if it is already built)."""
        correction = ""
        invalid = 0
        while True:
            if prepared is None:
                prepared = self.prepare(state, correction)
            request, encoded = prepared.request, prepared.encoded
            prepared = None
            estimate = len(encoded) // 3 + self.llm.settings.max_tokens
            await self.check_lease()
            try:
                claim = await turns.claim(
                    self.pool,
                    self.lease,
                    call.trigger_event_id,
                    call.trigger_seq,
                    frontier,
                    estimate,
                    turns.request_hash(encoded),
                    self.settings.budget,
                )
            except turns.RateLimited as limited:
                await turns.backoff_agent(self.pool, self.lease, limited.retry_in, "rate limit")
                await asyncio.sleep(limited.retry_in)
                continue
            except turns.OverBudget as over:
                await turns.halt(self.pool, self.lease, "over_budget", str(over))
                raise AgentHalted(str(over)) from None
            if claim.status == "replied":
                await self.apply_recorded(claim, call, frontier)
                return
            if claim.status != "calling":
                self.skips.record(self.lease, call.trigger_seq, frontier)
                self.position = call.trigger_seq
                return
            crash_point("after_claim")
            streamer = Streamer(self, claim.turn_id)
            result = await self.llm.call(
                request, on_delta=streamer.on_delta if self.settings.stream else None
            )
            crash_point("after_reply")
            if isinstance(result, LlmFailure):
                await self.failed_attempt(claim, result)
                continue
            tool_uses = [(b.id, b.name, b.input) for b in result.tool_uses]
            checked = one_tool_call(tool_uses, self.persona, state)
            if isinstance(checked, InvalidToolCall):
                invalid += 1
                await self.invalid_attempt(claim, result, checked, call, frontier, invalid)
                if invalid > self.settings.max_invalid:
                    return
                correction = (
                    f"\n\nYour previous tool call was rejected: {checked.reason}\n"
                    "Call exactly one tool again, with valid input."
                )
                continue
            await self.check_lease()
            await turns.record_reply(self.pool, self.lease, claim, result, checked.tool_use_id)
            crash_point("after_record")
            await self.perform(claim.turn_id, checked, call.trigger_seq, frontier)
            return

    async def perform(
        self, turn: uuid.UUID, checked: ToolCall | None, trigger_seq: int, frontier: int
    ) -> None:
        await self.check_lease()
        await turns.apply_reply(
            self.pool,
            self.lease,
            turn,
            checked,
            trigger_seq,
            frontier,
            before_commit=lambda: crash_point("before_commit"),
        )
        crash_point("after_commit")
        self.position = max(self.position, trigger_seq)

    async def apply_recorded(self, claim: turns.Claim, call: Call, frontier: int) -> None:
        checked = one_tool_call(recorded_tool_uses(claim.reply), self.persona, self.view.state())
        valid = checked if isinstance(checked, ToolCall) else None
        await self.perform(claim.turn_id, valid, call.trigger_seq, frontier)

    async def failed_attempt(self, claim: turns.Claim, failure: LlmFailure) -> None:
        reason = f"{failure.kind}: {failure.message}"[:500]
        logger.warning("agent %s: call failed (%s)", self.lease.key, reason)
        failures = await turns.record_failure(self.pool, self.lease, claim, failure, reason)
        if failures >= self.settings.max_failures:
            await turns.halt(self.pool, self.lease, "quarantined", reason)
            raise AgentHalted(reason)
        delay = backoff_seconds(
            failures,
            failure.retry_after_seconds,
            self.settings.backoff_base,
            self.settings.backoff_cap,
        )
        await turns.backoff_agent(self.pool, self.lease, delay, reason)
        await asyncio.sleep(delay)

    async def invalid_attempt(
        self,
        claim: turns.Claim,
        reply: LlmReply,
        checked: InvalidToolCall,
        call: Call,
        frontier: int,
        invalid: int,
    ) -> None:
        reason = f"invalid tool call: {checked.reason}"
        failures = await turns.record_failure(
            self.pool, self.lease, claim, None, reason, reply=reply
        )
        if failures >= self.settings.max_failures:
            await turns.halt(self.pool, self.lease, "quarantined", reason)
            raise AgentHalted(reason)
        if invalid > self.settings.max_invalid:
            await turns.fail_turn(self.pool, self.lease, claim.turn_id, reason)
            self.skips.record(self.lease, call.trigger_seq, frontier)
            self.position = max(self.position, call.trigger_seq)
