"""The pure rules of retention, of request labels and of JSON log lines."""

from __future__ import annotations

import json
import logging
import sys
from types import SimpleNamespace
from typing import Any

from syncd.log_setup import JsonFormatter
from syncd.metrics import request_mode
from syncd.retention import RetentionSettings, StorageUsage, bytes_to_free, eviction_order


def shape(name: str, status: str = "ready", readers: int = 0, last_used: float = 0.0) -> Any:
    return SimpleNamespace(handle=name, status=status, readers=readers, last_used=last_used)


def test_eviction_takes_unread_shapes_first_then_the_least_recently_used() -> None:
    shapes = [
        shape("read-old", readers=1, last_used=1),
        shape("new", last_used=30),
        shape("snapshotting", status="snapshotting", last_used=0),
        shape("old", last_used=10),
        shape("read-new", readers=2, last_used=40),
    ]
    order = [s.handle for s in eviction_order(shapes)]
    assert order == ["old", "new", "read-old", "read-new"]


def test_bytes_to_free_keeps_both_the_quota_and_the_free_space_floor() -> None:
    usage = StorageUsage({"a": 600, "b": 300}, other_bytes=50, free_bytes=1000, measured=0)
    assert usage.total == 950
    assert bytes_to_free(usage, RetentionSettings()) == 0
    assert bytes_to_free(usage, RetentionSettings(storage_quota=1000)) == 0
    assert bytes_to_free(usage, RetentionSettings(storage_quota=700)) == 200
    assert bytes_to_free(usage, RetentionSettings(min_free_bytes=1500)) == 500
    both = RetentionSettings(storage_quota=700, min_free_bytes=1100)
    assert bytes_to_free(usage, both) == 200


def test_request_modes_are_a_small_fixed_set() -> None:
    def mode(method: str, query: bytes) -> str:
        return request_mode({"method": method, "query_string": query})

    assert mode("GET", b"table=items&offset=-1") == "initial"
    assert mode("GET", b"table=items&offset=0_0&handle=h") == "catch_up"
    assert mode("GET", b"handle=h&live=true&offset=1_0&table=items") == "live"
    assert mode("GET", b"experimental_live_sse=true&live=true&offset=1_0") == "sse"
    assert mode("HEAD", b"live_sse=true&live=true") == "sse"
    assert mode("DELETE", b"table=items") == "other"
    assert mode("POST", b"table=items&offset=-1") == "other"


def test_json_log_lines_hold_the_message_extras_and_exception() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord("syncd.engine", logging.INFO, "x.py", 1, "shape %s", ("h1",), None)
    record.handle = "h1"
    record.odd = object()
    data = json.loads(formatter.format(record))
    assert data["message"] == "shape h1"
    assert (data["level"], data["logger"], data["handle"]) == ("INFO", "syncd.engine", "h1")
    assert data["time"].endswith("Z") and "T" in data["time"]
    assert data["odd"].startswith("<object")
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("syncd", logging.ERROR, "x.py", 2, "failed", (), sys.exc_info())
    data = json.loads(formatter.format(failed))
    assert "ValueError: boom" in data["exception"]
