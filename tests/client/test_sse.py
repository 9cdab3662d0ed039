"""The event-stream decoder: framing rules and independence from how the bytes are split."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shapes.client.sse import SseDecoder


def decode_all(chunks: list[bytes]) -> list[bytes]:
    decoder = SseDecoder()
    return [event for chunk in chunks for event in decoder.feed(chunk)]


def test_data_events_comments_and_other_fields() -> None:
    stream = (
        b": keep-alive\n\n"
        b'data: {"a":1}\n\n'
        b"event: message\nid: 7\nretry: 10\n\n"  # no data: no event
        b"data:no space\n\n"
        b"data:  two spaces\n\n"
        b"data: first\ndata: second\n\n"
        b"data\n\n"
        b"dataplus: ignored\ndata: kept\n\n"
        b"data: unfinished"
    )
    assert decode_all([stream]) == [
        b'{"a":1}',
        b"no space",
        b" two spaces",
        b"first\nsecond",
        b"",
        b"kept",
    ]


def test_every_line_ending() -> None:
    assert decode_all([b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"]) == [b"a", b"b", b"c"]


def test_a_crlf_split_between_chunks_is_one_line_end() -> None:
    assert decode_all([b"data: a\r", b"\n", b"\r", b"\ndata: b\n\n"]) == [b"a", b"b"]
    assert decode_all([b"data: a\r", b"", b"\n", b"\n"]) == [b"a"]


@st.composite
def event_streams(draw: st.DrawFn) -> tuple[list[bytes], bytes]:
    payloads = draw(st.lists(st.binary().filter(lambda b: b"\r" not in b and b"\n" not in b)))
    ending = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    stream = b"".join(b"data: " + p + ending + ending for p in payloads)
    return payloads, stream


@given(event_streams(), st.lists(st.integers(min_value=0, max_value=10_000)))
def test_splitting_never_changes_the_events(
    case: tuple[list[bytes], bytes], cuts: list[int]
) -> None:
    payloads, stream = case
    points = sorted({min(cut, len(stream)) for cut in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in zip(points, points[1:], strict=False)]
    assert decode_all(chunks) == payloads
