"""The logical replication messages of the ``pgoutput`` plugin, as immutable values.

Layer: ``syncd.pgoutput`` (pure: no I/O, no asyncio, no psycopg).

Every class is a frozen ``msgspec.Struct`` with ``gc=False``: in CPython that is the cheapest
immutable record to construct (about 3x faster than a ``NamedTuple``), and none of these
values can take part in a reference cycle, so the cycle collector need not track them.

Conventions:

* LSNs are plain ``int`` (64-bit WAL positions); :func:`syncd.pgoutput.copyboth.format_lsn`
  renders them as ``X/Y``.
* Timestamps are the raw wire value: ``int`` microseconds since 2000-01-01 00:00 UTC;
  :func:`pg_timestamp_to_datetime` converts one.
* Row images ("tuple data") are ``tuple``\\ s with one entry per column of the relation:
  ``str`` for a text value, ``None`` for SQL NULL, :data:`UNCHANGED_TOAST` for a TOASTed
  value that did not change (the server does not resend it), ``bytes`` for a value sent in
  binary format (only with the ``binary`` option).
* Changes decoded inside a Stream Start ... Stream Stop block carry an xid in ``xid``: that of
  the (sub)transaction that made the change (pgoutput writes ``change->txn->xid``), which is the
  streamed top-level transaction's own xid only for changes made outside any savepoint. A
  :class:`StreamAbort` with ``subxid != xid`` drops the changes tagged with that subxid (and
  those of its own subtransactions, which follow them). Outside streaming ``xid`` is ``None``
  (the transaction is the one opened by the preceding :class:`Begin`).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

import msgspec

__all__ = [
    "PG_EPOCH",
    "UNCHANGED_TOAST",
    "Begin",
    "Commit",
    "Delete",
    "Insert",
    "LogicalMessage",
    "Message",
    "Origin",
    "Relation",
    "RelationColumn",
    "RowData",
    "StreamAbort",
    "StreamCommit",
    "StreamStart",
    "StreamStop",
    "Truncate",
    "Type",
    "UnchangedToast",
    "Update",
    "Value",
    "pg_timestamp_to_datetime",
]


class UnchangedToast(enum.Enum):
    """Marker type of :data:`UNCHANGED_TOAST` (an enum so the singleton is typed exactly)."""

    UNCHANGED_TOAST = "u"

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST: Final = UnchangedToast.UNCHANGED_TOAST
"""Column value of an unchanged TOASTed column (tuple kind ``'u'``); compare with ``is``."""

Value = str | bytes | None | Literal[UnchangedToast.UNCHANGED_TOAST]
"""One column value of a row image."""

RowData = tuple[Value, ...]
"""A row image: one :data:`Value` per column, in the relation's column order."""

PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
"""Origin of Postgres wire timestamps."""


def pg_timestamp_to_datetime(us: int) -> datetime:
    """Convert a wire timestamp (microseconds since 2000-01-01 UTC) to an aware datetime."""
    return PG_EPOCH + timedelta(microseconds=us)


class Begin(msgspec.Struct, frozen=True, gc=False):
    """``B``: start of a (non-streamed) transaction."""

    final_lsn: int
    """LSN of the transaction's commit record."""
    commit_time: int
    xid: int


class Commit(msgspec.Struct, frozen=True, gc=False):
    """``C``: end of the transaction opened by the last :class:`Begin`."""

    flags: int
    commit_lsn: int
    end_lsn: int
    """LSN just past the commit record: the position to confirm once the transaction is durable."""
    commit_time: int


class Origin(msgspec.Struct, frozen=True, gc=False):
    """``O``: the transaction was replayed from another node (replication origin ``name``)."""

    commit_lsn: int
    """The commit LSN on the origin server."""
    name: str


class RelationColumn(msgspec.Struct, frozen=True, gc=False):
    """One column of a :class:`Relation`."""

    flags: int
    """Bit 1 set: the column is part of the replica identity (key)."""
    name: str
    type_oid: int
    type_mod: int

    @property
    def is_key(self) -> bool:
        """Whether the column belongs to the replica identity."""
        return bool(self.flags & 1)


