"""When each row reached a reader that runs in a process of its own.

``write-to-client`` measures when a commit reaches each reader. A reader in the benchmark's own
process notes the time only once that process's interpreter lock lets it, and at the moment a
commit arrives the Python clients there are busy with the same commit: a baseline read by a
thread of that process came out at p90 in milliseconds where its p50 was 0.2 ms. This program
is such a reader on its own, started as a child: it reads a byte stream, finds the rows' texts
(``w2c-row-<id>-end``) in it and prints ``<id> <wall-clock seconds>`` for each, flushed at
once, the time taken as the bytes arrived. The parent reads the lines whenever it likes.

Two sources::

    python -m bench.arrivals stdin
        its standard input (``pg_recvlogical``'s output piped in)
    python -m bench.arrivals sse <port> <table> <handle> <offset>
        syncd's live SSE stream of a shape on 127.0.0.1:<port>, from <offset> on, read off
        the socket with no HTTP library: what any client receives before parsing. When syncd
        ends the stream (its SSE timeout), it opens the next one from the last change it
        saw. It prints ``open`` once the first stream's head has arrived.

It imports nothing of the project, so that it starts in a few tens of milliseconds.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time

ROW_TEXT = re.compile(rb"w2c-row-(\d+)-end")
_CHANGE_POSITION = re.compile(rb'"lsn":"(\d+)","op_position":(\d+)')
_TAIL = 256
"""Bytes kept from one read to the next: a row's text or a change's position cut by the end of
a read is found whole in the next."""


def _report(found: list[tuple[int, float]]) -> None:
    if found:
        sys.stdout.write("".join(f"{row} {at!r}\n" for row, at in found))
        sys.stdout.flush()


class Scanner:
    """Finds each row's text once, across reads."""

    def __init__(self) -> None:
        self.pending = b""
        self.seen: set[int] = set()

    def feed(self, chunk: bytes, at: float) -> list[tuple[int, float]]:
        self.pending += chunk
        found = []
        for match in ROW_TEXT.finditer(self.pending):
            row = int(match.group(1))
            if row not in self.seen:
                self.seen.add(row)
                found.append((row, at))
        return found

    def keep_tail(self) -> bytes:
        """Drop all but the tail; return what was dropped (plus the tail) for other scans."""
        scanned, self.pending = self.pending, self.pending[-_TAIL:]
        return scanned


def last_change_offset(data: bytes) -> str | None:
    """The offset of the last change message in ``data`` (``<lsn>_<op_position>``), if any:
    where a stream that ended after it resumes."""
    positions = _CHANGE_POSITION.findall(data)
    if not positions:
        return None
    lsn, op_position = positions[-1]
    return f"{int(lsn)}_{int(op_position)}"


def read_stdin() -> None:
    scanner = Scanner()
    while chunk := os.read(0, 65536):
        _report(scanner.feed(chunk, time.time()))
        scanner.keep_tail()


def follow_sse(port: int, table: str, handle: str, offset: str) -> None:
    scanner = Scanner()
    opened = False
    while True:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            path = (
                f"/v1/shape?table={table}&handle={handle}&offset={offset}&live=true&live_sse=true"
            )
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            while chunk := sock.recv(65536):
                if not opened:
                    opened = True
                    sys.stdout.write("open\n")
                    sys.stdout.flush()
                _report(scanner.feed(chunk, time.time()))
                offset = last_change_offset(scanner.keep_tail()) or offset


def main(argv: list[str]) -> int:
    if argv[:1] == ["stdin"] and len(argv) == 1:
        read_stdin()
        return 0
    if argv[:1] == ["sse"] and len(argv) == 5:
        follow_sse(int(argv[1]), argv[2], argv[3], argv[4])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
