"""What an agent sees of its thread: the thread's shapes, followed with the Python shape client,
and the consistent cut it acts on.

Each thread a worker runs agents for has one :class:`ThreadView`, shared by those agents: the
shapes ``events``, ``memberships`` and ``facts`` with ``thread_id = '<id>'``, plus the worker's
single ``users`` shape (names and kinds). The view turns the rows into a
:class:`~agents.context.ThreadState` and wakes its agents on every batch.

Consistent cut (theory of operation). Every change message carries the LSN of its transaction's
commit, and every ``up-to-date`` carries ``global_last_seen_lsn``: syncd's promise that the
shape holds every change with an LSN up to that value at the position where the batch ends.
The view keeps, per shape, that *frontier*; the frontier of the view is the smallest of its
shapes'. Every transaction with an LSN at or below it is then visible in all the shapes at
once, so a state read when ``frontier >= L`` contains the transaction at LSN ``L`` and every one
committed before it, in every shape: never the events of one commit with the facts or
memberships of an older one. An agent acts on a trigger committed at ``L`` only after
:meth:`ThreadView.wait_for_cut` has seen the frontier reach ``L`` (it may be later: newer
changes are fine, missing older ones are not).

A quiet shape gets no new ``up-to-date`` until its live request times out, so the view probes
a lagging shape: a non-live request at the shape's current handle and offset answers at once
with ``up-to-date`` and the server's current position; when it brings no change the shape is
complete up to that position. When it does bring changes, the live stream is about to deliver
them too, and the view waits for that and probes again.

Snapshot rows (after a first request or a 409) have no LSN: they count as at or below the
frontier of the ``up-to-date`` that ends the snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx

from agents.context import EventRow, FactRow, MembershipRow, ThreadState, UserRow
from shapes.client import Batch, Shape, ShapeDefinition, ShapeRegistry, ShapeStream

PROBE_PAUSE = 0.05
"""Seconds between probes of a shape whose probe brought changes the live stream must deliver."""


class TrackedShape:
    """A shared shape plus what the cut needs: its frontier and the LSN of each row."""

    def __init__(self, shape: Shape, on_batch: Callable[[], None] | None = None) -> None:
        self.shape = shape
        self.frontier = 0
        self.lsn_of: dict[str, int] = {}
        self._listeners: list[Callable[[], None]] = []
        if on_batch is not None:
            self._listeners.append(on_batch)
        self._unsubscribe = shape.subscribe(self._on_batch)

    def listen(self, callback: Callable[[], None]) -> Callable[[], None]:
        self._listeners.append(callback)

        def stop() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(callback)

        return stop

    def _on_batch(self, batch: Batch) -> None:
        for message in batch:
            headers = message.get("headers", {})
            control = headers.get("control")
            if control == "must-refetch":
                self.frontier = 0
                self.lsn_of.clear()
            elif control == "up-to-date":
                seen = headers.get("global_last_seen_lsn")
                if seen is not None:
                    self.frontier = max(self.frontier, int(seen))
            elif "lsn" in headers and "key" in message:
                self.lsn_of[message["key"]] = int(headers["lsn"])
        for listener in list(self._listeners):
            listener()

    async def probe(self, url: str, client: httpx.AsyncClient) -> bool:
        """Ask the server, without waiting, how far this shape is complete; True when the
        shape holds everything the answer covers (the frontier then moves to its position)."""
        stream = self.shape.stream
        if not self.shape.is_up_to_date or stream.offset == "-1":
            return False
        probe = ShapeStream(
            url,
            stream.definition,
            handle=stream.handle,
            offset=stream.offset,
            live=False,
            client=client,
            parse_values=False,
        )
        async for batch in probe:
            changes = [m for m in batch if "control" not in m.get("headers", {})]
            if changes:
                return False
            for message in batch:
                seen = message.get("headers", {}).get("global_last_seen_lsn")
                if seen is not None:
                    self.frontier = max(self.frontier, int(seen))
            return True
        return False

    def close(self) -> None:
        self._unsubscribe()


def thread_definitions(thread_id: uuid.UUID) -> dict[str, ShapeDefinition]:
    where = f"thread_id = '{thread_id}'"
    return {
        "events": ShapeDefinition.of("events", where=where),
        "memberships": ShapeDefinition.of("memberships", where=where, replica="full"),
        "facts": ShapeDefinition.of("facts", where=where),
    }


def _uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _seconds(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return 0.0


def user_rows(rows: dict[str, dict[str, Any]]) -> dict[uuid.UUID, UserRow]:
    users = {}
    for row in rows.values():
        user = UserRow(_uuid(row["id"]), str(row["name"]), str(row["kind"]))
        users[user.id] = user
    return users


def event_row(row: dict[str, Any]) -> EventRow:
    data = row.get("data")
    return EventRow(
        id=_uuid(row["id"]),
        seq=int(row["seq"]),
        user_id=_uuid(row["user_id"]),
        kind=str(row["kind"]),
        data=data if isinstance(data, dict) else {},
        at=_seconds(row.get("inserted_at")),
    )


def fact_row(row: dict[str, Any]) -> FactRow:
    return FactRow(
        id=_uuid(row["id"]),
        subject_id=_uuid(row["subject_id"]),
        source_event_id=_uuid(row["source_event_id"]),
        predicate=str(row["predicate"]),
        object=str(row["object"]),
        category=str(row["category"]),
        confidence=float(row["confidence"]),
        disputed=bool(row["disputed"]),
        inserted_at_order=int(_seconds(row.get("inserted_at")) * 1_000_000),
    )


class ThreadView:
    """The shapes of one thread, shared by the agents a worker runs on it."""

    def __init__(
        self,
        thread_id: uuid.UUID,
        url: str,
        client: httpx.AsyncClient,
        registry: ShapeRegistry,
        users: TrackedShape,
    ) -> None:
        self.thread_id = thread_id
        self._parsed_events: dict[str, tuple[tuple[Any, ...], EventRow]] = {}
        self.url = url
        self.client = client
        self.users = users
        self.shapes = {
            name: TrackedShape(registry.get(url, definition, client=client), self._changed)
            for name, definition in thread_definitions(thread_id).items()
        }
        self._stop_users = users.listen(self._changed)
        self._wakes: set[asyncio.Event] = set()

    def _changed(self) -> None:
        for wake in self._wakes:
            wake.set()

    def wake_event(self) -> asyncio.Event:
        """An event set on every batch of any of the view's shapes (clear it before reading)."""
        wake = asyncio.Event()
        self._wakes.add(wake)
        return wake

    def drop_wake_event(self, wake: asyncio.Event) -> None:
        self._wakes.discard(wake)

    async def wait_ready(self) -> None:
        """Wait until every shape has caught up with the server once."""
        for tracked in (*self.shapes.values(), self.users):
            await tracked.shape.wait_until_up_to_date(timeout=None)

    def failure(self) -> BaseException | None:
        for tracked in (*self.shapes.values(), self.users):
            if tracked.shape.error is not None:
                return tracked.shape.error
        return None

    @property
    def frontier(self) -> int:
        return min(tracked.frontier for tracked in self.shapes.values())

    def event_lsn(self, event_id: uuid.UUID) -> int:
        """The commit LSN of an event (0 for a snapshot row, which precedes every frontier)."""
        return self.shapes["events"].lsn_of.get(f'"public"."events"/"{event_id}"', 0)

    async def wait_for_cut(self, lsn: int) -> int:
        """Wait until all the shapes hold every change up to ``lsn``; returns the frontier."""
        while True:
            lagging = [t for t in self.shapes.values() if t.frontier < lsn]
            if not lagging:
                return self.frontier
            for tracked in lagging:
                error = tracked.shape.error
                if error is not None:
                    raise error
                if tracked.frontier < lsn and not await tracked.probe(self.url, self.client):
                    await asyncio.sleep(PROBE_PAUSE)

    def state(self) -> ThreadState:
        """The thread's rows now; final events only (a reply being streamed is not yet said)."""
        events = self._final_events()
        memberships = [
            MembershipRow(_uuid(row["user_id"]), str(row["role"]))
            for row in self.shapes["memberships"].shape.rows.values()
        ]
        facts = [fact_row(row) for row in self.shapes["facts"].shape.rows.values()]
        return ThreadState(user_rows(self.users.shape.rows), memberships, events, facts)

    def _final_events(self) -> list[EventRow]:
        """The final events as :class:`EventRow` s, each parsed once while its row is unchanged
        (the agent reads the whole thread on every decision)."""
        parsed: dict[str, tuple[tuple[Any, ...], EventRow]] = {}
        events: list[EventRow] = []
        for key, row in self.shapes["events"].shape.rows.items():
            if row.get("status", "final") != "final":
                continue
            values = tuple(row.values())  # the cache holds them: compared by identity first
            known = self._parsed_events.get(key)
            event = known[1] if known is not None and known[0] == values else event_row(row)
            parsed[key] = (values, event)
            events.append(event)
        self._parsed_events = parsed
        return events

    async def close(self) -> None:
        self._stop_users()
        for tracked in self.shapes.values():
            tracked.close()
            await tracked.shape.close()
