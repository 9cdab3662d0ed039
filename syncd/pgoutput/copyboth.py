"""Framing of the streaming replication sub-protocol carried in CopyBoth (CopyData) messages.

Layer: ``syncd.pgoutput`` (pure: no I/O).

Server to client:

* ``w`` XLogData: data_start u64, wal_end u64, send_time i64, then the plugin payload, which
  therefore starts at offset :data:`XLOGDATA_PAYLOAD_OFFSET` (25).
* ``k`` Primary keepalive: wal_end u64, send_time i64, reply_requested u8.

Client to server:

* ``r`` Standby status update: write, flush, apply LSN (u64 each), client time i64 (µs since
  2000-01-01 UTC), reply_requested u8.

The read loop of :mod:`syncd.replication` uses :data:`XLOGDATA_HEADER` directly on the hot path;
:func:`parse_copy_data` is the convenient (validated) form.
"""

from __future__ import annotations

import struct
import time
from typing import Final

import msgspec

from syncd.pgoutput.errors import PgoutputError

__all__ = [
    "KEEPALIVE",
    "KEEPALIVE_BODY",
    "PG_EPOCH_UNIX",
    "XLOGDATA",
    "XLOGDATA_HEADER",
    "XLOGDATA_PAYLOAD_OFFSET",
    "PrimaryKeepalive",
    "XLogData",
    "build_standby_status",
    "format_lsn",
    "parse_copy_data",
    "parse_keepalive",
    "parse_lsn",
    "parse_xlogdata",
    "pg_now_us",
]

XLOGDATA: Final = 0x77  # ord("w")
KEEPALIVE: Final = 0x6B  # ord("k")
XLOGDATA_HEADER: Final = struct.Struct(">QQq")
"""data_start, wal_end, send_time, read at offset 1 of an XLogData message."""
XLOGDATA_PAYLOAD_OFFSET: Final = 25
KEEPALIVE_BODY: Final = struct.Struct(">QqB")
"""wal_end, send_time, reply_requested, read at offset 1 of a keepalive message."""
_STATUS: Final = struct.Struct(">cQQQqB")

PG_EPOCH_UNIX: Final = 946_684_800
"""2000-01-01 00:00 UTC in Unix seconds."""

_LSN_MAX: Final = (1 << 64) - 1


class XLogData(msgspec.Struct, frozen=True, gc=False):
    """Header of a ``w`` message; the payload is ``buf[payload_offset:]`` of the parsed buffer."""

    data_start: int
    wal_end: int
    send_time: int
    payload_offset: int = XLOGDATA_PAYLOAD_OFFSET


class PrimaryKeepalive(msgspec.Struct, frozen=True, gc=False):
    """A ``k`` message: the server's current WAL end, and whether it wants a status now."""

    wal_end: int
    send_time: int
    reply_requested: bool


def parse_xlogdata(buf: bytes) -> XLogData:
    """Parse the header of an XLogData message (``buf[0] == ord('w')``)."""
    if len(buf) < XLOGDATA_PAYLOAD_OFFSET or buf[0] != XLOGDATA:
        raise PgoutputError("not an XLogData message or truncated header")
    data_start, wal_end, send_time = XLOGDATA_HEADER.unpack_from(buf, 1)
    return XLogData(data_start, wal_end, send_time)


def parse_keepalive(buf: bytes) -> PrimaryKeepalive:
    """Parse a primary keepalive message (``buf[0] == ord('k')``)."""
    if len(buf) != 18 or buf[0] != KEEPALIVE:
        raise PgoutputError("not a primary keepalive message or wrong length")
    wal_end, send_time, reply = KEEPALIVE_BODY.unpack_from(buf, 1)
    return PrimaryKeepalive(wal_end, send_time, bool(reply))


def parse_copy_data(buf: bytes) -> XLogData | PrimaryKeepalive:
    """Parse one CopyData message received in COPY BOTH mode."""
    if not buf:
        raise PgoutputError("empty CopyData message")
    if buf[0] == XLOGDATA:
        return parse_xlogdata(buf)
    if buf[0] == KEEPALIVE:
        return parse_keepalive(buf)
    raise PgoutputError(f"unknown CopyData message tag {buf[0]:#04x}")


def pg_now_us() -> int:
    """The current time as a Postgres wire timestamp (µs since 2000-01-01 UTC)."""
    return time.time_ns() // 1000 - PG_EPOCH_UNIX * 1_000_000


def build_standby_status(
    write_lsn: int,
    flush_lsn: int,
    apply_lsn: int | None = None,
    *,
    now_us: int | None = None,
    reply_requested: bool = False,
) -> bytes:
    """Build a Standby status update (``r``) message.

    ``apply_lsn`` defaults to ``flush_lsn``; ``now_us`` to :func:`pg_now_us`.
    """
    if apply_lsn is None:
        apply_lsn = flush_lsn
    if now_us is None:
        now_us = pg_now_us()
    for lsn in (write_lsn, flush_lsn, apply_lsn):
        if not 0 <= lsn <= _LSN_MAX:
            raise ValueError(f"LSN out of range: {lsn}")
    return _STATUS.pack(b"r", write_lsn, flush_lsn, apply_lsn, now_us, 1 if reply_requested else 0)


def format_lsn(lsn: int) -> str:
    """Render an LSN the way Postgres does (``16/B374D848``)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """Parse ``X/Y`` (hex halves) into an integer LSN."""
    high, sep, low = text.partition("/")
    if not sep or not high or not low or len(high) > 8 or len(low) > 8:
        raise ValueError(f"invalid LSN: {text!r}")
    try:
        return (int(high, 16) << 32) | int(low, 16)
    except ValueError:
        raise ValueError(f"invalid LSN: {text!r}") from None
