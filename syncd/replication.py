"""The logical replication client: the only owner of the replication socket.

Theory of operation
===================

One :class:`ReplicationStream` reads one logical slot with the ``pgoutput`` plugin and hands
every decoded message to a :class:`ReplicationHandler`, in WAL stream order.

Connection. The stream talks to the walsender through ``psycopg.pq.PGconn`` directly, not
through a psycopg ``Connection``: it connects with ``connect_start``/``connect_poll`` and
``loop.add_reader``/``add_writer``, switches the socket to non-blocking, and sends the
replication commands with ``send_query`` (simple query protocol). The conninfo gets
``replication=database`` and session settings that give every text value a canonical form
(``DateStyle=ISO,DMY``, ``TimeZone=UTC``, ``extra_float_digits=1``, ``IntervalStyle=iso_8601``,
``bytea_output=hex``, client encoding UTF8); ``options`` already in the caller's conninfo are
kept and win.

Setup, on every (re)connect:

1. ``SHOW wal_sender_timeout``: the status interval is capped at a third of it.
   ``IDENTIFY_SYSTEM`` gives the cluster's system identifier and its WAL flush position.
2. The slot is looked up in ``pg_replication_slots``. A slot that can no longer be read
   (``wal_status = 'lost'``, or the previous session ended with the "requested WAL segment has
   already been removed" / "can no longer get changes from replication slot" class of error) is
   dropped. A missing (or just dropped) slot is created with ``CREATE_REPLICATION_SLOT "<slot>"
   LOGICAL pgoutput NOEXPORT_SNAPSHOT``. The publication is *not* created here: the engine owns
   it (and must create it before the slot, or the slot's decoding cannot see it).
3. Slot history (see below): the slot as found (:class:`SlotFound`) is checked against what the
   stream and its handler have confirmed before.
4. ``START_REPLICATION SLOT "<slot>" LOGICAL <lsn> (proto_version ..., publication_names ...)``
   from the confirmed LSN (the slot's own position for a new slot). The result is ``COPY_BOTH``.

Slot history: :mod:`syncd.slot_history` (the theory is there): a slot continues a client's
history only if it was never dropped, recreated or invalidated and is not ahead of the last
position the client confirmed. A handler with an ``on_slot(slot)`` method decides; without
one, a broken history ends :meth:`ReplicationStream.run` with :class:`SlotHistoryLost`.

Read loop. ``get_copy_data(1)`` never blocks. Each XLogData (``w``) message is copied to
``bytes`` once and decoded in place at offset 25 by :class:`~syncd.pgoutput.PgoutputDecoder`;
the message goes straight to ``handler.on_message``. That synchronous part is
:class:`~syncd.message_pump.MessagePump`, which runs until the loop must await something.
Primary keepalives (``k``) raise the received LSN and are answered at once when the server asks
for a reply. When libpq's buffer holds no complete message, the loop tries one cheap
``consume_input()``; if that brings nothing, the socket is drained: the loop calls ``await
handler.on_idle(received_lsn, in_transaction)``, sends a status update if one is due, and waits
for the socket (with a timeout so the status timer fires). While busy, the loop yields to the
event loop every ``yield_every`` messages and calls ``on_idle`` at least every
``idle_interval`` seconds or ``idle_every`` messages, so a long backlog never starves other
tasks or the durability clock.

Which LSN is confirmed. ``on_idle`` returns the LSN up to which the handler's writes are
durable (normally the ``end_lsn`` of the last commit it has made durable). That becomes the
flush and apply position of the standby status updates (``write`` is the highest LSN
received); the server then keeps the slot at that position and, after a reconnect, resends
every transaction that committed at or after it. When ``in_transaction`` is false and the
handler has nothing pending it may return ``received_lsn`` itself (which includes keepalive
``wal_end`` positions) so that the slot moves past WAL that carries no published changes.
The returned LSN is never taken beyond ``received_lsn`` and never moves backwards.
Status updates go out when a keepalive asks, every ``status_interval`` seconds, soon
(``min_status_interval``) after the confirmed LSN advanced, and on :meth:`stop`.

``in_transaction`` is true between Begin and Commit and while a streamed transaction (proto 2
``streaming``) has started but neither committed nor aborted.

Streamed transactions (``streaming``, proto 2+, PG 14+; against an older server the stream
falls back to proto 1 without streaming). Postgres streams a transaction in blocks (Stream
Start ... Stream Stop) once its decoded changes exceed ``logical_decoding_work_mem``, long
before it commits. A handler with an ``on_stream_change(msg, payload)`` method gets every
message of a stream block through it instead of ``on_message``, together with the raw pgoutput
bytes (``payload``, a ``memoryview`` valid only during the call), so that it can spool them
without re-encoding; the block's Stream Start and Stop still go to ``on_message``. Right after a
Stream Commit has been handed over, the stream awaits ``on_idle`` (before reading on), so a
handler can apply the whole transaction there, yielding to the event loop as it goes; while that
call runs the stream keeps sending status updates every ``status_interval``, so the walsender
does not time out however long it takes. A handler with an ``on_session_start()`` method has it
called whenever a session starts streaming: what it holds of transactions not yet committed
(spooled streamed transactions included) will be sent again, from their start.

Disconnects. ``psycopg.OperationalError`` (raised by ``consume_input`` when the socket dies),
an error reported by the server, or the server ending COPY all mean "disconnected": the
connection is closed, the error logged, and after an exponential backoff (``backoff_initial``
doubling to ``backoff_max``, with jitter; reset after a session that streamed for a while) the
stream reconnects and restarts from the confirmed LSN. A transaction cut off by a disconnect
is therefore sent again from its Begin (or its first streamed block, ``first=True``): a
handler must drop the partial transaction when it sees a Begin while one is still open, or a
``first`` StreamStart for an xid it has buffered. Exceptions from the handler, and
:class:`~syncd.pgoutput.PgoutputError` (a stream we cannot decode), are not retried: they
end :meth:`ReplicationStream.run`.

Slot in use. ``START_REPLICATION`` on a slot another walsender streams from fails
(``object_in_use``). A walsender of this stream's own earlier sessions is exiting and is waited
for; one of another process that still holds the slot after ``SLOT_BUSY_GRACE`` seconds of
retries ends :meth:`ReplicationStream.run` with :class:`~syncd.errors.SlotInUse`, whose one-line
message names it (pid, application, client, from ``pg_stat_replication``) and what to do.

Stop. :meth:`ReplicationStream.stop` wakes the loop, which calls ``on_idle`` a last time if
anything arrived since the previous call, sends a final status update, ends COPY and closes
the connection. A stopped stream cannot be restarted; make a new one.

The handler runs on the event loop: ``on_message`` must not block, and while ``on_idle`` is
awaited the socket is not read (that is the back-pressure), so it must finish well within
``wal_sender_timeout`` (except right after a Stream Commit, see above).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final, Protocol

import psycopg
from psycopg import pq
from psycopg.pq.abc import PGconn, PGresult

from syncd.errors import SlotInUse
from syncd.message_pump import (
    BATCH_DONE,
    COPY_ENDED,
    DRAINED,
    REPLY_REQUESTED,
    STREAM_COMMITTED,
    MessagePump,
)
from syncd.pgoutput import (
    Message,
    PgoutputError,
    build_standby_status,
    format_lsn,
)
from syncd.replication_conn import (
    SESSION_OPTIONS,
    ReplicationError,
    ReplicationSettings,
    _describe,
    _parse_duration,
    _text,
    replication_conninfo,
)
from syncd.replication_slots import _slot_unusable, drop_slot, find_slot, slot_holder
from syncd.slot_history import SlotFound, SlotHistoryLost, history_gap

_RANDOM = random.Random()
"""This module's own generator: the process-wide one belongs to the embedding program."""

