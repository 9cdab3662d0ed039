"""Server-sent events framing: bytes in, the ``data`` of each complete event out.

Sans-IO, so the HTTP layer only feeds it what arrives. Follows the event-stream format of the
HTML standard as far as a shape stream needs it: lines end with CRLF, LF or CR; a ``data``
field loses one leading space and several of them join with ``\\n``; a blank line ends an
event; comments (``:``), other fields and an event without ``data`` are dropped.
"""

from __future__ import annotations


class SseDecoder:
    """Incremental event-stream decoder; :meth:`feed` returns the events a chunk completes."""

    def __init__(self) -> None:
        self._tail = b""
        self._data: list[bytes] = []
        self._after_cr = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add ``chunk``; return the ``data`` of every event it completes, in order."""
        if self._after_cr and chunk:
            self._after_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]  # the second half of a CRLF split between chunks
        text = self._tail + chunk
        if b"\r" in text:
            self._after_cr = text.endswith(b"\r")
            text = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = text.split(b"\n")
        self._tail = lines.pop()
        events: list[bytes] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data"):
                value = line[4:]
                if not value:
                    self._data.append(b"")
                elif value[:1] == b":":
                    self._data.append(value[2:] if value[1:2] == b" " else value[1:])
        return events
