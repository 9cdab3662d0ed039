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


class EvaluationError(ValueError):
    """Postgres would raise an error evaluating a ``where`` clause on one row.

    Not a :class:`ShapeError`: the request was valid, the row is what Postgres would refuse
    (division by zero, a value out of range, ...). ``condition`` is the Postgres condition name
    of the SQLSTATE Postgres raises (``division_by_zero``, ``numeric_value_out_of_range``, ...).
    The message never quotes row data, so it can be logged and shown to clients.
    """

    def __init__(self, message: str, condition: str = "data_exception") -> None:
        super().__init__(message)
        self.message = message
        self.condition = condition


class RefusedClause(WhereClauseError):
    """A clause Postgres would run, refused because syncd cannot decide it exactly as Postgres.

    The message says why; the list of such refusals is in :mod:`shapes.where_compile`.
    """
