"""The headers a route's caller gets: private caching, ETags bound to the caller's scope, and
CORS from the routes' own settings.

Layer: ``syncd``. ``Cache-Control`` becomes ``private`` (no ``s-maxage``) and an upstream ETag
gets the caller's :func:`scope_tag`, so that a validator issued to one caller never earns
another a 304; CORS headers go only to the allowed origins (:class:`Cors`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

from syncd.responses import EXPOSED_HEADERS
from syncd.route_scope import ShapeScope


def private_cache_control(value: str | None) -> str:
    """``Cache-Control`` for one caller's eyes: ``public`` becomes ``private`` and ``s-maxage``
    (a shared cache's lifetime) goes; the other directives (``max-age``, ...) stay, so the
    caller's own cache behaves as the protocol expects. No value gives ``private, no-store``."""
    if not value:
        return "private, no-store"
    kept = [
        directive
        for part in value.split(",")
        if (directive := part.strip())
        and directive.lower() not in ("public", "private")
        and not directive.lower().startswith("s-maxage")
    ]
    return ", ".join(["private", *kept])


ETAG_SEPARATOR: Final = "~"


def scope_tag(scope: ShapeScope) -> str:
    """A short digest of ``scope``, appended to every ETag the routes hand out, so that a
    validator given to one caller never revalidates (304) a response for another."""
    columns = None if scope.columns is None else list(scope.columns)
    identity = json.dumps([scope.key, scope.where, list(scope.params), columns])
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def bound_etag(etag: str, tag: str) -> str | None:
    """The upstream's strong ETag ``"X"`` as ``"X~tag"`` (``None`` for anything else)."""
    if len(etag) < 2 or not (etag.startswith('"') and etag.endswith('"')):
        return None
    return f'"{etag[1:-1]}{ETAG_SEPARATOR}{tag}"'


def unbound_if_none_match(value: str, tag: str) -> str | None:
    """The validators of ``If-None-Match`` that were handed to this scope, as the upstream
    issued them; ``None`` when there are none."""
    suffix = ETAG_SEPARATOR + tag
    kept = [
        f'"{part[: -len(suffix)]}"'
        for raw in value.split(",")
        if (part := raw.strip().strip('"')).endswith(suffix)
    ]
    return ", ".join(kept) or None


DEFAULT_ALLOWED_HEADERS: Final = ("authorization", "content-type")
DEFAULT_VARY: Final = ("authorization", "cookie")


@dataclass(frozen=True)
class Cors:
    """Who may call the routes from another origin (browsers' CORS)."""

    origins: frozenset[str]
    headers: tuple[str, ...]
    credentials: bool

    def allow_origin(self, request: Request) -> str | None:
        """The ``Access-Control-Allow-Origin`` for ``request`` (``None``: no CORS headers)."""
        origin = request.headers.get("origin")
        if "*" in self.origins:
            return "*"
        return origin if origin is not None and origin in self.origins else None

    def headers_for(self, request: Request) -> dict[str, str]:
        allowed = self.allow_origin(request)
        if allowed is None:
            return {}
        headers = {
            "access-control-allow-origin": allowed,
            "access-control-expose-headers": EXPOSED_HEADERS,
        }
        if self.credentials and allowed != "*":
            headers["access-control-allow-credentials"] = "true"
        return headers

    def preflight(self, request: Request) -> Response:
        """204; allows this origin (when listed) the routes' methods and the listed headers,
        never whatever the browser asks for."""
        headers = {"vary": "Origin", **self.headers_for(request)}
        if "access-control-allow-origin" in headers:
            headers["access-control-allow-methods"] = "GET, HEAD, POST, OPTIONS"
            headers["access-control-allow-headers"] = ", ".join(self.headers)
            headers["access-control-max-age"] = "86400"
        return Response(status_code=204, headers=headers)
