"""Refusals: every 4xx the app answers, as one exception type and one JSON body.

Layer: ``web``. The body has the shape syncd uses for its errors, ``{"message": ..., "errors":
{field: [reasons]}}`` (``errors`` may be empty), so clients handle both the same way.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

NO_STORE = {"cache-control": "no-store"}


class ApiError(Exception):
    """A refusal with its HTTP status, message and optional per-field reasons."""

    def __init__(
        self,
        status: int,
        message: str,
        errors: dict[str, list[str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or {}
        self.headers = headers or {}

    def response(self) -> Response:
        """The JSON response for this refusal."""
        body: dict[str, Any] = {"message": self.message, "errors": self.errors}
        return JSONResponse(body, self.status, headers={**NO_STORE, **self.headers})


async def api_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette exception handler for :class:`ApiError`."""
    assert isinstance(exc, ApiError)
    return exc.response()


def unauthorized() -> ApiError:
    """No valid session."""
    return ApiError(401, "Sign in first", headers={"www-authenticate": "Bearer"})


def not_found(what: str) -> ApiError:
    """``what`` does not exist (or is not visible to the caller)."""
    return ApiError(404, f"No such {what}")


def forbidden(message: str) -> ApiError:
    """The caller may not do this."""
    return ApiError(403, message)


def conflict(message: str) -> ApiError:
    """The request contradicts the current state."""
    return ApiError(409, message)
