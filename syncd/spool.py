"""On-disk spool of one streamed (in-progress) transaction's pgoutput messages.

Layer: ``syncd`` (file I/O, synchronous, event loop thread only).

With pgoutput streaming (proto 2+), Postgres sends a large transaction in blocks while it is
still running and only later says whether it committed (Stream Commit) or aborted (Stream
Abort). :class:`TransactionSpool` keeps the raw pgoutput bytes of the messages of one such
transaction, in stream order, in one file (``<dir>/<xid>.bin``), so memory use does not depend
on the transaction's size. Record format, big-endian::

    length:u32  payload[length]

``payload`` is the message exactly as received inside a stream block (tag, xid, body), so it is
decoded again with :meth:`syncd.pgoutput.PgoutputDecoder.decode_streamed` when replayed.

Subtransactions. Each streamed change carries the xid of the (sub)transaction that made it. A
Stream Abort with ``subxid != xid`` (``ROLLBACK TO SAVEPOINT``) must drop exactly that
subtransaction's changes and those of its own subtransactions. Subtransactions nest, and
Postgres streams changes in WAL order and sends the abort of a subtransaction only once it has
decoded the abort record, after which no change of it or of its children can follow; so every
record from the subtransaction's first change on belongs to it or to its children, and the spool
is cut at the position of that first change (as Postgres' own apply worker does). The spool
remembers the first position of each subxid it has seen (a few dozen bytes per subtransaction).

Relation messages are kept (replayed in order) but do not count as a subtransaction's first
change: one cut off with an aborted subtransaction is appended again after the cut, since
pgoutput does not send a relation twice within one streamed transaction and the changes after
the cut may need it.

The spool is scratch space: nothing is fsynced, and the engine deletes every spool at start-up
(Postgres sends an uncommitted streamed transaction again, from its first block, after a
reconnect or crash).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Final

__all__ = ["TransactionSpool"]

_LENGTH: Final = struct.Struct(">I")
_WRITE_BUFFER: Final = 1 << 20
_READ_BUFFER: Final = 1 << 20


class TransactionSpool:
    """The spooled messages of one streamed transaction (see the module docstring)."""

    def __init__(self, directory: Path, xid: int) -> None:
        self.xid = xid
        self.path = directory / f"{xid}.bin"
        self._file: BinaryIO | None = open(self.path, "w+b", buffering=_WRITE_BUFFER)
        self._size = 0
        self._subxacts: dict[int, tuple[int, int]] = {}
        """Position and record number of the first record of each subtransaction (and of the
        xid itself)."""
        self._relations: list[tuple[int, bytes]] = []
        """Position and payload of each relation message."""
        self.records = 0
        """Number of records in the spool."""

    @property
    def size(self) -> int:
        """Bytes spooled (after any cut)."""
        return self._size

    def append(self, subxid: int, payload: bytes | memoryview, *, relation: bool = False) -> None:
        """Add one message made by ``subxid`` (``relation``: a Relation message)."""
        f = self._file
        assert f is not None, "spool is closed"
        at = self._size
        if relation:
            self._relations.append((at, bytes(payload)))
        elif subxid not in self._subxacts:
            self._subxacts[subxid] = (at, self.records)
        f.write(_LENGTH.pack(len(payload)))
        f.write(payload)
        self._size = at + _LENGTH.size + len(payload)
        self.records += 1

    def abort_subtransaction(self, subxid: int) -> bool:
        """Drop ``subxid``'s changes and everything spooled after them; False if it had none."""
        first = self._subxacts.get(subxid)
        f = self._file
        if first is None or f is None:
            return False
        cut, self.records = first
        f.flush()
        f.truncate(cut)
        f.seek(cut)
        self._size = cut
        self._subxacts = {x: first for x, first in self._subxacts.items() if first[0] < cut}
        kept = [(at, payload) for at, payload in self._relations if at < cut]
        again = [payload for at, payload in self._relations if at >= cut]
        self._relations = kept
        for payload in again:
            self.append(0, payload, relation=True)
        return True

    def replay(self) -> Iterator[bytes]:
        """Every spooled payload, in order (the spool takes no appends afterwards)."""
        f = self._file
        assert f is not None, "spool is closed"
        f.flush()
        return self._read(self._size)

    def _read(self, end: int) -> Iterator[bytes]:
        with open(self.path, "rb", buffering=_READ_BUFFER) as f:
            read = f.read
            unpack = _LENGTH.unpack
            at = 0
            while at < end:
                (length,) = unpack(read(_LENGTH.size))
                payload = read(length)
                if len(payload) != length:
                    raise OSError(f"{self.path}: truncated record at {at}")
                at += _LENGTH.size + length
                yield payload

    def delete(self) -> None:
        """Close and remove the file."""
        f, self._file = self._file, None
        if f is not None:
            f.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
