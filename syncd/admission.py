"""Admission control: how many requests of each kind may be in flight at once.

Layer: ``syncd``. Initial requests (``offset=-1``) and existing ones are counted apart; a request
over its kind's limit gets the protocol's overload answer (503 with ``retry-after``).
"""

from __future__ import annotations

import random

from starlette.responses import Response

from syncd.responses import json_response

_RANDOM = random.Random()
"""This module's own generator: the process-wide one belongs to the embedding program."""


class Occupancy:
    """One request's place in its kind's count (none if it was not admitted), given back once."""

    __slots__ = ("_active", "_kind", "admitted")

    def __init__(self, active: dict[str, int], kind: str, *, admitted: bool) -> None:
        self._active = active
        self._kind = kind
        self.admitted = admitted

    def release(self) -> None:
        """Give the place back (a no-op after the first call, or if never admitted)."""
        if self.admitted:
            self.admitted = False
            self._active[self._kind] -= 1

    def __enter__(self) -> bool:
        return self.admitted

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class Admission:
    """Counts requests in flight per kind and refuses those over the limit (503)."""

    def __init__(self, limits: dict[str, int]) -> None:
        self.limits = limits
        self.active = dict.fromkeys(limits, 0)
        self.refused = dict.fromkeys(limits, 0)
        """Requests refused so far, by kind."""

    def admit(self, kind: str) -> Occupancy:
        """A context whose value says whether the request may proceed; counts it while it does.

        A small object rather than a generator-based context manager: a held long-poll keeps it
        for its whole life.
        """
        if self.active[kind] >= self.limits[kind]:
            return Occupancy(self.active, kind, admitted=False)
        self.active[kind] += 1
        return Occupancy(self.active, kind, admitted=True)

    def occupy(self, kind: str) -> Occupancy:
        """Count a response that outlives its handler (an SSE stream) until the returned place
        is released.

        Taken while the handler still holds its own count, so the request is never uncounted.
        """
        self.active[kind] += 1
        return Occupancy(self.active, kind, admitted=True)

    def refusal(self, kind: str) -> Response:
        """The protocol's overload answer."""
        self.refused[kind] += 1
        limit = self.limits[kind]
        body = {
            "code": "concurrent_request_limit_exceeded",
            "message": f"Concurrent {kind} request limit exceeded (limit: {limit}), please retry",
        }
        response = json_response(body, 503, cache="no-store")
        response.headers["surrogate-control"] = "no-store"
        response.headers["retry-after"] = str(_RANDOM.randint(6, 10))
        response.headers["electric-internal-known-error"] = "true"
        return response