__all__ = [
    "SESSION_OPTIONS",
    "DispatchingHandler",
    "ReplicationError",
    "ReplicationHandler",
    "ReplicationSettings",
    "ReplicationStream",
    "SlotFound",
    "SlotHandler",
    "SlotHistoryLost",
    "SpoolingHandler",
    "drop_slot",
    "history_gap",
    "replication_conninfo",
]

logger = logging.getLogger("syncd.replication")

_MIN_STREAMING_SERVER: Final = 140000
_OBJECT_IN_USE: Final = "55006"
SLOT_BUSY_GRACE: Final = 2.0
"""Seconds the slot may stay held by a walsender of another process before the stream gives up
with :class:`~syncd.errors.SlotInUse`: one that is exiting (its client was just killed, or its
connection dropped) lets go sooner. A walsender of this stream's own earlier sessions is always
waited for."""


class ReplicationHandler(Protocol):
    """Consumer of the replication stream (see the module docstring for the contract)."""

    def on_message(self, msg: Message) -> None:
        """Every decoded pgoutput message, in stream order."""
        ...

    async def on_idle(self, received_lsn: int, in_transaction: bool) -> int:
        """Make received writes durable; return the LSN that may be confirmed as flushed."""
        ...


class DispatchingHandler(ReplicationHandler, Protocol):
    """A handler that gives its handler per message type (optional): the stream calls those
    directly, the same as ``on_message`` would, and saves a call per message."""

    def message_handlers(self) -> Mapping[type, Callable[[Any], None]]:
        """The handlers by message type; a message of a type not in it is dropped. Read once,
        when the stream is made."""
        ...


