"""One live shape inside the daemon: its definition, compiled view, durable log and waiters.

Layer: ``syncd``. A shape is *snapshotting* from creation until its snapshot and the
transactions buffered meanwhile are in the log, then *ready*, and *gone* once deleted or
invalidated (its handle is never issued again). Transactions reach a shape through
:meth:`ShapeState.commit`; readers wait for growth through :meth:`ShapeState.changed`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from shapes.convert import ShapeView
from shapes.messages import relation_key_prefix
from shapes.schema import Table
from shapes.shape import CanonicalShape
from shapes.where import Where
from shapes.xid import Snapshot
from syncd.storage import ShapeLog

log = logging.getLogger("syncd.shape")

Status = Literal["snapshotting", "ready", "gone"]
RemovalCause = Literal["deleted", "invalidated", "failed", "expired", "evicted"]
"""Why a shape was removed (a bounded metrics label): deleted through the API, invalidated by
a schema change, truncate or slot loss, failed (its snapshot, where clause or subquery),
expired (unused for the retention time) or evicted (over the storage quota)."""


class Retire(Protocol):
    """Removes a shape for good (the engine's ``delete``)."""

    def __call__(
        self, shape: ShapeState, reason: str, *, cause: RemovalCause = "invalidated"
    ) -> None: ...


LogEntries = Sequence[tuple[int, bytes]]

SNAPSHOT_LSN_UNKNOWN = 2**64 - 1
"""A :attr:`ShapeState.snapshot_lsn` not known yet (metadata stored before it was)."""


class Wakeup:
    """A one-shot signal that many waiters wait on together.

    Each waiter's wake function is added and removed in O(1). An asyncio future keeps its
    done-callbacks in a list, so removing one is a scan: with thousands of live requests on one
    future (the server's shutdown signal, a shape with many followers), each request that woke
    for another reason (its timer, its own disconnect) paid for all the others. Measured with
    5,000 SSE streams, that scan was the largest single cost of syncd's event loop.

    Most signals have one waiter at a time (a connection's own disconnect signal), so a lone
    waker is kept as is and a set (about 0.2 kB even when nearly empty) is made for a second.
    """

    __slots__ = ("_done", "_wakers")

    def __init__(self) -> None:
        self._done = False
        self._wakers: set[Callable[[], None]] | Callable[[], None] | None = None

    def done(self) -> bool:
        return self._done

    def waiting(self) -> int:
        """How many wake functions are waiting."""
        wakers = self._wakers
        if wakers is None:
            return 0
        return len(wakers) if isinstance(wakers, set) else 1

    def set(self) -> None:
        """Mark it done and call every waiting wake function (once)."""
        if self._done:
            return
        self._done = True
        wakers, self._wakers = self._wakers, None
        if isinstance(wakers, set):
            for wake in wakers:
                wake()
        elif wakers is not None:
            wakers()

    def add_waker(self, wake: Callable[[], None]) -> None:
        wakers = self._wakers
        if self._done:
            wake()
        elif wakers is None:
            self._wakers = wake
        elif isinstance(wakers, set):
            wakers.add(wake)
        elif wakers is not wake:
            self._wakers = {wakers, wake}

    def discard_waker(self, wake: Callable[[], None]) -> None:
        wakers = self._wakers
        if isinstance(wakers, set):
            wakers.discard(wake)
        elif wakers is wake:
            self._wakers = None


class Notifier:
    """Wakes every waiter when a shape's log grows or the shape goes away."""

    __slots__ = ("_wakeup",)

    def __init__(self) -> None:
        self._wakeup: Wakeup | None = None

    def wait(self) -> Wakeup:
        """A signal set at the next :meth:`notify` (take it before looking at the log, so that
        a change in between is not missed)."""
        if self._wakeup is None or self._wakeup.done():
            self._wakeup = Wakeup()
        return self._wakeup

    def notify(self) -> None:
        """Set the pending signal, if any."""
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None:
            wakeup.set()


TIMER_QUANTUM = 0.05
"""Seconds between the shared ends of :func:`wait_briefly`'s waits: a wait ends at the first
multiple of this on the loop's clock at or after its time is up, so at most this late."""


def wait_briefly(
    signals: Sequence[Wakeup | asyncio.Future[Any]], seconds: float
) -> asyncio.Future[None]:
    """A future done when one of ``signals`` is done or ``seconds`` have passed (up to
    :data:`TIMER_QUANTUM` later); cancels none of the signals.

    The cheap form of ``wait_for(shield(...), seconds)`` for the thousands of live requests that
    wait together on one :class:`Notifier`. A held request keeps only a future and a small
    :class:`_Wait`: no coroutine frame, no task and no timer of its own (waits that end in the
    same quantum share one timer, see :class:`SharedTimers`). Awaiting the future and cancelling
    the awaiting task both unhook the wait from every signal.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    if any(signal.done() for signal in signals):
        future.set_result(None)
        return future
    wait = _Wait(future, (*signals, SharedTimers.of(loop).at(seconds)))
    for signal in wait.signals:
        if isinstance(signal, Wakeup):
            signal.add_waker(wait)
        else:
            signal.add_done_callback(wait)
    future.add_done_callback(wait.unhook)
    return future


class _Wait:
    """One :func:`wait_briefly`: called by the first signal done, it resolves the future; once
    the future is done (or cancelled with its task) it takes itself off every signal."""

    __slots__ = ("future", "signals")

    def __init__(
        self, future: asyncio.Future[None], signals: tuple[Wakeup | asyncio.Future[Any], ...]
    ) -> None:
        self.future = future
        self.signals = signals

    def __call__(self, _: object = None) -> None:
        if not self.future.done():
            self.future.set_result(None)

    def unhook(self, _: object) -> None:
        for signal in self.signals:
            if isinstance(signal, Wakeup):
                signal.discard_waker(self)
            else:
                signal.remove_done_callback(self)


class SharedTimers:
    """The timers of one event loop's waits, one per :data:`TIMER_QUANTUM` in which waits end.

    With a timer per wait, each held long-poll and SSE stream kept a timer handle (about
    0.45 kB under uvloop); thousands of them, arriving over a second, end in a few dozen quanta.
    """

    __slots__ = ("_loop", "_slots", "__weakref__")

    _of_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SharedTimers] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots: dict[int, Wakeup] = {}

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> SharedTimers:
        """The timers of ``loop`` (made at its first wait)."""
        timers = cls._of_loop.get(loop)
        if timers is None:
            timers = cls._of_loop[loop] = cls(loop)
        return timers

    def at(self, seconds: float) -> Wakeup:
        """A signal set at the first quantum boundary at least ``seconds`` from now."""
        slot = math.ceil((self._loop.time() + max(seconds, 0.0)) / TIMER_QUANTUM)
        wakeup = self._slots.get(slot)
        if wakeup is None:
            wakeup = self._slots[slot] = Wakeup()
            self._loop.call_at(slot * TIMER_QUANTUM, self._fire, slot)
        return wakeup

    def _fire(self, slot: int) -> None:
        wakeup = self._slots.pop(slot, None)
        if wakeup is not None:
            wakeup.set()


@dataclass(eq=False)
class ShapeState:
    """Runtime state of one shape (identity-hashed: one object per handle)."""

    handle: str
    definition: CanonicalShape
    table: Table
    where: Where | None
    selected: tuple[str, ...]
    log: ShapeLog
    status: Status = "snapshotting"
    snapshot: Snapshot | None = None
    snapshot_lsn: int = SNAPSHOT_LSN_UNKNOWN
    """The WAL insert position read right after the snapshot was taken: every transaction the
    snapshot's rows contain commits below it, so only those are checked against the snapshot
    (see :meth:`in_snapshot`)."""
    buffer: list[tuple[int, int, LogEntries]] = field(default_factory=list)
    failure: BaseException | None = None
    notifier: Notifier = field(default_factory=Notifier)
    inner_tables: dict[tuple[str, str], Table] = field(default_factory=dict)
    """The tables the ``where`` clause's subqueries read, as they were described."""
    initial_views: list[Any] | None = None
    """A subquery shape's value sets at its snapshot (later ones: ``syncd.view_journal``)."""
    view: ShapeView = field(init=False)
    subquery: bool = field(init=False)
    """The ``where`` has subqueries: the shape is judged by ``syncd.subquery_shape``."""
    schema_header: str = field(init=False)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    created: float = field(default_factory=time.monotonic)
    """When this process created or restored the shape (``time.monotonic``)."""
    last_used: float = field(default_factory=time.monotonic)
    """When a request last asked for the shape (retention removes the longest unused)."""
    readers: int = 0
    """Long-polls held and SSE streams open on the shape now."""
    _open_lsn: int | None = field(default=None, init=False, repr=False)
    """The transaction being appended in pieces, if any."""
    _open_taken: bool = field(default=False, init=False, repr=False)
    _open_entries: list[tuple[int, bytes]] | None = field(default=None, init=False, repr=False)
    """Its pieces so far, when they are collected in memory (snapshot running at the first)."""

    def __post_init__(self) -> None:
        key_columns = self.table.primary_key
        if not any(c.pk_index is not None for c in self.table.columns):
            key_columns = self.selected
        selected = None if self.definition.columns is None else self.selected
        self.view = ShapeView(
            relation=self.definition.relation,
            key_prefix=relation_key_prefix(*self.definition.relation),
            key_columns=key_columns,
            selected=selected,
            where=self.where,
            replica_full=self.definition.replica == "full",
        )
        self.schema_header = self._render_schema()
        self.subquery = self.where is not None and self.where.has_subqueries

    def _render_schema(self) -> str:
        return _schema_header(self.table, self.selected)

    @property
    def gone(self) -> bool:
        """Retired (deleted or invalidated)."""
        return self.status == "gone"

    @property
    def relation_list(self) -> list[str]:
        """``[schema, table]`` as change headers carry it."""
        return [self.definition.schema, self.definition.table]

    @property
    def first_buffered_lsn(self) -> int | None:
        """Commit LSN of the oldest transaction held in memory, if any."""
        return self.buffer[0][0] if self.buffer else None

    def commit(self, lsn: int, xid: int, entries: LogEntries, *, final: bool = True) -> bool:
        """Take one committed transaction's entries; True when the log was appended to.

        A large transaction may come in pieces: every call but the last passes ``final=False``
        (same ``lsn`` and ``xid``, never an empty piece). Whether the shape takes the
        transaction is decided at its first piece; the log shows it once the last is written.
        A shape still taking its snapshot at the first piece collects the pieces in memory
        (then, while they come in, :meth:`finish_snapshot` may apply the earlier transactions).
        """
        open_lsn = self._open_lsn
        if open_lsn != lsn:
            if open_lsn is not None and (not final or self._open_entries is None):
                raise RuntimeError(f"transaction {lsn} while {open_lsn} is not complete")
            if self.status == "snapshotting":
                if final:
                    self.buffer.append((lsn, xid, entries))
                else:
                    self._open_lsn, self._open_taken = lsn, False
                    self._open_entries = list(entries)
                return False
            taken = self._takes(lsn, xid)
            if not final:
                self._open_lsn, self._open_taken = lsn, taken
        else:
            taken = self._open_taken
            collected = self._open_entries
            if final:
                self._open_lsn, self._open_entries = None, None
            if collected is not None:
                collected.extend(entries)
                # Buffered if the snapshot is still running, else applied whole.
                return self.commit(lsn, xid, collected) if final else False
        if not taken or self.status == "gone":
            return False
        self.log.append_transaction(lsn, entries, final=final)
        if final:
            self.notifier.notify()
        return True

    def abandon_pieces(self) -> None:
        """Forget a transaction whose last piece will not come; its pieces leave the log."""
        if self._open_lsn is not None:
            self._open_lsn, self._open_entries = None, None
            self.log.abort_transaction()

    def _takes(self, lsn: int, xid: int) -> bool:
        """Whether the log takes the transaction."""
        if self.status != "ready" or lsn <= self.log.latest_offset.tx:
            return False
        return not self.in_snapshot(lsn, xid)

    def in_snapshot(self, lsn: int, xid: int) -> bool:
        """Whether the snapshot's rows already contain the transaction committed at ``lsn``.

        Only a transaction that commits below :attr:`snapshot_lsn` can be in the snapshot: the
        decision is a pure function of the position, so it needs no state written as the
        stream passes the snapshot, and it is the same after a restart. For metadata that
        lacks the position, the first transaction that started after the snapshot sets it
        (no later commit can be in the snapshot).
        """
        snapshot = self.snapshot
        if snapshot is None or lsn >= self.snapshot_lsn:
            return False
        if snapshot.is_visible(xid):
            return True
        if self.snapshot_lsn == SNAPSHOT_LSN_UNKNOWN and snapshot.is_after(xid):
            self.snapshot_lsn = lsn
        return False

    def finish_snapshot(
        self, info: Snapshot, snapshot_lsn: int, *, meta_saved: bool = False
    ) -> None:
        """Mark the snapshot done and move buffered transactions into the log, in order
        (``snapshot_lsn``: see :attr:`snapshot_lsn`); ``meta_saved``: the caller already made
        :meth:`ready_meta` durable, else the metadata is saved here."""
        self.snapshot = info
        self.snapshot_lsn = snapshot_lsn
        self.status = "ready"
        buffered, self.buffer = self.buffer, []
        for lsn, xid, entries in buffered:
            self.commit(lsn, xid, entries)
        if not meta_saved:
            self.save_meta()
        self.ready.set()
        self.notifier.notify()

    def ready_meta(self, info: Snapshot, snapshot_lsn: int) -> dict[str, Any]:
        """:meth:`meta` as it will be once :meth:`finish_snapshot` has run with these values."""
        meta = self.meta()
        meta.update(status="ready", snapshot_lsn=snapshot_lsn, snapshot=_snapshot_json(info))
        return meta

    def mark_ready(self, info: Snapshot) -> None:
        """Ready, with the snapshot's metadata already stored by the caller (no buffer)."""
        self.snapshot = info
        self.status = "ready"
        self.ready.set()
        self.notifier.notify()

    def fail(self, error: BaseException) -> None:
        """The snapshot could not be taken; waiters see ``failure``."""
        self.failure = error
        self.go_away()

    def go_away(self) -> None:
        """Retire the shape: waiters are woken and see ``status == "gone"``."""
        self.status = "gone"
        self.buffer = []
        self._open_lsn, self._open_entries = None, None
        self.ready.set()
        self.notifier.notify()

    def meta(self) -> dict[str, Any]:
        """What is stored beside the log to restore this shape after a restart."""
        snapshot = self.snapshot
        return {
            "handle": self.handle,
            "definition": self.definition.to_json(),
            "status": self.status,
            "snapshot_lsn": self.snapshot_lsn,
            "snapshot": None if snapshot is None else _snapshot_json(snapshot),
            **({"views": self.initial_views} if self.initial_views is not None else {}),
        }

    def save_meta(self, *, defer: bool = False) -> None:
        """Persist :meth:`meta` atomically (``defer``: at the log's next sync, see
        :meth:`ShapeLog.write_meta`)."""
        self.log.write_meta(self.meta(), defer=defer)


@functools.lru_cache(maxsize=1024)
def _schema_header(table: Table, selected: tuple[str, ...]) -> str:
    """The ``electric-schema`` header of shapes of ``table`` with these columns (the many shapes
    of one table and columns share it)."""
    by_name = table.by_name
    entries = {name: by_name[name].schema_entry() for name in selected}
    return json.dumps(entries, separators=(",", ":"))


def _snapshot_json(snapshot: Snapshot) -> dict[str, Any]:
    return {"xmin": snapshot.xmin, "xmax": snapshot.xmax, "xip": list(snapshot.xip)}


def snapshot_lsn_from_meta(meta: dict[str, Any]) -> int:
    """The stored :attr:`ShapeState.snapshot_lsn`; metadata from before it was stored says
    only whether the stream had passed the snapshot."""
    if "snapshot_lsn" in meta:
        return int(meta["snapshot_lsn"])
    return SNAPSHOT_LSN_UNKNOWN if meta.get("filtering", True) else 0


def snapshot_from_meta(meta: dict[str, Any]) -> Snapshot | None:
    """The stored snapshot visibility info, if any."""
    data = meta.get("snapshot")
    if not data:
        return None
    return Snapshot(int(data["xmin"]), int(data["xmax"]), tuple(int(x) for x in data["xip"]))
