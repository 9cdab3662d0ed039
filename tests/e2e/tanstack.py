"""Drive TanStack DB's electric collection (``@tanstack/electric-db-collection``) from tests.

``CollectionFollower`` runs ``node tanstack_collection.mjs`` as a subprocess. The Node program
syncs one table into a collection (``eager``, ``on-demand`` or ``progressive`` sync mode),
runs a live query over it and prints the live query's rows as JSON lines; this module parses
them, lets a test wait until the rows satisfy a predicate and sends ``awaitTxId`` commands.

Rows are keyed by ``String(row.id)`` (the collection's ``getKey``) and hold the values the
electric client parsed, serialised to JSON like ``jsclient.ShapeFollower`` does: ``int8``
(BigInt) as strings, ``int4``/``float8`` as numbers, ``bool`` as booleans.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Sequence
from typing import Any, Literal

from tests.e2e.jsclient import node_modules_ready
from tests.e2e.node_process import (
    E2E_DIR,
    NodeFollower,
    Predicate,
    Rows,
    installed_version,
    node_config,
    pinned_dependencies,
    short,
)

__all__ = [
    "E2E_DIR",
    "SCRIPT",
    "TANSTACK_PACKAGES",
    "CollectionFollower",
    "Filter",
    "Predicate",
    "Rows",
    "SyncMode",
    "pinned_versions",
    "tanstack_modules_ready",
]

SCRIPT = E2E_DIR / "tanstack_collection.mjs"
TANSTACK_PACKAGES = ("@tanstack/db", "@tanstack/electric-db-collection")

SyncMode = Literal["eager", "on-demand", "progressive"]
Filter = tuple[Literal["lt", "lte", "gt", "gte", "eq"], str, Any]

_TXID_REPLY_GRACE_S = 5.0


def pinned_versions() -> dict[str, str]:
    """The exact TanStack package versions pinned in package.json."""
    dependencies = pinned_dependencies()
    return {name: dependencies[name] for name in TANSTACK_PACKAGES}


def tanstack_modules_ready() -> bool:
    """True if ``npm ci`` has installed the pinned client and TanStack packages."""
    if shutil.which("node") is None or not node_modules_ready():
        return False
    return all(installed_version(name) == version for name, version in pinned_versions().items())


class CollectionFollower(NodeFollower):
    """A TanStack DB electric collection plus a live query over it (async context manager).

    ``rows`` is the live query's latest reported result (only reported once it is ready).
    """

    script = SCRIPT
    _error_width = 800

    def __init__(
        self,
        url: str,
        table: str,
        *,
        sync_mode: SyncMode = "eager",
        where: str | None = None,
        params: dict[str, str] | None = None,
        filters: Sequence[Filter] = (),
        order_by: str | None = None,
        descending: bool = False,
        limit: int | None = None,
        subset_method: Literal["GET", "POST"] | None = None,
        log_requests: bool = False,
        collection_id: str | None = None,
        live_sse: bool = False,
        headers: dict[str, str] | None = None,
        node: str = "node",
    ) -> None:
        direction = None if order_by is None else "desc" if descending else "asc"
        config = node_config(url=url, table=table, syncMode=sync_mode, where=where, params=params)
        config |= node_config(filter=[list(f) for f in filters] or None, orderBy=order_by)
        config |= node_config(orderDir=direction, limit=limit, subsetMethod=subset_method)
        config |= node_config(logRequests=log_requests or None, id=collection_id)
        config |= node_config(liveSse=live_sse or None, headers=headers)
        super().__init__(config, node=node)
        self._requests: list[dict[str, Any]] = []
        self._txid_replies: dict[int, dict[str, Any]] = {}
        self._command_ids = itertools.count(1)
        self.versions: dict[str, str | None] = {}
        self.last_txid_reply: dict[str, Any] | None = None

    def _handle_event(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind in ("request", "response"):
            self._requests.append(msg)
            return
        super()._handle_event(msg)
        if kind == "txid" and isinstance(msg.get("id"), int):
            self._txid_replies[msg["id"]] = msg
        elif kind == "hello":
            self.versions = msg.get("versions") or {}

    # ------------------------------------------------------------------ accessors

    @property
    def source_size(self) -> int | None:
        """How many rows the underlying collection held at the latest state."""
        if self._state is None:
            return None
        size = self._state.get("sourceSize")
        return size if isinstance(size, int) else None

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every line other than state, request and response, in order."""
        return self._events

    @property
    def statuses(self) -> list[tuple[str, str]]:
        """``(collection, status)`` transitions, ``collection`` being source or query."""
        return [
            (str(e.get("collection")), str(e.get("status")))
            for e in self._events
            if e.get("type") == "status"
        ]

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Request and response lines, in order (needs ``log_requests=True``)."""
        return self._requests

    # ------------------------------------------------------------------ commands

    async def await_txid(self, txid: int, timeout: float = 5.0) -> bool:  # noqa: ASYNC109
        """``collection.utils.awaitTxId(txid, timeout)``: True once the txid was synced.

        False when the client gave up (``TimeoutWaitingForTxIdError`` and the like); the
        reason is in ``last_txid_reply``. Raises ``AssertionError`` if the process is gone.
        """
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise self._not_started()
        command_id = next(self._command_ids)
        command = {
            "cmd": "awaitTxId",
            "txid": txid,
            "timeout": int(timeout * 1000),
            "id": command_id,
        }
        proc.stdin.write((json.dumps(command) + "\n").encode())
        await proc.stdin.drain()
        reply = await self._wait_until(
            lambda: self._txid_replies.get(command_id),
            timeout + _TXID_REPLY_GRACE_S,
            f"no answer to {command}",
        )
        self.last_txid_reply = reply
        return reply.get("ok") is True

    # ------------------------------------------------------------------ diagnostics

    def _failure_summary(self) -> list[str]:
        out = [
            f"packages {self.versions}, process returncode {self.returncode}, "
            f"{self._seq} states seen, statuses {self.statuses[-6:]}"
        ]
        if self._state is None:
            out.append("no state was ever reported (the live query never became ready)")
        return out

    def _failure_traffic(self) -> list[str]:
        if not self._requests:
            return []
        return ["last requests:", *("  " + short(r, 600) for r in self._requests[-6:])]