class SpoolingHandler(ReplicationHandler, Protocol):
    """A handler that also takes stream blocks raw and hears of new sessions (optional)."""

    def on_stream_change(self, msg: Message, payload: memoryview) -> None:
        """A message inside a Stream Start ... Stop block, with its pgoutput bytes."""
        ...

    def on_session_start(self) -> None:
        """A new session starts: uncommitted transactions will be sent again from the start."""
        ...


class SlotHandler(ReplicationHandler, Protocol):
    """A handler that checks the slot's history itself (optional, see the module docstring)."""

    def on_slot(self, slot: SlotFound) -> bool:
        """The slot as found at session start, before streaming.

        Return ``True`` when the slot's history is broken and everything that depended on the
        old history has been dropped: the stream then starts from the slot's own position.
        """
        ...


class _ServerEndedCopy(Exception):
    """The server ended the COPY BOTH stream without an error."""


class _SlotBusy(ReplicationError):
    """Another process holds the slot, for less than :data:`SLOT_BUSY_GRACE` so far."""


class _StopRequested(Exception):
    """Unwinds connection set-up when :meth:`ReplicationStream.stop` is called."""


_RETRYABLE: Final = (
    psycopg.OperationalError,
    ReplicationError,
    _ServerEndedCopy,
    OSError,
    TimeoutError,
)


