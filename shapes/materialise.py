"""Fold a shape log into the rows it describes.

Layer: ``shapes`` (pure). Applies change messages in order: inserts set a row, updates merge the
changed columns into it, deletes remove it; a ``must-refetch`` clears everything. Used by the
Python client and by the oracle tests, which compare the result with ``SELECT``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Message = Mapping[str, Any]


class MaterialisedShape:
    """Current rows of a shape, keyed by their protocol key."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.up_to_date = False

    def apply(self, message: Message) -> None:
        """Apply one change or control message."""
        headers = message.get("headers", {})
        control = headers.get("control")
        if control is not None:
            if control == "must-refetch":
                self.rows.clear()
                self.up_to_date = False
            elif control == "up-to-date":
                self.up_to_date = True
            return
        key = message["key"]
        operation = headers.get("operation")
        if operation == "insert":
            self.rows[key] = dict(message["value"])
        elif operation == "update":
            self.rows.setdefault(key, {}).update(message["value"])
        elif operation == "delete":
            self.rows.pop(key, None)

    def apply_all(self, messages: Iterable[Message]) -> None:
        """Apply messages in order."""
        for message in messages:
            self.apply(message)
