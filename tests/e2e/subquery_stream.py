"""Drive the official ``@electric-sql/client`` on a subquery shape from Python tests.

``SubqueryStreamFollower`` runs ``node follow_subquery_stream.mjs``: a ``ShapeStream`` whose
messages are applied by a small tag-aware row store (the client's own ``Shape`` helper ignores
move events). The Node program reports the move events it receives, each change (with its
``is_move_in`` flag), each HTTP response (status, offset, live) and, after every up-to-date,
the rows it holds; this module keeps them for the tests.
"""

from __future__ import annotations

from typing import Any

from tests.e2e.node_process import E2E_DIR, NodeFollower, node_config

__all__ = ["SCRIPT", "SubqueryStreamFollower"]

SCRIPT = E2E_DIR / "follow_subquery_stream.mjs"


class SubqueryStreamFollower(NodeFollower):
    """One subquery shape followed by the official client (async context manager)."""

    script = SCRIPT

    def __init__(
        self,
        url: str,
        table: str,
        *,
        where: str | None,
        params: dict[str, str] | None = None,
        live_sse: bool = False,
        headers: dict[str, str] | None = None,
        node: str = "node",
    ) -> None:
        config = node_config(url=url, table=table, where=where, params=params, liveSse=live_sse)
        super().__init__(config | node_config(headers=headers), node=node)
        self.move_events: list[dict[str, Any]] = []
        """The headers of every move-in/move-out event, in order."""
        self.changes: list[dict[str, Any]] = []
        """``{key, operation, isMoveIn}`` of every change message, in order."""
        self.responses: list[dict[str, Any]] = []
        """``{status, offset, live}`` of every HTTP response."""

    def _handle_event(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "event":
            self.move_events.append(msg["headers"])
        elif kind == "change":
            self.changes.append(msg)
        elif kind == "response":
            self.responses.append(msg)
        else:
            super()._handle_event(msg)

    @property
    def snapshot_requests(self) -> int:
        """Responses to requests from ``offset=-1`` (a fresh snapshot)."""
        return sum(1 for r in self.responses if r.get("offset") == "-1")

    @property
    def refetches(self) -> int:
        """409 responses plus must-refetch messages."""
        must_refetch = sum(1 for e in self.events if e.get("type") == "must-refetch")
        return must_refetch + sum(1 for r in self.responses if r.get("status") == 409)

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.move_events if e.get("event") == kind]
