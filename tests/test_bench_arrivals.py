"""The arrival reader of the ``write-to-client`` benchmark (``bench.arrivals``)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bench.arrivals import Scanner, last_change_offset

ROOT = Path(__file__).resolve().parent.parent


def test_a_row_cut_by_the_end_of_a_read_is_found_once_in_the_next() -> None:
    scanner = Scanner()
    assert scanner.feed(b'{"body":"w2c-row-7-end"} {"body":"w2c-ro', 1.0) == [(7, 1.0)]
    scanner.keep_tail()
    assert scanner.feed(b'w-8-end"}', 2.0) == [(8, 2.0)]
    scanner.keep_tail()
    assert scanner.feed(b"nothing new", 3.0) == []


def test_a_stream_resumes_after_the_last_change_it_carried() -> None:
    events = (
        b'data: {"headers":{"operation":"insert","relation":["public","t"],"lsn":"120",'
        b'"op_position":4,"txids":[9]},"key":"k","value":{}}\n\n'
        b'data: {"headers":{"operation":"insert","relation":["public","t"],"lsn":"130",'
        b'"op_position":0,"txids":[10],"last":true},"key":"k2","value":{}}\n\n'
        b'data: {"headers":{"control":"up-to-date","global_last_seen_lsn":"130"}}\n\n'
    )
    assert last_change_offset(events) == "130_0"
    assert last_change_offset(b'data: {"headers":{"control":"up-to-date"}}\n\n') is None


def test_the_reader_of_standard_input_prints_each_row_once_with_its_arrival_time() -> None:
    before = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "bench.arrivals", "stdin"],
        cwd=ROOT,
        input=b"xx w2c-row-1-end yy w2c-row-2-end w2c-row-1-end",
        capture_output=True,
        timeout=30,
        check=True,
    )
    lines = [line.split() for line in done.stdout.decode().splitlines()]
    assert [row for row, _at in lines] == ["1", "2"]
    assert all(before <= float(at) <= time.time() for _row, at in lines)


def test_the_reader_refuses_arguments_it_does_not_know() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.arrivals", "tcp"],
        cwd=ROOT,
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert b"python -m bench.arrivals stdin" in done.stderr
