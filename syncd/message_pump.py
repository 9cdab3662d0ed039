"""The replication stream's inner loop: buffered CopyData messages, decoded and handed on.

Layer: ``syncd``. No I/O of its own: it reads what libpq has already received (``get_copy_data``
and ``consume_input`` never block on a non-blocking connection) and calls the handler.

Theory of operation
-------------------
:class:`ReplicationStream <syncd.replication.ReplicationStream>` owns the connection and
everything that awaits (waiting for the socket, status updates, the handler's ``on_idle``).
Between two awaits, though, its work is a tight synchronous loop over the messages libpq holds:
copy each XLogData to ``bytes``, decode it in place, note transaction boundaries and hand it to
the handler. That loop is this module, so that it can run compiled with the per-row path (see
``shapes.compiled``): :meth:`MessagePump.run` handles messages until something needs the event
loop, and says what with its return value:

* :data:`DRAINED`: libpq holds no complete message; wait for the socket.
* :data:`BATCH_DONE`: ``yield_every`` messages were handled; let other tasks run.
* :data:`STREAM_COMMITTED`: a streamed transaction committed; make it durable now. The message
  is not counted yet: :meth:`MessagePump.count_stream_commit` counts it once that is done (so
  that it counts towards the next ``on_idle``, not the one that made it durable).
* :data:`REPLY_REQUESTED`: a keepalive asked for a status update.
* :data:`COPY_ENDED`: the server ended COPY (``get_copy_data`` returned -1).
* :data:`COPY_FAILED`: libpq reported an error (``get_copy_data`` returned -2).

The pump also keeps the stream's position: the highest WAL position received, whether a
transaction or streamed transaction is open, and how many messages arrived since the handler's
last ``on_idle``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from syncd.pgoutput import (
    Message,
    PgoutputDecoder,
    PgoutputError,
    StreamAbort,
    StreamCommit,
    StreamStart,
)
from syncd.pgoutput.copyboth import (
    KEEPALIVE,
    KEEPALIVE_BODY,
    XLOGDATA,
    XLOGDATA_PAYLOAD_OFFSET,
)
from syncd.pgoutput.decoder import read_u64

DRAINED: Final = 0
BATCH_DONE: Final = 1
STREAM_COMMITTED: Final = 2
REPLY_REQUESTED: Final = 3
COPY_ENDED: Final = 4
COPY_FAILED: Final = 5

_BEGIN: Final = 66  # 'B'
_COMMIT: Final = 67  # 'C'
_STREAM_START: Final = 83  # 'S'
_STREAM_COMMIT: Final = 99  # 'c'
_STREAM_ABORT: Final = 65  # 'A'
_STREAM_STOP: Final = 69  # 'E'


class CopySource(Protocol):
    """What the pump reads from: the part of ``psycopg.pq.PGconn`` it uses."""

    def get_copy_data(self, async_: int) -> tuple[int, memoryview]: ...

    def consume_input(self) -> None: ...


class MessagePump:
    """Decodes the buffered messages of one replication stream and dispatches them."""

    def __init__(
        self,
        on_message: Callable[[Message], None],
        on_stream_change: Callable[[Message, memoryview], None] | None = None,
        handlers: Mapping[type, Callable[[Any], None]] | None = None,
    ) -> None:
        """``on_message`` takes every message, unless ``handlers`` gives the handler of each
        message type (what ``on_message`` would call: a message of a type it lacks is dropped).
        ``on_stream_change`` takes the messages inside stream blocks, if given."""
        self._on_message = on_message
        self._handlers = dict(handlers) if handlers is not None else None
        self._on_stream_change = on_stream_change
        self._decoder = PgoutputDecoder()
        self.received = 0
        """The highest WAL position received (XLogData start or keepalive ``wal_end``)."""
        self.in_txn = False
        """Between a Begin and its Commit."""
        self.open_streams: set[int] = set()
        """Transactions streamed in blocks that have not committed or aborted yet."""
        self.since_idle = 0
        """Messages handled since the handler's last ``on_idle`` (the stream resets it)."""
        self._batch = 0

    def start_session(self) -> None:
        """A new session: nothing is open, and decoding starts afresh (relations and the
        stream state of the decoder belong to one session). :attr:`received` stays."""
        self._decoder = PgoutputDecoder()
        self.in_txn = False
        self.open_streams.clear()
        self.since_idle = 0
        self._batch = 0

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction (or a streamed one) is open."""
        return self.in_txn or bool(self.open_streams)

    def run(self, source: CopySource, yield_every: int) -> int:
        """Handle the messages ``source`` holds until one of the events of the module
        docstring; return it.

        Raises:
            PgoutputError: a malformed message, or a CopyData tag the protocol does not have.
        """
        decoder = self._decoder
        decode = decoder.decode
        offset = XLOGDATA_PAYLOAD_OFFSET
        received = self.received
        try:
            while True:
                n, buf = source.get_copy_data(1)
                if n == 0:
                    source.consume_input()
                    n, buf = source.get_copy_data(1)
                    if n == 0:
                        return DRAINED
                if n == -1:
                    return COPY_ENDED
                if n < 0:
                    return COPY_FAILED
                data = bytes(buf)
                tag = data[0]
                if tag == XLOGDATA:
                    data_start = read_u64(data, 1)  # the XLogData header's first field
                    if data_start > received:
                        received = data_start
                    msg = decode(data, offset)
                    msg_tag = data[offset]
                    if (
                        msg_tag == _BEGIN
                        or msg_tag == _COMMIT
                        or msg_tag == _STREAM_START
                        or msg_tag == _STREAM_COMMIT
                        or msg_tag == _STREAM_ABORT
                    ):
                        self._track(msg_tag, msg)
                        self._dispatch(msg)
                        if msg_tag == _STREAM_COMMIT:
                            return STREAM_COMMITTED
                    elif (
                        self._on_stream_change is not None
                        and decoder.stream_xid is not None
                        and msg_tag != _STREAM_STOP
                    ):
                        self._on_stream_change(msg, memoryview(data)[offset:])
                    else:
                        self._dispatch(msg)
                    if self._counted(yield_every):
                        return BATCH_DONE
                elif tag == KEEPALIVE:
                    wal_end, _send_time, reply = KEEPALIVE_BODY.unpack_from(data, 1)
                    if wal_end > received:
                        received = wal_end
                    if reply:
                        return REPLY_REQUESTED
                else:
                    raise PgoutputError(f"unexpected CopyData message tag {tag:#04x}")
        finally:
            self.received = received

    def _dispatch(self, msg: Message) -> None:
        handlers = self._handlers
        if handlers is None:
            self._on_message(msg)
        else:
            handler = handlers.get(type(msg))
            if handler is not None:
                handler(msg)

    def count_stream_commit(self, yield_every: int) -> bool:
        """Count the stream commit :meth:`run` returned :data:`STREAM_COMMITTED` for, once it is
        durable; true when that completes a batch of ``yield_every``."""
        return self._counted(yield_every)

    def _counted(self, yield_every: int) -> bool:
        """Count one XLogData message; true when it completes a batch of ``yield_every``."""
        self.since_idle += 1
        self._batch += 1
        if self._batch >= yield_every:
            self._batch = 0
            return True
        return False

    def _track(self, tag: int, msg: Message) -> None:
        """Follow transaction boundaries (only called for B, C, S, c, A)."""
        if tag == _BEGIN:
            self.in_txn = True
        elif tag == _COMMIT:
            self.in_txn = False
        elif isinstance(msg, StreamStart):
            self.open_streams.add(msg.xid)
        elif isinstance(msg, StreamCommit):
            self.open_streams.discard(msg.xid)
        elif isinstance(msg, StreamAbort) and msg.subxid == msg.xid:
            self.open_streams.discard(msg.xid)
