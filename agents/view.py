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
memberships of an older one. An agent acts on events committed up to ``L`` (a call, or a
skip) only once :meth:`ThreadView.cut` has seen the frontier reach ``L`` (it may be later: newer
changes are fine, missing older ones are not). The agents of a thread share a cut in progress.

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
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Generic, TypeVar

from agents.context import EventRow, FactRow, MembershipRow, ThreadState, UserRow, encode_sorted
from shapes.client import (
    Batch,
    LiveMode,
    Shape,
    ShapeDefinition,
    ShapeRegistry,
    ShapeStream,
    Transport,
)

T = TypeVar("T")

LIVE_MODE: LiveMode = "sse"
"""How the view follows its shapes: one Server-Sent Events response per shape, so a change
costs no new request."""

logger = logging.getLogger(__name__)

CUT_WARNING_SECONDS = 5.0
"""A cut still awaited after this long is logged, with the shapes it waits for."""

PROBE_PAUSE = 0.05
"""Seconds between probes of a shape whose probe brought changes the live stream must deliver."""


class ParsedRows(Generic[T]):
    """A shape's rows parsed into typed values, each parsed once per change of the row.

    :class:`TrackedShape` tells it which keys each batch touched; :meth:`current` parses just
    those again (an agent reads its whole thread before every decision, and a thread's rows
    rarely change)."""

    def __init__(self, shape: Shape, parse: Callable[[dict[str, Any]], T | None]) -> None:
        self._shape = shape
        self._parse = parse
        self._values: dict[str, T] = {}
        self._stale: set[str] | None = None
        """Keys changed since the last :meth:`current`; ``None``: every row."""

    def forget(self, key: str) -> None:
        if self._stale is not None:
            self._stale.add(key)

    def forget_all(self) -> None:
        self._stale = None

    def current(self) -> dict[str, T]:
        """The parsed rows now (the same dict, updated in place: copy what must not change)."""
        rows = self._shape.rows
        if self._stale is None:
            self._values.clear()
            stale: Iterable[str] = rows
        else:
            stale = self._stale
        for key in stale:
            row = rows.get(key)
            value = None if row is None else self._parse(row)
            if value is None:
                self._values.pop(key, None)
            else:
                self._values[key] = value
        self._stale = set()
        return self._values


class TrackedShape:
    """A shared shape plus what the cut needs: its frontier and the LSN of each row."""

    def __init__(self, shape: Shape, on_batch: Callable[[], None] | None = None) -> None:
        self.shape = shape
        self.frontier = 0
        self.lsn_of: dict[str, int] = {}
        self.version = 0
        """Counts the batches applied: a reader that saw the same version saw the same rows."""
        self._parsed: list[ParsedRows[Any]] = []
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

    def parsed(self, parse: Callable[[dict[str, Any]], T | None]) -> ParsedRows[T]:
        """The shape's rows as ``parse`` makes them, kept in step with every batch (a row is
        parsed again only when a change names it; ``None`` leaves a row out)."""
        rows = ParsedRows(self.shape, parse)
        self._parsed.append(rows)
        return rows

    def _on_batch(self, batch: Batch) -> None:
        self.version += 1
        for message in batch:
            headers = message.get("headers", {})
            control = headers.get("control")
            if control == "must-refetch":
                self.frontier = 0
                self.lsn_of.clear()
                for parsed in self._parsed:
                    parsed.forget_all()
            elif control == "up-to-date":
                seen = headers.get("global_last_seen_lsn")
                if seen is not None:
                    self.frontier = max(self.frontier, int(seen))
            elif "key" in message:
                key = message["key"]
                for parsed in self._parsed:
                    parsed.forget(key)
                if "lsn" in headers:
                    self.lsn_of[key] = int(headers["lsn"])
        for listener in list(self._listeners):
            listener()

    async def probe(self, url: str, transport: Transport) -> bool:
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
            transport=transport,
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


def _retrieve(future: asyncio.Future[int]) -> None:
    """Mark a shared cut's outcome as seen (its waiters may all have gone)."""
    if not future.cancelled():
        future.exception()


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


def user_row(row: dict[str, Any]) -> UserRow:
    return UserRow(_uuid(row["id"]), str(row["name"]), str(row["kind"]))


class UserDirectory:
    """The worker's one ``users`` shape, shared by all its thread views: the users by id,
    built once per change of the shape (a worker may run agents in thousands of threads)."""

    def __init__(self, tracked: TrackedShape) -> None:
        self.tracked = tracked
        self._parsed = tracked.parsed(user_row)
        self._version = -1
        self._by_id: dict[uuid.UUID, UserRow] = {}

    def by_id(self) -> dict[uuid.UUID, UserRow]:
        """The users now; a new dict after every change (a state read earlier keeps its own)."""
        if self._version != self.tracked.version:
            self._by_id = {user.id: user for user in self._parsed.current().values()}
            self._version = self.tracked.version
        return self._by_id


def event_row(row: dict[str, Any]) -> EventRow:
    data = row.get("data")
    return EventRow(
        id=_uuid(row["id"]),
        seq=int(row["seq"]),
        user_id=_uuid(row["user_id"]),
        kind=str(row["kind"]),
        data=data if isinstance(data, dict) else {},
        at=_seconds(row.get("inserted_at")),
        data_json=encode_sorted(data) if isinstance(data, dict) else b"{}",
    )


