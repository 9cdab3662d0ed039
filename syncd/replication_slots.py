"""Replication slot management: finding the slot at session start, dropping it when its WAL is
gone, creating it when missing, naming the process that holds it (:func:`slot_holder`), and
dropping it for good (:func:`drop_slot`).

Layer: ``syncd`` (asyncio, psycopg). The commands go over the stream's replication connection
(:class:`~syncd.replication.ReplicationStream` passes its command function); :func:`drop_slot`
uses an ordinary connection of its own. The publication is not managed here: the engine owns it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq.abc import PGconn, PGresult

from syncd.pgoutput import parse_lsn
from syncd.replication_conn import ReplicationError, _quote_ident, _quote_literal, _text
from syncd.slot_history import SlotFound

__all__ = ["SlotHolder", "drop_slot", "find_slot", "slot_holder"]

logger = logging.getLogger("syncd.replication")
"""The replication stream's logger (shared by its modules, so operators see one name)."""

Command = Callable[[PGconn, bytes], Awaitable[list[PGresult]]]
"""Sends one replication command and returns its results (the stream's ``_command``)."""

_DUPLICATE_OBJECT: Final = "42710"
_UNDEFINED_FILE: Final = "58P01"
"""``requested WAL segment ... has already been removed``."""
_NOT_IN_PREREQUISITE_STATE: Final = "55000"
_SLOT_UNUSABLE_TEXTS: Final = (
    "has already been removed",
    "can no longer get changes from replication slot",
    "can no longer access replication slot",
    "has been invalidated",
)


def _slot_unusable(exc: BaseException) -> bool:
    """Whether ``exc`` says the slot's WAL is gone (the slot can never be read again)."""
    if not isinstance(exc, ReplicationError):
        return False
    text = str(exc)
    if exc.sqlstate == _UNDEFINED_FILE:
        return True
    return exc.sqlstate in (_NOT_IN_PREREQUISITE_STATE, None) and any(
        part in text for part in _SLOT_UNUSABLE_TEXTS
    )


async def find_slot(
    command: Command, pgconn: PGconn, name: str, system_id: str | None, unusable: str | None
) -> SlotFound:
    """Look the slot up; drop it if unusable, create it if missing.

    ``unusable`` says why the previous session found the slot's WAL gone (then it is dropped).
    """
    found = await _slot_row(command, pgconn, name)
    lost = unusable
    if found is not None and found[2] == "lost" and lost is None:
        lost = "wal_status is 'lost': the WAL it needed was removed"
    if found is not None and lost is not None:
        drop = f"DROP_REPLICATION_SLOT {_quote_ident(name)} WAIT".encode()
        await command(pgconn, drop)
        logger.error("replication slot %s: dropped, it can no longer be read: %s", name, lost)
        found = None
    created = False
    if found is None:
        create = (
            f"CREATE_REPLICATION_SLOT {_quote_ident(name)} LOGICAL pgoutput NOEXPORT_SNAPSHOT"
        ).encode()
        try:
            await command(pgconn, create)
            created = True
            logger.info("replication slot %s: created", name)
        except ReplicationError as exc:
            if exc.sqlstate != _DUPLICATE_OBJECT:
                raise
        found = await _slot_row(command, pgconn, name)
        if found is None:
            raise ReplicationError(f"replication slot {name} vanished while being set up")
    confirmed, restart, wal_status, wal_end = found
    return SlotFound(
        name=name,
        confirmed_lsn=confirmed,
        restart_lsn=restart,
        wal_status=wal_status,
        wal_end=wal_end,
        system_id=system_id,
        created=created,
        lost=lost,
    )


async def _slot_row(
    command: Command, pgconn: PGconn, name: str
) -> tuple[int, int | None, str | None, int] | None:
    """``(confirmed_flush_lsn, restart_lsn, wal_status, server WAL position)`` or None."""
    wal_status = "wal_status" if pgconn.server_version >= 130000 else "NULL"
    wal_end = (
        "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END"
    )
    query = (
        f"SELECT confirmed_flush_lsn::text, restart_lsn::text, {wal_status}::text, "
        f"({wal_end})::text FROM pg_replication_slots "
        f"WHERE slot_name = {_quote_literal(name)}"
    ).encode()
    (res,) = await command(pgconn, query)
    if res.ntuples != 1:
        return None
    confirmed = _text(res, 0, 0)
    restart = _text(res, 0, 1)
    end = _text(res, 0, 3)
    return (
        parse_lsn(confirmed) if confirmed else 0,
        parse_lsn(restart) if restart else None,
        _text(res, 0, 2),
        parse_lsn(end) if end else 0,
    )


@dataclass(frozen=True)
class SlotHolder:
    """The walsender that holds a slot, as ``pg_stat_replication`` shows it (the details are
    ``None`` where the role may not see them)."""

    pid: int
    application_name: str | None
    client: str | None
    """The client's address, ``local socket`` for a unix socket."""
    since: str | None
    """When its connection started."""

    def in_use_message(self, slot: str) -> str:
        """One line: who holds ``slot`` and what to do about it."""
        details = [
            f"application {self.application_name}" if self.application_name else None,
            f"client {self.client}" if self.client else None,
            f"connected since {self.since}" if self.since else None,
        ]
        shown = ", ".join(d for d in details if d)
        return (
            f"replication slot {slot} is in use by another process: walsender pid {self.pid}"
            + (f" ({shown})" if shown else "")
            + ". Stop that process, or give this syncd a slot of its own (--slot / SYNCD_SLOT) "
            "and its own storage directory. If that process is gone, Postgres frees the slot "
            f"within wal_sender_timeout, or at once with SELECT pg_terminate_backend({self.pid})"
        )


async def slot_holder(command: Command, pgconn: PGconn, name: str) -> SlotHolder | None:
    """The walsender streaming from slot ``name``, or None when the slot is free."""
    query = (
        "SELECT s.active_pid, r.application_name::text,"
        " CASE WHEN r.pid IS NULL THEN NULL"
        " ELSE coalesce(host(r.client_addr), 'local socket') END,"
        " date_trunc('second', r.backend_start)::text"
        " FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid"
        f" WHERE s.slot_name = {_quote_literal(name)} AND s.active_pid IS NOT NULL"
    ).encode()
    (res,) = await command(pgconn, query)
    if res.ntuples != 1:
        return None
    pid = _text(res, 0, 0)
    if pid is None:
        return None
    return SlotHolder(int(pid), _text(res, 0, 1) or None, _text(res, 0, 2), _text(res, 0, 3))


async def drop_slot(
    conninfo: str, slot: str, *, terminate: bool = False, wait: float = 10.0
) -> bool:
    """Drop replication slot ``slot`` if it exists; return whether it was dropped.

    A slot still held by an exiting walsender is retried for ``wait`` seconds; with
    ``terminate=True`` the walsender holding it is terminated first.
    """
    deadline = time.monotonic() + wait
    params = conninfo_to_dict(conninfo)
    params.pop("replication", None)
    admin = make_conninfo("", **params)
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
        while True:
            if terminate:
                await conn.execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                    " WHERE slot_name = %s AND active_pid IS NOT NULL",
                    (slot,),
                )
            try:
                cur = await conn.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                    " WHERE slot_name = %s",
                    (slot,),
                )
                return len(await cur.fetchall()) > 0
            except psycopg.errors.ObjectInUse:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.05)