class Relation(msgspec.Struct, frozen=True, gc=False):
    """``R``: describes a table before the first change of it in a session (and after DDL)."""

    oid: int
    namespace: str
    """Schema name; ``"pg_catalog"`` is sent as an empty string by the server."""
    name: str
    replica_identity: str
    """``'d'`` default (primary key), ``'n'`` nothing, ``'f'`` full, ``'i'`` index."""
    columns: tuple[RelationColumn, ...]
    xid: int | None = None


class Type(msgspec.Struct, frozen=True, gc=False):
    """``Y``: describes a non-built-in data type (e.g. an enum) used by a following relation."""

    oid: int
    namespace: str
    name: str
    xid: int | None = None


class Insert(msgspec.Struct, frozen=True, gc=False):
    """``I``: a new row."""

    oid: int
    new: RowData
    xid: int | None = None


class Update(msgspec.Struct, frozen=True, gc=False):
    """``U``: a changed row.

    ``old`` is the old key (``old_kind == 'K'``, only when the key changed; non-key columns are
    ``None``), the whole old row (``old_kind == 'O'``, REPLICA IDENTITY FULL), or ``None``
    (``old_kind is None``).
    """

    oid: int
    old: RowData | None
    new: RowData
    old_kind: Literal["K", "O"] | None
    xid: int | None = None


class Delete(msgspec.Struct, frozen=True, gc=False):
    """``D``: a deleted row; ``old`` holds its key (``'K'``) or whole old row (``'O'``)."""

    oid: int
    old: RowData
    old_kind: Literal["K", "O"]
    xid: int | None = None


class Truncate(msgspec.Struct, frozen=True, gc=False):
    """``T``: the listed relations were truncated."""

    options: int
    """Bit 1: ``CASCADE``; bit 2: ``RESTART IDENTITY``."""
    oids: tuple[int, ...]
    xid: int | None = None

    @property
    def cascade(self) -> bool:
        """Whether ``TRUNCATE ... CASCADE`` was used."""
        return bool(self.options & 1)

    @property
    def restart_identity(self) -> bool:
        """Whether ``TRUNCATE ... RESTART IDENTITY`` was used."""
        return bool(self.options & 2)


class LogicalMessage(msgspec.Struct, frozen=True, gc=False):
    """``M``: a ``pg_logical_emit_message`` (sent only with the ``messages`` option)."""

    flags: int
    """Bit 1 set: transactional (sent inside its transaction)."""
    lsn: int
    prefix: str
    content: bytes
    xid: int | None = None

    @property
    def transactional(self) -> bool:
        """Whether the message was emitted as part of a transaction."""
        return bool(self.flags & 1)


class StreamStart(msgspec.Struct, frozen=True, gc=False):
    """``S`` (proto 2+): a block of changes of the in-progress transaction ``xid`` follows."""

    xid: int
    first: bool
    """Whether this is the first block streamed for ``xid``."""


class StreamStop(msgspec.Struct, frozen=True, gc=False):
    """``E`` (proto 2+): end of the current streamed block."""


class StreamCommit(msgspec.Struct, frozen=True, gc=False):
    """``c`` (proto 2+): the streamed transaction ``xid`` committed."""

    xid: int
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: int


class StreamAbort(msgspec.Struct, frozen=True, gc=False):
    """``A`` (proto 2+): the streamed (sub)transaction aborted; drop its streamed changes.

    ``subxid == xid`` means the whole transaction aborted, otherwise only that subtransaction.
    ``abort_lsn``/``abort_time`` are only sent with proto 4 and parallel streaming.
    """

    xid: int
    subxid: int
    abort_lsn: int | None = None
    abort_time: int | None = None


Message = (
    Begin
    | Commit
    | Origin
    | Relation
    | Type
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
)
"""Any decoded pgoutput message."""
