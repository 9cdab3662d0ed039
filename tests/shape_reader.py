"""A minimal protocol reader for tests: follow a shape over HTTP with httpx, fold its log."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from shapes.materialise import MaterialisedShape


@dataclass
class ShapeCursor:
    """Where a reader is in a shape: its handle, offset and the rows so far."""

    params: dict[str, str]
    handle: str | None = None
    offset: str = "-1"
    shape: MaterialisedShape = field(default_factory=MaterialisedShape)
    refetches: int = 0
    requests: int = 0
    seen: set[tuple[str, int]] = field(default_factory=set)

    @property
    def rows(self) -> dict[str, dict[str, Any]]:
        return self.shape.rows


def catch_up(
    client: httpx.Client,
    url: str,
    cursor: ShapeCursor,
    *,
    min_lsn: int = 0,
    max_requests: int = 10_000,
) -> None:
    """Issue non-live requests until the shape is up to date; follows 409s.

    With ``min_lsn``, keeps going until the server's ``global_last_seen_lsn`` reaches it, so
    that every transaction committed before that WAL position has been processed.
    """
    for _ in range(max_requests):
        query = dict(cursor.params, offset=cursor.offset)
        if cursor.handle is not None:
            query["handle"] = cursor.handle
        answer = client.get(url, params=query)
        cursor.requests += 1
        if answer.status_code == 409:
            cursor.refetches += 1
            cursor.handle = answer.headers.get("electric-handle")
            cursor.offset = "-1"
            cursor.shape = MaterialisedShape()
            cursor.seen.clear()
            continue
        assert answer.status_code == 200, (answer.status_code, answer.text)
        messages = json.loads(answer.content)
        for message in messages:
            headers = message["headers"]
            if "lsn" in headers:
                position = (headers["lsn"], headers["op_position"])
                assert position not in cursor.seen, f"change {position} delivered twice"
                cursor.seen.add(position)
        cursor.shape.apply_all(messages)
        cursor.handle = answer.headers["electric-handle"]
        cursor.offset = answer.headers["electric-offset"]
        last = messages[-1].get("headers", {}) if messages else {}
        if last.get("control") == "up-to-date":
            assert "electric-up-to-date" in answer.headers
            if int(last["global_last_seen_lsn"]) >= min_lsn:
                return
            time.sleep(0.02)
    raise AssertionError("shape never became up to date")
