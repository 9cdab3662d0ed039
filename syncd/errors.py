"""Errors on syncd's side or upstream (Postgres); ``shapes.errors`` holds the client's faults.

Also the one place where a failed query over a table's rows (a shape's snapshot, a subset, the
publishing of a table) is translated into what it means for the request: :func:`row_query_errors`.
Postgres's own message text never travels further than the log, since it may quote row values
(``invalid input syntax for type integer: "<a value>"``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import psycopg
from psycopg import errors as pg_errors

_INSUFFICIENT_PRIVILEGE = "42501"


class SyncdError(Exception):
    """Base class of failures that are not the client's fault."""


class DatabaseUnavailable(SyncdError):
    """Postgres could not be reached while serving a request; answered with 503."""


class ShapeGone(SyncdError):
    """The shape was deleted or invalidated while a request was being served."""


class SlotConflict(SyncdError):
    """The configured replication slot exists but belongs to another database or plugin."""


class SlotInUse(SlotConflict):
    """Another process streams from the configured replication slot; the message names its
    walsender (pid, application, client) and what to do."""


class SchemaChanged(SyncdError):
    """A table, column, function or type a query needed vanished while it ran (DDL raced the
    request): the shape is invalidated and the client starts again (409 must-refetch)."""


class QueryFailed(SyncdError):
    """A query over the table failed for a reason that retrying may cure (a cancelled statement,
    a resource limit). Carries only the SQLSTATE, never Postgres's message."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"{condition_name(sqlstate)} (SQLSTATE {sqlstate})")
        self.sqlstate = sqlstate


class ReadNotAllowed(QueryFailed):
    """syncd's database role may not read the table (``insufficient_privilege``): a 400 that
    says how the table's owner grants it, since retrying cannot help."""

    def __init__(self) -> None:
        super().__init__(_INSUFFICIENT_PRIVILEGE)

    @property
    def description(self) -> str:
        """What the client is told: who must do what."""
        return (
            "syncd's database role may not read the table (insufficient_privilege). As the "
            "table's owner, run sql/002_publish_table.sql (it grants SELECT to syncd's role); "
            "then retry"
        )


class RowsRejected(SyncdError):
    """Postgres could not evaluate the request's expression on some row (a cast that fails on a
    value, a division by zero): the client's fault, answered with a 400 that names the condition
    and the parameter at fault, but never the row's data."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"{condition_name(sqlstate)} (SQLSTATE {sqlstate})")
        self.sqlstate = sqlstate

    @property
    def description(self) -> str:
        """What the client is told: the condition, without any value."""
        return (
            "evaluating it on the table's rows failed with "
            f"{condition_name(self.sqlstate)} (SQLSTATE {self.sqlstate})"
        )


_VANISHED = (
    pg_errors.UndefinedTable,
    pg_errors.UndefinedColumn,
    pg_errors.UndefinedFunction,
    pg_errors.UndefinedObject,
)
_ROW_EVALUATION_CLASSES = ("22", "54", "0A")
"""SQLSTATE classes raised while evaluating an expression on values: data exceptions, program
limits (``array size exceeds the maximum``), features not supported (``cannot convert NaN to
integer``)."""
_CONNECTION_LOST = ("08", "57P")
"""Connection exceptions; the server shutting down or crashing (``57P01``-``57P05``). Errors
without a SQLSTATE come from the client library: the connection broke."""


@contextlib.contextmanager
def row_query_errors() -> Iterator[None]:
    """Translate a failure of a query over a table's rows into syncd's terms.

    Raises:
        SchemaChanged: the table, a column, function or type is gone (dropped mid-request).
        RowsRejected: the expression fails on some row's value.
        ReadNotAllowed: syncd's role may not read the table.
        DatabaseUnavailable: the connection broke.
        QueryFailed: any other error Postgres reported.
    """
    try:
        yield
    except _VANISHED as exc:
        raise SchemaChanged(f"{condition_name(exc.sqlstate or '')}: the schema changed") from exc
    except psycopg.Error as exc:
        sqlstate = exc.sqlstate
        if sqlstate is None or sqlstate.startswith(_CONNECTION_LOST):
            raise DatabaseUnavailable(type(exc).__name__) from exc
        if sqlstate == _INSUFFICIENT_PRIVILEGE:
            raise ReadNotAllowed() from exc
        if sqlstate[:2] in _ROW_EVALUATION_CLASSES:
            raise RowsRejected(sqlstate) from exc
        raise QueryFailed(sqlstate) from exc


def condition_name(sqlstate: str) -> str:
    """Postgres's condition name for a SQLSTATE (``22P02`` -> ``invalid_text_representation``)."""
    try:
        name = pg_errors.lookup(sqlstate).__name__
    except KeyError:
        return "error"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
