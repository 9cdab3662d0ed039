"""The supervisor: follows the memberships of the agent users and keeps one lease row per
(thread, agent) membership, active while the membership exists.

Every worker runs one; their writes are idempotent. A membership inserted (or present in the
shape's snapshot) makes its agent active; a membership deleted stops its agent: the lease row
becomes ``stopped``, so the holder's next heartbeat or fence fails and the worker stops it
(and ``agent_status`` shows it). Which worker runs an active agent is the leases' business
(:mod:`agents.leases`), not the supervisor's.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable

from agents import leases
from agents.leases import AgentKey, Pool
from agents.personas import PERSONAS
from agents.view import LIVE_MODE
from shapes.client import Batch, ShapeDefinition, ShapeRegistry, Transport

logger = logging.getLogger(__name__)


def agent_memberships(agent_ids: Iterable[uuid.UUID] = PERSONAS) -> ShapeDefinition:
    ids = ", ".join(f"'{agent}'" for agent in sorted(agent_ids, key=str))
    return ShapeDefinition.of("memberships", where=f"user_id IN ({ids})", replica="full")


def membership_changes(batch: Batch) -> tuple[list[AgentKey], list[AgentKey]]:
    """The (thread, agent) keys a batch adds and removes, in order of the last word."""
    last: dict[AgentKey, bool] = {}
    for message in batch:
        operation = message.get("headers", {}).get("operation")
        value = message.get("value") or {}
        if operation not in ("insert", "update", "delete") or "thread_id" not in value:
            continue
        key = AgentKey(uuid.UUID(str(value["thread_id"])), uuid.UUID(str(value["user_id"])))
        last.pop(key, None)
        last[key] = operation != "delete"
    added = [k for k, present in last.items() if present]
    removed = [k for k, present in last.items() if not present]
    return added, removed


class Supervisor:
    def __init__(self, pool: Pool, url: str, transport: Transport, registry: ShapeRegistry) -> None:
        self.pool = pool
        self.url = url
        self.transport = transport
        self.registry = registry

    async def run(self) -> None:
        shape = self.registry.get(
            self.url, agent_memberships(), transport=self.transport, live_mode=LIVE_MODE
        )
        changes = shape.changes()
        try:
            async for batch in changes:
                if any(m.get("headers", {}).get("control") == "must-refetch" for m in batch):
                    continue  # the shape is sent again in full: its inserts re-ensure all
                added, removed = membership_changes(batch)
                await leases.ensure_agents(self.pool, added)
                await leases.stop_agents(self.pool, removed, "its membership was deleted")
                if added or removed:
                    logger.info(
                        "memberships: %d agents added, %d stopped", len(added), len(removed)
                    )
        finally:
            await changes.aclose()
            await shape.close()
