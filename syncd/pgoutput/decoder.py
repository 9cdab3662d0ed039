"""Decoder of ``pgoutput`` payloads (the bytes of an XLogData message after its header).

Layer: ``syncd.pgoutput`` (pure: no I/O).

Wire format (PostgreSQL "Logical Replication Message Formats"; all integers big-endian):

====  =======================================================================================
tag   body
====  =======================================================================================
B     final_lsn u64, commit_time i64, xid u32
C     flags u8, commit_lsn u64, end_lsn u64, commit_time i64
O     commit_lsn u64, name cstring
R     [xid u32] oid u32, namespace cstring, name cstring, replident u8, ncols u16,
      ncols * (flags u8, name cstring, type_oid u32, type_mod i32)
Y     [xid u32] oid u32, namespace cstring, name cstring
I     [xid u32] oid u32, 'N', tuple
U     [xid u32] oid u32, optional ('K' | 'O', tuple), 'N', tuple
D     [xid u32] oid u32, 'K' | 'O', tuple
T     [xid u32] nrels u32, options u8, nrels * oid u32
M     [xid u32] flags u8, lsn u64, prefix cstring, length u32, content
S     xid u32, first u8                                   (proto 2+)
E     (empty)                                             (proto 2+)
c     xid u32, flags u8, commit_lsn u64, end_lsn u64, commit_time i64   (proto 2+)
A     xid u32, subxid u32 [, abort_lsn u64, abort_time i64 (proto 4)]  (proto 2+)
====  =======================================================================================

``tuple`` is ncols u16 followed per column by a kind byte: ``n`` (NULL), ``u`` (unchanged
TOAST), ``t`` + len u32 + text, ``b`` + len u32 + binary value.

``[xid u32]`` is present only between Stream Start and Stream Stop, so the decoder keeps that
one bit of state and swaps its dispatch table on ``S``/``E``.

Speed: the payload must be ``bytes`` (convert a ``memoryview`` from libpq once); headers are
read with precompiled ``struct.Struct.unpack_from`` at offsets, never by slicing, and the
tuple loop slices and UTF-8-decodes each text value directly. Python exceptions caused by
malformed input (``IndexError``, ``struct.error``, ``ValueError``, ``UnicodeDecodeError``) are
caught once around the whole decode and re-raised as :class:`PgoutputError`; a ``try`` costs
nothing on the fast path.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final, Literal, Protocol

from syncd.pgoutput.errors import PgoutputError
from syncd.pgoutput.messages import (
    UNCHANGED_TOAST,
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    Relation,
    RelationColumn,
    RowData,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    Type,
    Update,
    Value,
)

__all__ = ["PgoutputDecoder", "decode_tuple", "read_u64"]

_U16: Final = struct.Struct(">H").unpack_from
_U32: Final = struct.Struct(">I").unpack_from
_U64: Final = struct.Struct(">Q").unpack_from
_STREAM_COMMIT: Final = struct.Struct(">IBQQq").unpack_from
_STREAM_START: Final = struct.Struct(">IB").unpack_from
_U32_U32: Final = struct.Struct(">II").unpack_from
_U64_I64: Final = struct.Struct(">Qq").unpack_from
_U32_I32: Final = struct.Struct(">Ii").unpack_from
_U32_U8: Final = struct.Struct(">IB").unpack_from
_U8_U64: Final = struct.Struct(">BQ").unpack_from

_K: Final = 75  # ord("K")
_N: Final = 78  # ord("N")
_O: Final = 79  # ord("O")

_STREAM_END: Final = StreamStop()

_Handler = Callable[[bytes, int], Message]


class _ChangeHandler(Protocol):
    """A handler of a message that may come inside a stream block, then with its xid."""

    def __call__(self, buf: bytes, pos: int, xid: int | None = None) -> Message: ...


# Integers of the messages of every transaction, read byte by byte: compiled (see
# shapes.compiled), these are plain C arithmetic, several times faster than struct's unpacking
# (which makes a tuple each time). Past the end of ``buf`` they raise IndexError.


def _u16(buf: bytes, pos: int) -> int:
    return (buf[pos] << 8) | buf[pos + 1]


def _u32(buf: bytes, pos: int) -> int:
    return (buf[pos] << 24) | (buf[pos + 1] << 16) | (buf[pos + 2] << 8) | buf[pos + 3]


def read_u64(buf: bytes, pos: int) -> int:
    """The big-endian unsigned 64-bit integer at ``pos`` (an LSN, for instance)."""
    return (_u32(buf, pos) << 32) | _u32(buf, pos + 4)


def _i64(buf: bytes, pos: int) -> int:
    value = read_u64(buf, pos)
    return value - (1 << 64) if value >= 1 << 63 else value


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    """Read a NUL-terminated UTF-8 string at ``pos``; return it and the position after the NUL."""
    end = buf.index(0, pos)
    return buf[pos:end].decode(), end + 1


def decode_tuple(buf: bytes, pos: int) -> tuple[RowData, int]:
    """Decode a TupleData at ``pos``; return the row and the position just past it.

    Raises PgoutputError on a bad kind byte or a value that runs past the end of ``buf``
    (other malformations surface as ``IndexError``, which
    :meth:`PgoutputDecoder.decode` converts).
    """
    ncols = _u16(buf, pos)
    pos += 2
    values: list[Value] = [None] * ncols
    for i in range(ncols):
        kind = buf[pos]
        if kind == 116:  # 't'
            start = pos + 5
            pos = start + _u32(buf, pos + 1)
            values[i] = buf[start:pos].decode()
        elif kind == 110:  # 'n'
            pos += 1
        else:
            pos = _odd_value(buf, pos, kind, values, i)
    if pos > len(buf):
        raise PgoutputError("tuple data runs past the end of the message")
    return tuple(values), pos


def _odd_value(buf: bytes, pos: int, kind: int, values: list[Value], i: int) -> int:
    """The rarer tuple value kinds: store ``values[i]``, return the position after the value."""
    if kind == 117:  # 'u'
        values[i] = UNCHANGED_TOAST
        return pos + 1
    if kind == 98:  # 'b'
        start = pos + 5
        end = start + _u32(buf, pos + 1)
        values[i] = buf[start:end]
        return end
    raise PgoutputError(f"unknown tuple value kind {kind:#04x} at offset {pos}")


def _expect_end(buf: bytes, pos: int, what: str) -> None:
    if pos != len(buf):
        if pos > len(buf):
            raise PgoutputError(f"truncated {what} message")
        raise PgoutputError(f"{len(buf) - pos} trailing bytes after {what} message")


def _old_kind(kind: int) -> Literal["K", "O"]:
    if kind == _K:
        return "K"
    if kind == _O:
        return "O"
    raise PgoutputError(f"expected 'K' or 'O' old tuple marker, got {kind:#04x}")


# --- handlers: (buf, pos after the tag [and xid], xid) -> message -------------------------


def _begin(buf: bytes, pos: int) -> Begin:
    begin = Begin(read_u64(buf, pos), _i64(buf, pos + 8), _u32(buf, pos + 16))
    _expect_end(buf, pos + 20, "Begin")
    return begin


def _commit(buf: bytes, pos: int) -> Commit:
    commit = Commit(buf[pos], read_u64(buf, pos + 1), read_u64(buf, pos + 9), _i64(buf, pos + 17))
    _expect_end(buf, pos + 25, "Commit")
    return commit


def _origin(buf: bytes, pos: int) -> Origin:
    (commit_lsn,) = _U64(buf, pos)
    name, pos = _cstring(buf, pos + 8)
    _expect_end(buf, pos, "Origin")
    return Origin(commit_lsn, name)


def _relation(buf: bytes, pos: int, xid: int | None = None) -> Relation:
    (oid,) = _U32(buf, pos)
    namespace, pos = _cstring(buf, pos + 4)
    name, pos = _cstring(buf, pos)
    replident = chr(buf[pos])
    (ncols,) = _U16(buf, pos + 1)
    pos += 3
    columns: list[RelationColumn] = []
    for _ in range(ncols):
        flags = buf[pos]
        colname, pos = _cstring(buf, pos + 1)
        type_oid, type_mod = _U32_I32(buf, pos)
        pos += 8
        columns.append(RelationColumn(flags, colname, type_oid, type_mod))
    _expect_end(buf, pos, "Relation")
    return Relation(oid, namespace, name, replident, tuple(columns), xid)


def _type(buf: bytes, pos: int, xid: int | None = None) -> Type:
    (oid,) = _U32(buf, pos)
    namespace, pos = _cstring(buf, pos + 4)
    name, pos = _cstring(buf, pos)
    _expect_end(buf, pos, "Type")
    return Type(oid, namespace, name, xid)


def _insert(buf: bytes, pos: int, xid: int | None = None) -> Insert:
    # The hottest path: the tuple loop of decode_tuple() is inlined here (about 5% faster).
    oid = _u32(buf, pos)
    if buf[pos + 4] != _N:
        raise PgoutputError("Insert without 'N' new tuple marker")
    ncols = _u16(buf, pos + 5)
    pos += 7
    values: list[Value] = [None] * ncols
    for i in range(ncols):
        kind = buf[pos]
        if kind == 116:  # 't'
            start = pos + 5
            pos = start + _u32(buf, pos + 1)
            values[i] = buf[start:pos].decode()
        elif kind == 110:  # 'n'
            pos += 1
        else:
            pos = _odd_value(buf, pos, kind, values, i)
    if pos != len(buf):
        _expect_end(buf, pos, "Insert")
    return Insert(oid, tuple(values), xid)


def _update(buf: bytes, pos: int, xid: int | None = None) -> Update:
    oid = _u32(buf, pos)
    kind = buf[pos + 4]
    pos += 5
    old: RowData | None = None
    old_kind: Literal["K", "O"] | None = None
    if kind != _N:
        old_kind = _old_kind(kind)
        old, pos = decode_tuple(buf, pos)
        if buf[pos] != _N:
            raise PgoutputError("Update without 'N' new tuple marker")
        pos += 1
    new, pos = decode_tuple(buf, pos)
    _expect_end(buf, pos, "Update")
    return Update(oid, old, new, old_kind, xid)


def _delete(buf: bytes, pos: int, xid: int | None = None) -> Delete:
    oid = _u32(buf, pos)
    old_kind = _old_kind(buf[pos + 4])
    old, pos = decode_tuple(buf, pos + 5)
    _expect_end(buf, pos, "Delete")
    return Delete(oid, old, old_kind, xid)


def _truncate(buf: bytes, pos: int, xid: int | None = None) -> Truncate:
    nrels, options = _U32_U8(buf, pos)
    pos += 5
    end = pos + 4 * nrels
    _expect_end(buf, end, "Truncate")
    oids = struct.unpack_from(f">{nrels}I", buf, pos)
    return Truncate(options, oids, xid)


def _message(buf: bytes, pos: int, xid: int | None = None) -> LogicalMessage:
    flags, lsn = _U8_U64(buf, pos)
    prefix, pos = _cstring(buf, pos + 9)
    (length,) = _U32(buf, pos)
    pos += 4
    end = pos + length
    _expect_end(buf, end, "Message")
    return LogicalMessage(flags, lsn, prefix, buf[pos:end], xid)


def _stream_commit(buf: bytes, pos: int) -> StreamCommit:
    xid, flags, commit_lsn, end_lsn, commit_time = _STREAM_COMMIT(buf, pos)
    _expect_end(buf, pos + 29, "Stream Commit")
    return StreamCommit(xid, flags, commit_lsn, end_lsn, commit_time)


def _stream_abort(buf: bytes, pos: int) -> StreamAbort:
    xid, subxid = _U32_U32(buf, pos)
    pos += 8
    if pos == len(buf):
        return StreamAbort(xid, subxid)
    abort_lsn, abort_time = _U64_I64(buf, pos)
    _expect_end(buf, pos + 16, "Stream Abort")
    return StreamAbort(xid, subxid, abort_lsn, abort_time)


def _with_xid(handler: _ChangeHandler) -> _Handler:
    """Wrap a handler for use inside a stream block, where a u32 xid follows the tag."""

    def streamed(buf: bytes, pos: int) -> Message:
        (xid,) = _U32(buf, pos)
        return handler(buf, pos + 4, xid)

    return streamed


_XID_HANDLERS: Final[dict[int, _ChangeHandler]] = {
    ord("R"): _relation,
    ord("Y"): _type,
    ord("I"): _insert,
    ord("U"): _update,
    ord("D"): _delete,
    ord("T"): _truncate,
    ord("M"): _message,
}

_PLAIN_HANDLERS: Final[dict[int, _Handler]] = {
    ord("B"): _begin,
    ord("C"): _commit,
    ord("O"): _origin,
    ord("c"): _stream_commit,
    ord("A"): _stream_abort,
    **_XID_HANDLERS,
}


_STREAM_STOP_TAG: Final = ord("E")


class PgoutputDecoder:
    """Stateful pgoutput decoder for one replication session (proto versions 1, 2 and 4).

    The only state is whether a Stream Start ... Stream Stop block is open; use a fresh decoder
    (or :meth:`reset`) after reconnecting.
    """

    __slots__ = ("_stream_xid", "_table", "_outside", "_inside")

    def __init__(self) -> None:
        self._stream_xid: int | None = None
        outside: dict[int, _Handler] = dict(_PLAIN_HANDLERS)
        outside[ord("S")] = self._stream_start
        inside: dict[int, _Handler] = {tag: _with_xid(h) for tag, h in _XID_HANDLERS.items()}
        inside[ord("E")] = self._stream_stop
        inside[ord("O")] = _origin  # the origin of a streamed txn is sent right after 'S'
        self._outside = outside
        self._inside = inside
        self._table = outside

    @property
    def stream_xid(self) -> int | None:
        """The xid of the open stream block, or ``None`` outside streaming."""
        return self._stream_xid

    def reset(self) -> None:
        """Forget any open stream block (e.g. after the connection was lost)."""
        self._stream_xid = None
        self._table = self._outside

    def decode(self, payload: bytes, offset: int = 0) -> Message:
        """Decode the pgoutput message that starts at ``payload[offset]`` and ends at the end.

        Pass an XLogData copy message with ``offset=25`` to avoid slicing the payload out.

        Raises:
            PgoutputError: malformed or truncated bytes, an unknown tag, or a tag not allowed
                in the current state (e.g. Begin inside a stream block).
        """
        try:
            handler = self._table[payload[offset]]
        except (KeyError, IndexError, TypeError):
            raise self._bad_tag(payload, offset) from None
        try:
            return handler(payload, offset + 1)
        except (IndexError, struct.error, ValueError) as exc:
            # UnicodeDecodeError is a ValueError; PgoutputError passes through untouched.
            tag = chr(payload[offset])
            raise PgoutputError(f"malformed {tag!r} message: {exc}") from exc

    def decode_streamed(self, payload: bytes, offset: int = 0) -> Message:
        """Decode a change as sent inside a stream block (with its xid), whatever the state.

        For replaying changes spooled from stream blocks. Stream Stop is not accepted, and the
        decoder's state does not change.

        Raises:
            PgoutputError: as :meth:`decode`.
        """
        try:
            tag = payload[offset]
            if tag == _STREAM_STOP_TAG:
                raise KeyError(tag)
            handler = self._inside[tag]
        except (KeyError, IndexError, TypeError):
            raise PgoutputError("not a streamed change message") from None
        try:
            return handler(payload, offset + 1)
        except (IndexError, struct.error, ValueError) as exc:
            raise PgoutputError(f"malformed {chr(tag)!r} message: {exc}") from exc

    def _bad_tag(self, payload: bytes, offset: int) -> PgoutputError:
        if not isinstance(payload, bytes):
            return PgoutputError(f"payload must be bytes, not {type(payload).__name__}")
        if offset >= len(payload) or offset < 0:
            return PgoutputError("empty pgoutput message")
        tag = payload[offset]
        where = "inside" if self._stream_xid is not None else "outside"
        if tag in self._outside or tag in self._inside:
            return PgoutputError(f"message {chr(tag)!r} not allowed {where} a stream block")
        return PgoutputError(f"unknown pgoutput message tag {tag:#04x}")

    def _stream_start(self, buf: bytes, pos: int) -> StreamStart:
        xid, first = _STREAM_START(buf, pos)
        _expect_end(buf, pos + 5, "Stream Start")
        self._stream_xid = xid
        self._table = self._inside
        return StreamStart(xid, bool(first))

    def _stream_stop(self, buf: bytes, pos: int) -> StreamStop:
        _expect_end(buf, pos, "Stream Stop")
        self._stream_xid = None
        self._table = self._outside
        return _STREAM_END
