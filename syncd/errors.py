"""Errors on syncd's side or upstream (Postgres); ``shapes.errors`` holds the client's faults."""

from __future__ import annotations


class SyncdError(Exception):
    """Base class of failures that are not the client's fault."""


class DatabaseUnavailable(SyncdError):
    """Postgres could not be reached while serving a request; answered with 503."""


class ShapeGone(SyncdError):
    """The shape was deleted or invalidated while a request was being served."""


class SlotConflict(SyncdError):
    """The configured replication slot exists but belongs to another database or plugin."""
