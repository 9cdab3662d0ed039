"""Slot history: whether the slot a session found continues what the client confirmed on it.

Layer: ``syncd`` (pure: no I/O). :mod:`syncd.replication` looks the slot up and hands a
:class:`SlotFound` to the handler or to :func:`history_gap`.

Theory of operation
===================

Slot history. Postgres keeps a slot at the flush position the client confirmed and sends every
transaction that commits after it; a slot therefore continues a client's history only if it
was never dropped, recreated or invalidated, and if it is not ahead of the last position the
client confirmed (a slot may lag behind it: after a crash of Postgres it resumes from its last
checkpointed position and sends transactions again, which a handler skips). When a slot
history is broken, every transaction between the old slot's position and the new slot's start
is gone for good; :func:`history_gap` names the cases (slot dropped and created afresh, WAL
removed, slot ahead of the confirmed position, server WAL behind it, another cluster). A
handler with an ``on_slot(slot)`` method decides with what it has made durable (it may know
more than this process, e.g. after a restart): it returns ``True`` when it has dropped
everything that depended on the old history, and the stream then starts over from the new
slot's own position, so that nothing is ever confirmed across the gap as if it continued the
old history. A handler without ``on_slot`` cannot do that: when the stream finds its slot
lost, or, having streamed in an earlier session, finds the history broken,
:meth:`ReplicationStream.run` ends with :class:`SlotHistoryLost`. Either way the break is
logged at ERROR.
"""

from __future__ import annotations

from dataclasses import dataclass

from syncd.pgoutput import format_lsn

__all__ = ["SlotFound", "SlotHistoryLost", "history_gap"]


@dataclass(frozen=True)
class SlotFound:
    """The replication slot as a session found it, before it started streaming."""

    name: str
    confirmed_lsn: int
    """The slot's ``confirmed_flush_lsn``: where the server resumes sending."""
    restart_lsn: int | None
    wal_status: str | None
    """``pg_replication_slots.wal_status`` (``None`` before Postgres 13)."""
    wal_end: int
    """The server's WAL position when the slot was looked at."""
    system_id: str | None = None
    """The cluster's system identifier (``IDENTIFY_SYSTEM``), when known."""
    created: bool = False
    """The slot did not exist (or was unusable and dropped) and has been created now."""
    lost: str | None = None
    """Why an existing slot could not be used and was dropped (then ``created`` is true)."""


def history_gap(
    slot: SlotFound,
    confirmed_lsn: int | None,
    *,
    system_id: str | None = None,
    slot_name: str | None = None,
) -> str | None:
    """Why ``slot`` does not continue a history confirmed up to ``confirmed_lsn``, or ``None``.

    ``confirmed_lsn`` is the last flush position the client confirmed on the slot (``None``
    when it has no history: then only a lost slot is a break). ``system_id`` and ``slot_name``
    are those of the client's history, when it knows them.
    """
    if slot.lost is not None:
        return f"the slot could no longer be read ({slot.lost}): a new slot starts a new history"
    if confirmed_lsn is None:
        return None
    if slot_name is not None and slot_name != slot.name:
        return f"the history belongs to slot {slot_name}, not {slot.name}"
    if system_id is not None and slot.system_id is not None and system_id != slot.system_id:
        return (
            f"the server is another cluster (system identifier {slot.system_id}, "
            f"the history's is {system_id})"
        )
    if slot.created:
        return "the slot was gone and has been created afresh"
    if slot.confirmed_lsn > confirmed_lsn:
        return (
            f"the slot is at {format_lsn(slot.confirmed_lsn)}, ahead of the "
            f"{format_lsn(confirmed_lsn)} confirmed on it: it was dropped and created afresh "
            "or moved on by another client"
        )
    if slot.wal_end < confirmed_lsn:
        return (
            f"the server's WAL ends at {format_lsn(slot.wal_end)}, before the "
            f"{format_lsn(confirmed_lsn)} confirmed on the slot: the server was restored "
            "from a backup or is another server"
        )
    return None


class SlotHistoryLost(Exception):
    """The slot's history broke (see :func:`history_gap`) and the handler cannot start over."""
