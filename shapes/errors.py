"""Errors raised by the pure shape core.

Layer: ``shapes`` (pure). Every error here is the *client's* fault: the HTTP layer turns
each into a 400 with the protocol's body ``{"message": "Invalid request", "errors": {...}}``.
"""

from __future__ import annotations


class ShapeError(Exception):
    """Base class of errors caused by a bad shape request."""

    status_hint = 400


class InvalidRequest(ShapeError):
    """A request parameter is invalid; ``field`` names the parameter as the protocol does."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def errors(self) -> dict[str, list[str]]:
        """The ``errors`` object of the protocol's 400 body."""
        return {self.field: [self.message]}


class WhereClauseError(InvalidRequest):
    """The ``where`` clause does not parse, or uses SQL outside the supported subset."""

    def __init__(self, message: str) -> None:
        super().__init__("where", message)
