"""Caching headers of the shape API: ``cache-control`` per kind of request, the
``electric-cursor`` that keeps live requests from being answered out of a cache, and ETag
revalidation (``if-none-match``).

Layer: ``syncd``.
"""

from __future__ import annotations

import math
import time
import zlib

from starlette.requests import Request

from shapes.request import ShapeRequest

CURSOR_EPOCH = 1728432000  # 2024-10-09T00:00:00Z
CACHE_INITIAL = "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746"
CACHE_LIVE = "public, max-age=5, stale-while-revalidate=5"


def catch_up_cache(max_age: int, stale_age: int) -> str:
    """``cache-control`` of a catch-up (not initial, not live) answer."""
    return f"public, max-age={max_age}, stale-while-revalidate={stale_age}"


def cache_for(req: ShapeRequest, max_age: int, stale_age: int) -> str:
    """``cache-control`` of a log answer to ``req``."""
    if req.is_initial:
        return CACHE_INITIAL
    if req.live:
        return CACHE_LIVE
    return catch_up_cache(max_age, stale_age)


def next_cursor(previous: str | None, long_poll_timeout: float) -> str:
    """The ``electric-cursor``: the end of the current long-poll interval, always increasing.

    A client whose cursor is already at (or past) that end gets one a step further on. The step
    (1 to 3,600) is a function of the cursor it sent, not a random draw: clients that share an
    HTTP cache and sent the same request get the same next cursor even when some of their
    requests reached syncd separately (nginx lets one request in 1,024 through while a key is
    being filled), so they keep asking for the same URLs and stay one cache entry.
    """
    interval = int(long_poll_timeout)
    if interval <= 0:
        return "0"
    elapsed = time.time() - CURSOR_EPOCH
    upcoming = math.ceil(elapsed / interval) * interval
    try:
        before = int(previous or "0")
    except ValueError:
        before = 0
    if upcoming > before:
        return str(upcoming)
    return str(before + 1 + zlib.crc32(str(before).encode()) % 3600)


def etag_matches(request: Request, etag: str) -> bool:
    """Whether ``if-none-match`` names ``etag`` (the answer is then a 304)."""
    given = request.headers.get("if-none-match")
    if not given:
        return False
    wanted = etag.strip('"')
    return any(part.strip().strip('"') == wanted for part in given.split(","))
