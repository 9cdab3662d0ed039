"""Tests of the replication stream's inner loop (syncd/message_pump.py).

The pump reads what libpq has buffered; here a small stand-in holds captured pgoutput messages
(the fixture of ``test_pgoutput``) framed as CopyData, delivered in chunks, the way libpq makes
them available after each ``consume_input``. The stream around it (sockets, statuses, awaits)
is tested against a real server in ``test_replication.py`` and ``test_streaming.py``.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterable

import pytest

from syncd.message_pump import (
    BATCH_DONE,
    COPY_ENDED,
    COPY_FAILED,
    DRAINED,
    REPLY_REQUESTED,
    STREAM_COMMITTED,
    MessagePump,
)
from syncd.pgoutput import (
    Begin,
    Commit,
    Insert,
    Message,
    PgoutputDecoder,
    PgoutputError,
    StreamAbort,
    StreamCommit,
    StreamStop,
)
from tests.syncd.test_pgoutput import RECORDS

WAL_BASE = 0x1_0000_0000


def xlogdata(payload: bytes, start: int) -> bytes:
    return b"w" + struct.pack(">QQq", start, start + 1000, 0) + payload


def keepalive(wal_end: int, reply: bool) -> bytes:
    return b"k" + struct.pack(">QqB", wal_end, 0, int(reply))


class Buffered:
    """What libpq would hold: ``frames`` become readable one chunk per ``consume_input``;
    ``end`` is what ``get_copy_data`` returns after the last chunk (0: nothing more yet)."""

    def __init__(self, chunks: Iterable[list[bytes]], end: int = 0) -> None:
        self._arriving = deque(chunks)
        self._readable: deque[bytes] = deque()
        self._end = end
        self.consumed = 0

    def get_copy_data(self, async_: int) -> tuple[int, memoryview]:
        assert async_ == 1
        if self._readable:
            frame = self._readable.popleft()
            return len(frame), memoryview(frame)
        if not self._arriving:
            return self._end, memoryview(b"")
        return 0, memoryview(b"")

    def consume_input(self) -> None:
        self.consumed += 1
        if self._arriving:
            self._readable.extend(self._arriving.popleft())


def framed(payloads: list[bytes]) -> list[bytes]:
    return [xlogdata(p, WAL_BASE + 100 * i) for i, p in enumerate(payloads)]


def test_every_message_is_decoded_and_handed_on_in_order() -> None:
    payloads = RECORDS["proto1"]
    got: list[Message] = []
    pump = MessagePump(got.append)
    source = Buffered([framed(payloads[:10]), framed(payloads)[10:]])
    assert pump.run(source, yield_every=1_000) == DRAINED
    decoder = PgoutputDecoder()
    assert got == [decoder.decode(p) for p in payloads]
    assert pump.received == WAL_BASE + 100 * (len(payloads) - 1)
    assert pump.since_idle == len(payloads)
    assert source.consumed == 3  # one per chunk, and one that found nothing
    assert not pump.in_transaction


def test_transaction_boundaries_are_followed() -> None:
    payloads = RECORDS["proto1"]
    got: list[Message] = []
    pump = MessagePump(got.append)
    frames = framed(payloads)
    states = []
    for frame in frames:
        assert pump.run(Buffered([[frame]]), yield_every=1_000) == DRAINED
        states.append(pump.in_transaction)
    opened = [isinstance(m, Begin) for m in got]
    closed = [isinstance(m, Commit) for m in got]
    assert any(opened) and any(closed)
    expected, open_now = [], False
    for is_begin, is_commit in zip(opened, closed, strict=True):
        open_now = (open_now or is_begin) and not is_commit
        expected.append(open_now)
    assert states == expected


def test_a_batch_ends_after_yield_every_messages() -> None:
    frames = framed(RECORDS["proto1"][:25])
    got: list[Message] = []
    pump = MessagePump(got.append)
    source = Buffered([frames])
    assert pump.run(source, yield_every=10) == BATCH_DONE
    assert len(got) == 10
    assert pump.run(source, yield_every=10) == BATCH_DONE
    assert pump.run(source, yield_every=10) == DRAINED
    assert len(got) == 25 and pump.since_idle == 25


def test_handlers_by_type_replace_on_message() -> None:
    payloads = RECORDS["proto1"]
    via_on_message: list[Message] = []
    inserts: list[Insert] = []
    pump = MessagePump(via_on_message.append, handlers={Insert: inserts.append})
    assert pump.run(Buffered([framed(payloads)]), yield_every=1_000) == DRAINED
    decoder = PgoutputDecoder()
    everything = [decoder.decode(p) for p in payloads]
    assert inserts == [m for m in everything if isinstance(m, Insert)] != []
    assert via_on_message == []  # the other types are dropped, as the handler asked
    assert not pump.in_transaction  # boundaries are followed all the same


def test_keepalives_raise_the_position_and_ask_for_replies() -> None:
    got: list[Message] = []
    pump = MessagePump(got.append)
    begin = RECORDS["proto1"][0]
    source = Buffered(
        [[keepalive(WAL_BASE + 50, False), xlogdata(begin, WAL_BASE + 10)]]
        + [[keepalive(WAL_BASE + 70, True), keepalive(WAL_BASE + 60, False)]]
    )
    assert pump.run(source, yield_every=1_000) == REPLY_REQUESTED
    assert pump.received == WAL_BASE + 70
    assert len(got) == 1 and pump.since_idle == 1  # keepalives are not messages
    assert pump.run(source, yield_every=1_000) == DRAINED
    assert pump.received == WAL_BASE + 70  # never backwards


@pytest.mark.parametrize(("end", "event"), [(-1, COPY_ENDED), (-2, COPY_FAILED)])
def test_the_end_of_copy_is_reported(end: int, event: int) -> None:
    got: list[Message] = []
    pump = MessagePump(got.append)
    source = Buffered([framed(RECORDS["proto1"][:3])], end=end)
    assert pump.run(source, yield_every=1_000) == event
    assert len(got) == 3
    assert pump.received == WAL_BASE + 200


def test_an_unknown_copy_data_tag_raises_and_keeps_the_position() -> None:
    pump = MessagePump(lambda msg: None)
    source = Buffered([[xlogdata(RECORDS["proto1"][0], WAL_BASE + 5), b"x" + bytes(24)]])
    with pytest.raises(PgoutputError, match="unexpected CopyData message tag 0x78"):
        pump.run(source, yield_every=1_000)
    assert pump.received == WAL_BASE + 5


def test_stream_blocks_go_to_on_stream_change_and_commits_stop_the_run() -> None:
    payloads = RECORDS["proto2_stream"]
    messages: list[Message] = []
    spooled: list[tuple[Message, bytes]] = []
    pump = MessagePump(messages.append, lambda m, raw: spooled.append((m, bytes(raw))))
    source = Buffered([framed(payloads)])
    events = []
    while (event := pump.run(source, yield_every=100_000)) != DRAINED:
        events.append(event)
        assert isinstance(messages[-1], StreamCommit)
        counted = pump.since_idle
        assert not pump.count_stream_commit(100_000)
        assert pump.since_idle == counted + 1
    assert events == [STREAM_COMMITTED]
    assert pump.since_idle == len(payloads)
    # Inside a block, every message but the boundaries is spooled with its own bytes.
    decoder = PgoutputDecoder()
    expected_spooled, expected_messages = [], []
    for payload in payloads:
        msg = decoder.decode(payload)
        if payload[0] not in b"BCScA" and decoder.stream_xid is not None:
            expected_spooled.append((msg, payload))
        else:
            expected_messages.append(msg)
    assert spooled == expected_spooled and len(spooled) > 1_000
    assert messages == expected_messages
    assert any(isinstance(m, StreamAbort) for m in messages)
    assert not pump.in_transaction  # one streamed transaction committed, one aborted


def test_open_streams_are_counted_as_a_transaction() -> None:
    payloads = RECORDS["proto2_stream"]
    decoder = PgoutputDecoder()
    first_stop = next(
        i for i, p in enumerate(payloads) if isinstance(decoder.decode(p), StreamStop)
    )
    pump = MessagePump(lambda msg: None, lambda msg, raw: None)
    assert pump.run(Buffered([framed(payloads[: first_stop + 1])]), 100_000) == DRAINED
    assert pump.in_transaction and pump.open_streams  # a block ended, its transaction did not
    received = pump.received
    pump.start_session()
    assert not pump.in_transaction and pump.since_idle == 0
    assert pump.received == received
