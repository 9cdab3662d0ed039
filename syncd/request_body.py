"""Reading a request's body: bounded in size, parsed as strict JSON.

Layer: ``syncd``.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import ClientDisconnect, Request

MAX_BODY_BYTES = 8 * 1024 * 1024
DRAIN_BYTES = 64 * 1024 * 1024
"""How much of a body over ``MAX_BODY_BYTES`` is read (and dropped) before the 413."""


def parse_json_body(body: bytes) -> Any:
    """The JSON value of a request body (``{}`` when blank).

    Raises:
        ValueError: when it is not JSON, nests too deeply, holds ``NaN``/``Infinity`` or a
            string that is no Unicode text (a lone surrogate, ``"\\ud800"``).
    """
    if not body.strip():
        return {}
    try:
        data = json.loads(body, parse_constant=_reject_constant)
        json.dumps(data, ensure_ascii=False).encode()
    except RecursionError:
        raise ValueError("nested too deeply") from None
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request's body, or ``None`` when it is longer than ``limit`` bytes.

    A body over the limit is read on and dropped, up to ``DRAIN_BYTES`` in all, so that the
    client, still sending, reads the 413 instead of a reset connection; past that (or when the
    declared length is past it) the rest is left unread and the connection closes. Either way
    it costs no memory.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and len(declared) < 20 and int(declared) > DRAIN_BYTES:
        return None
    parts: list[bytes] = []
    size = 0
    try:
        async for part in request.stream():
            size += len(part)
            if size > DRAIN_BYTES:
                return None
            if size <= limit:
                parts.append(part)
    except ClientDisconnect:
        pass
    return None if size > limit else b"".join(parts)