def final_event_row(row: dict[str, Any]) -> EventRow | None:
    """The event of a row, unless it is a reply still being streamed (not yet said)."""
    return event_row(row) if row.get("status", "final") == "final" else None


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


def membership_row(row: dict[str, Any]) -> MembershipRow:
    return MembershipRow(_uuid(row["user_id"]), str(row["role"]))


class ThreadView:
    """The shapes of one thread, shared by the agents a worker runs on it."""

    def __init__(
        self,
        thread_id: uuid.UUID,
        url: str,
        transport: Transport,
        registry: ShapeRegistry,
        users: UserDirectory,
    ) -> None:
        self.thread_id = thread_id
        self.url = url
        self.transport = transport
        self.users = users
        self.shapes = {
            name: TrackedShape(
                registry.get(url, definition, transport=transport, live_mode=LIVE_MODE),
                self._changed,
            )
            for name, definition in thread_definitions(thread_id).items()
        }
        self._events = self.shapes["events"].parsed(final_event_row)
        self._memberships = self.shapes["memberships"].parsed(membership_row)
        self._facts = self.shapes["facts"].parsed(fact_row)
        self._stop_users = users.tracked.listen(self._changed)
        self._wakes: set[asyncio.Event] = set()
        self._state: ThreadState | None = None
        self._cut: tuple[int, asyncio.Future[int]] | None = None
        """The cut in progress, if any, and the LSN it waits for."""

    def _changed(self) -> None:
        self._state = None
        for wake in self._wakes:
            wake.set()

    def wake_event(self) -> asyncio.Event:
        """An event set on every batch of any of the view's shapes (clear it before reading)."""
        wake = asyncio.Event()
        self._wakes.add(wake)
        return wake

    def drop_wake_event(self, wake: asyncio.Event) -> None:
        self._wakes.discard(wake)

    def _tracked(self) -> tuple[TrackedShape, ...]:
        return (*self.shapes.values(), self.users.tracked)

    async def wait_ready(self) -> None:
        """Wait until every shape has caught up with the server once."""
        for tracked in self._tracked():
            await tracked.shape.wait_until_up_to_date(timeout=None)

    def failure(self) -> BaseException | None:
        for tracked in self._tracked():
            if tracked.shape.error is not None:
                return tracked.shape.error
        return None

    @property
    def frontier(self) -> int:
        return min(tracked.frontier for tracked in self.shapes.values())

    def event_lsn(self, event_id: uuid.UUID) -> int:
        """The commit LSN of an event (0 for a snapshot row, which precedes every frontier)."""
        return self.shapes["events"].lsn_of.get(f'"public"."events"/"{event_id}"', 0)

    def cut(self, lsn: int) -> asyncio.Future[int]:
        """A future of the frontier once all the shapes hold every change up to ``lsn``. Its
        first probes run from the loop's next step on, so that a caller may compute meanwhile
        (their requests are already sent then). Raises the error of a failed shape.

        The agents of a thread wake on the same batches: a cut already under way for the same
        or a later LSN is shared (cancelling the future returned stops only that wait)."""
        if self._cut is not None:
            target, pending = self._cut
            if target >= lsn and not pending.done():
                return asyncio.shield(pending)
        probes = self._probe_lagging(lsn)
        pending = asyncio.ensure_future(self._complete_cut(lsn, probes))
        pending.add_done_callback(_retrieve)
        self._cut = (lsn, pending)
        return asyncio.shield(pending)

    def _probe_lagging(self, lsn: int) -> list[asyncio.Task[bool]]:
        """Start a probe of every shape whose frontier is below ``lsn``."""
        lagging = [t for t in self.shapes.values() if t.frontier < lsn]
        for tracked in lagging:
            if tracked.shape.error is not None:
                raise tracked.shape.error
        return [asyncio.ensure_future(t.probe(self.url, self.transport)) for t in lagging]

    async def _complete_cut(self, lsn: int, probes: list[asyncio.Task[bool]]) -> int:
        warn_at = time.monotonic() + CUT_WARNING_SECONDS
        try:
            while probes:
                complete = await asyncio.gather(*probes)
                if not all(complete):
                    await asyncio.sleep(PROBE_PAUSE)
                probes = self._probe_lagging(lsn)
                if probes and time.monotonic() > warn_at:
                    warn_at = float("inf")
                    logger.warning(
                        "thread %s: the cut at %d still waits for %s",
                        self.thread_id,
                        lsn,
                        self._lagging_description(lsn),
                    )
        finally:
            for probe in probes:
                probe.cancel()
        return self.frontier

    def _lagging_description(self, lsn: int) -> str:
        parts = []
        for name, tracked in self.shapes.items():
            if tracked.frontier < lsn:
                stream = tracked.shape.stream
                parts.append(
                    f"{name} (frontier {tracked.frontier}, up to date"
                    f" {tracked.shape.is_up_to_date}, handle {stream.handle},"
                    f" offset {stream.offset})"
                )
        return ", ".join(parts)

    def state(self) -> ThreadState:
        """The thread's rows now; final events only (a reply being streamed is not yet said).

        The same object until the next batch of any of the view's shapes."""
        if self._state is None:
            self._state = ThreadState(
                self.users.by_id(),
                list(self._memberships.current().values()),
                list(self._events.current().values()),
                list(self._facts.current().values()),
            )
        return self._state

    async def close(self) -> None:
        if self._cut is not None:
            self._cut[1].cancel()
        self._stop_users()
        for tracked in self.shapes.values():
            tracked.close()
            await tracked.shape.close()