class ReplicationStream:
    """Streams one logical slot into a :class:`ReplicationHandler`; reconnects on failure."""

    def __init__(self, settings: ReplicationSettings, handler: ReplicationHandler) -> None:
        self._settings = settings
        self._handler = handler
        self._conninfo = replication_conninfo(settings.conninfo).encode()
        self._pgconn: PGconn | None = None
        self._connected = False
        message_handlers = getattr(handler, "message_handlers", None)
        self._pump = MessagePump(
            handler.on_message,
            getattr(handler, "on_stream_change", None),
            message_handlers() if message_handlers is not None else None,
        )
        """Decodes and dispatches the received messages; keeps the received position."""
        self._confirmed_lsn = 0
        self._sent_flush_lsn = -1
        self._status_interval = settings.status_interval
        self._last_status = 0.0
        self._last_idle = 0.0
        self._idle_received = -1
        self._stop_requested = False
        self._stop_event = asyncio.Event()
        self._running = False
        self._run_task: asyncio.Task[None] | None = None
        self._done = asyncio.Event()
        self._waiter: asyncio.Future[None] | None = None
        self.keepalive_replies = 0
        """How many keepalives that asked for a reply were answered (all sessions)."""
        self.reconnects = 0
        """How many times a session failed and the stream reconnected."""
        self.last_error: BaseException | None = None
        """The error that ended the latest connection attempt or session, if any."""
        self.slot: SlotFound | None = None
        """The slot as the latest session found it."""
        self.history_breaks = 0
        """How many times a session found the slot's history broken."""
        self._unusable: str | None = None
        """Why the slot cannot be read any more (its WAL is gone): drop it at the next setup."""
        self._has_history = False
        """A session has streamed: :attr:`confirmed_lsn` is a position of this slot's history."""
        self._own_pids: set[int] = set()
        """The backend pids of this stream's sessions: a slot one of them holds is released."""
        self._busy_since: tuple[int, float] | None = None
        """The other process found holding the slot, and since when (monotonic)."""

    # --- public state -------------------------------------------------------------------

    @property
    def confirmed_lsn(self) -> int:
        """The flush position reported (or about to be reported) to the server."""
        return self._confirmed_lsn

    @property
    def received_lsn(self) -> int:
        """The highest WAL position received (XLogData start or keepalive ``wal_end``)."""
        return self._pump.received

    @property
    def connected(self) -> bool:
        """Whether the stream is currently in COPY BOTH mode with the server."""
        return self._connected

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction (or a streamed one) is open in the stream."""
        return self._pump.in_transaction

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Replicate until :meth:`stop` is called, reconnecting after failures."""
        if self._running:
            raise RuntimeError("ReplicationStream.run() is already running")
        self._running = True
        self._run_task = asyncio.current_task()
        self._done.clear()
        settings = self._settings
        delay = settings.backoff_initial
        try:
            while not self._stop_requested:
                try:
                    await self._session()
                    break  # _session() returns only after stop()
                except _StopRequested:
                    break
                except _RETRYABLE as exc:
                    self.last_error = exc
                    if self._stop_requested:
                        break
                    if _slot_unusable(exc):
                        self._unusable = _describe(exc)
                        logger.error(
                            "replication slot %s: its WAL is gone, every change since %s is "
                            "lost: %s",
                            settings.slot,
                            format_lsn(self._confirmed_lsn),
                            self._unusable,
                        )
                    streamed_since = self._streaming_since
                    if streamed_since is not None and time.monotonic() - streamed_since >= 1.0:
                        delay = settings.backoff_initial  # it worked for a while: start over
                    pause = min(delay * _RANDOM.uniform(0.75, 1.25), settings.backoff_max)
                    logger.log(
                        logging.INFO if isinstance(exc, _SlotBusy) else logging.WARNING,
                        "replication slot %s: %s: %s; reconnecting in %.2fs",
                        settings.slot,
                        "disconnected" if streamed_since is not None else "cannot connect",
                        _describe(exc),
                        pause,
                    )
                    delay = min(delay * 2, settings.backoff_max)
                    self.reconnects += 1
                finally:
                    self._close()
                await self._sleep(pause)
        finally:
            self._running = False
            self._run_task = None
            self._done.set()
            logger.info("replication slot %s: stopped", settings.slot)

    async def stop(self) -> None:
        """Stop: final status update, end COPY, close; returns when :meth:`run` has returned."""
        self._stop_requested = True
        self._stop_event.set()
        self._wake()
        if self._running and asyncio.current_task() is not self._run_task:
            await self._done.wait()

    # --- one connection -----------------------------------------------------------------

    _streaming_since: float | None = None

    async def _session(self) -> None:
        """Connect, set up and stream until stop (returns) or failure (raises)."""
        self._streaming_since = None
        pgconn = await self._connect()
        self._pgconn = pgconn
        self._own_pids.add(pgconn.backend_pid)
        await self._setup(pgconn)
        start_lsn = self._confirmed_lsn
        command = self._settings.start_command(start_lsn, pgconn.server_version)
        try:
            results = await self._command(pgconn, command)
        except ReplicationError as exc:
            if exc.sqlstate == _OBJECT_IN_USE and await self._held_elsewhere(pgconn):
                raise _SlotBusy(str(exc), exc.sqlstate) from exc
            raise
        self._busy_since = None
        if not results or results[-1].status != pq.ExecStatus.COPY_BOTH:
            raise ReplicationError("START_REPLICATION did not enter COPY BOTH mode")
        self._connected = True
        self._has_history = True
        self._streaming_since = time.monotonic()
        self._reset_stream_state()
        on_session_start = getattr(self._handler, "on_session_start", None)
        if on_session_start is not None:
            on_session_start()
        logger.info(
            "replication slot %s: streaming from %s (backend pid %d)",
            self._settings.slot,
            format_lsn(start_lsn),
            pgconn.backend_pid,
        )
        await self._read_loop(pgconn)
        await self._shutdown(pgconn)

    async def _held_elsewhere(self, pgconn: PGconn) -> bool:
        """START_REPLICATION found the slot active: whether another process holds it (the
        caller retries), or give up with :class:`SlotInUse` once the same one has held it for
        :data:`SLOT_BUSY_GRACE`.
        """
        slot = self._settings.slot
        holder = await slot_holder(self._command, pgconn, slot)
        if holder is None or holder.pid in self._own_pids:
            self._busy_since = None
            return False
        now = time.monotonic()
        if self._busy_since is None or self._busy_since[0] != holder.pid:
            self._busy_since = (holder.pid, now)
        elif now - self._busy_since[1] >= SLOT_BUSY_GRACE:
            raise SlotInUse(holder.in_use_message(slot))
        return True

    async def _connect(self) -> PGconn:
        pgconn = pq.PGconn.connect_start(self._conninfo)
        try:
            async with asyncio.timeout(self._settings.connect_timeout):
                while True:
                    status = pgconn.connect_poll()
                    if status == pq.PollingStatus.OK:
                        break
                    if status == pq.PollingStatus.READING:
                        await self._wait(pgconn.socket)
                    elif status == pq.PollingStatus.WRITING:
                        await self._wait(pgconn.socket, write=True)
                    else:
                        raise psycopg.OperationalError(pgconn.get_error_message())
                    if self._stop_requested:
                        raise _StopRequested
            pgconn.nonblocking = 1
        except BaseException:
            pgconn.finish()
            raise
        return pgconn

    async def _setup(self, pgconn: PGconn) -> None:
        settings = self._settings
        (show,) = await self._command(pgconn, b"SHOW wal_sender_timeout")
        timeout = _parse_duration(_text(show, 0, 0))
        interval = settings.status_interval
        if timeout and settings.cap_status_interval:
            interval = min(interval, timeout / 3)
        self._status_interval = interval

        (ident,) = await self._command(pgconn, b"IDENTIFY_SYSTEM")
        system_id = _text(ident, 0, 0)
        slot = await find_slot(self._command, pgconn, settings.slot, system_id, self._unusable)
        self.slot = slot
        self._unusable = None
        self._check_history(slot)

    def _check_history(self, slot: SlotFound) -> None:
        """Continue the slot's history, or start over from its position (or raise)."""
        on_slot = getattr(self._handler, "on_slot", None)
        if on_slot is not None:
            starts_over = bool(on_slot(slot))
        else:
            known = self._confirmed_lsn if self._has_history else None
            gap = history_gap(slot, known)
            if gap is not None:
                self.history_breaks += 1
                logger.error(
                    "replication slot %s: its history is broken, changes were lost: %s",
                    slot.name,
                    gap,
                )
                raise SlotHistoryLost(f"replication slot {slot.name}: {gap}")
            starts_over = False
        if starts_over:
            self.history_breaks += 1
            self._confirmed_lsn = slot.confirmed_lsn
            self._pump.received = slot.confirmed_lsn
        else:
            self._confirmed_lsn = max(self._confirmed_lsn, slot.confirmed_lsn)

    def _reset_stream_state(self) -> None:
        self._pump.start_session()
        self._idle_received = -1
        self._last_status = self._last_idle = time.monotonic()
        self._sent_flush_lsn = -1

    # --- streaming ----------------------------------------------------------------------

    async def _read_loop(self, pgconn: PGconn) -> None:
        """Read and dispatch messages until stop (returns) or disconnect (raises)."""
        pump = self._pump
        yield_every = self._settings.yield_every
        run = pump.run
        while not self._stop_requested:
            event = run(pgconn, yield_every)
            if event == DRAINED:
                await self._drained(pgconn)
                if not self._stop_requested:
                    pgconn.consume_input()
            elif event == BATCH_DONE:
                await self._yield_busy()
            elif event == STREAM_COMMITTED:
                await self._idle(keep_alive=True)
                if pump.count_stream_commit(yield_every):
                    await self._yield_busy()
            elif event == REPLY_REQUESTED:
                self.keepalive_replies += 1
                await self._send_status()
            elif event == COPY_ENDED:
                await self._copy_ended(pgconn)
            else:
                raise psycopg.OperationalError(pgconn.get_error_message())

    async def _yield_busy(self) -> None:
        """A batch of messages was handled: housekeeping, then let other tasks run."""
        await self._busy_housekeeping()
        await asyncio.sleep(0)

    async def _drained(self, pgconn: PGconn) -> None:
        """No complete message is buffered: idle call, status, then wait for the socket."""
        now = time.monotonic()
        settings = self._settings
        if (
            self._pump.since_idle
            or self._pump.received != self._idle_received
            or (
                now - self._last_idle >= settings.idle_interval
                and self._confirmed_lsn < self._pump.received
            )
        ):
            await self._idle()
            now = time.monotonic()
        if self._status_due(now):
            await self._send_status()
            now = time.monotonic()
        if self._stop_requested:
            return
        deadline = self._last_status + self._status_interval
        if self._confirmed_lsn != self._sent_flush_lsn:
            deadline = min(deadline, self._last_status + settings.min_status_interval)
        if self._confirmed_lsn < self._pump.received:
            deadline = min(deadline, self._last_idle + settings.idle_interval)
        await self._wait(pgconn.socket, max_seconds=max(deadline - now, 0.001))

    async def _busy_housekeeping(self) -> None:
        now = time.monotonic()
        if (
            self._pump.since_idle >= self._settings.idle_every
            or now - self._last_idle >= self._settings.idle_interval
        ):
            await self._idle()
            now = time.monotonic()
        if self._status_due(now):
            await self._send_status()

    async def _idle(self, *, keep_alive: bool = False) -> None:
        received = self._pump.received
        call = self._handler.on_idle(received, self.in_transaction)
        lsn = await (self._keeping_alive(call) if keep_alive else call)
        self._pump.since_idle = 0
        self._idle_received = received
        self._last_idle = time.monotonic()
        lsn = min(lsn, received)
        if lsn > self._confirmed_lsn:
            self._confirmed_lsn = lsn

    async def _keeping_alive(self, call: Coroutine[Any, Any, int]) -> int:
        """Await ``call``, sending a status update every ``status_interval`` meanwhile (the
        walsender ends a connection that sends nothing for ``wal_sender_timeout``)."""
        task = asyncio.ensure_future(call)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self._status_interval)
                if done:
                    return task.result()
                await self._send_status()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def _status_due(self, now: float) -> bool:
        since = now - self._last_status
        if since >= self._status_interval:
            return True
        return (
            self._confirmed_lsn != self._sent_flush_lsn
            and since >= self._settings.min_status_interval
        )

    async def _send_status(self) -> None:
        pgconn = self._pgconn
        if pgconn is None:
            return
        flush = self._confirmed_lsn
        msg = build_standby_status(max(self._pump.received, flush), flush, flush)
        while pgconn.put_copy_data(msg) == 0:  # only when non-blocking and libpq's buffer is full
            await self._wait(pgconn.socket, write=True, interruptible=False)
        await self._flush(pgconn)
        self._last_status = time.monotonic()
        self._sent_flush_lsn = flush

    async def _copy_ended(self, pgconn: PGconn) -> None:
        """The server ended COPY: raise its error, or :class:`_ServerEndedCopy`."""
        self._connected = False
        await self._results(pgconn, interruptible=False)
        raise _ServerEndedCopy("the server ended the replication stream")

    async def _shutdown(self, pgconn: PGconn) -> None:
        """After stop(): last idle call, final status, end COPY and drain (best effort)."""
        if self._pump.since_idle or self._pump.received != self._idle_received:
            await self._idle()
        try:
            async with asyncio.timeout(self._settings.stop_timeout):
                await self._send_status()
                pgconn.put_copy_end()
                await self._flush(pgconn)
                while True:
                    n, _ = pgconn.get_copy_data(1)
                    if n == -1:
                        break
                    if n == 0:
                        await self._wait(pgconn.socket, interruptible=False)
                        pgconn.consume_input()
                    elif n < -1:
                        raise psycopg.OperationalError(pgconn.get_error_message())
                await self._results(pgconn, interruptible=False)
        except (*_RETRYABLE, PgoutputError) as exc:
            logger.info("replication slot %s: unclean stop: %s", self._settings.slot, exc)
        logger.info(
            "replication slot %s: stopping, confirmed %s",
            self._settings.slot,
            format_lsn(self._confirmed_lsn),
        )

    # --- low-level helpers --------------------------------------------------------------

    async def _command(self, pgconn: PGconn, command: bytes) -> list[PGresult]:
        """Run a replication command or simple query; raise ReplicationError on error."""
        pgconn.send_query(command)
        await self._flush(pgconn)
        return await self._results(pgconn)

    async def _results(self, pgconn: PGconn, *, interruptible: bool = True) -> list[PGresult]:
        results: list[PGresult] = []
        error: PGresult | None = None
        while True:
            while pgconn.is_busy():
                await self._wait(pgconn.socket, interruptible=interruptible)
                if interruptible and self._stop_requested:
                    raise _StopRequested
                pgconn.consume_input()
            res = pgconn.get_result()
            if res is None:
                break
            if res.status == pq.ExecStatus.FATAL_ERROR:
                error = error or res
            results.append(res)
            if res.status in (pq.ExecStatus.COPY_BOTH, pq.ExecStatus.COPY_OUT):
                break
        if error is not None:
            sqlstate = error.error_field(pq.DiagnosticField.SQLSTATE)
            raise ReplicationError(
                error.get_error_message(), sqlstate.decode() if sqlstate else None
            )
        return results

    async def _flush(self, pgconn: PGconn) -> None:
        # Not interruptible: a half-sent message would corrupt the stream, and this is short.
        while pgconn.flush() == 1:
            await self._wait(pgconn.socket, write=True, interruptible=False)

    async def _wait(
        self,
        fd: int,
        *,
        write: bool = False,
        max_seconds: float | None = None,
        interruptible: bool = True,
    ) -> None:
        """Wait until ``fd`` is ready, ``max_seconds`` passed, or (if interruptible) stop()."""
        if interruptible and self._stop_requested:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        if write:
            loop.add_writer(fd, wake)
        else:
            loop.add_reader(fd, wake)
        timer = loop.call_later(max_seconds, wake) if max_seconds is not None else None
        if interruptible:
            self._waiter = future
        try:
            await future
        finally:
            if interruptible:
                self._waiter = None
            if timer is not None:
                timer.cancel()
            if write:
                loop.remove_writer(fd)
            else:
                loop.remove_reader(fd)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop_event.wait(), seconds)
        except TimeoutError:
            pass

    def _close(self) -> None:
        self._connected = False
        pgconn, self._pgconn = self._pgconn, None
        if pgconn is not None:
            pgconn.finish()
