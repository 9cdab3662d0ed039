"""Fold a shape log into the rows it describes.

Layer: ``shapes`` (pure). Applies change messages in order: inserts set a row, updates merge the
changed columns into it, deletes remove it; a ``must-refetch`` clears everything. Used by the
Python client and by the oracle tests, which compare the result with ``SELECT``.

Shapes whose ``where`` has subqueries also send ``move-out`` and ``move-in`` events. Each row
carries ``tags`` (per disjunct of the clause, ``/``-separated slots, one per position) and
``active_conditions`` (per position); an event's patterns name a position and a slot value. A
move-out turns that position off in every row whose slot matches, and a row goes when no
disjunct has all of its positions on; a move-in turns it on again (new rows follow as inserts).
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
        self._tags: dict[str, set[str]] = {}
        self._active: dict[str, list[bool]] = {}
        self._by_slot: dict[tuple[int, str], set[str]] = {}
        self._disjuncts: list[list[int]] | None = None

    def apply(self, message: Message) -> None:
        """Apply one change, control or event message."""
        headers = message.get("headers", {})
        control = headers.get("control")
        if control is not None:
            if control == "must-refetch":
                self.rows.clear()
                self._tags.clear()
                self._active.clear()
                self._by_slot.clear()
                self._disjuncts = None
                self.up_to_date = False
            elif control == "up-to-date":
                self.up_to_date = True
            return
        event = headers.get("event")
        if event is not None:
            self._move(event, headers.get("patterns") or [])
            return
        key = message["key"]
        operation = headers.get("operation")
        if operation == "insert":
            self.rows[key] = dict(message["value"])
        elif operation == "update":
            self.rows.setdefault(key, {}).update(message["value"])
        elif operation == "delete":
            self.rows.pop(key, None)
            self._forget_tags(key)
            return
        self._track_tags(key, headers)

    # -- subquery shapes ------------------------------------------------------------------------

    def _track_tags(self, key: str, headers: Mapping[str, Any]) -> None:
        tags = headers.get("tags")
        if tags is None:
            return
        if self._disjuncts is None and tags:
            self._disjuncts = [[i for i, slot in enumerate(tag.split("/")) if slot] for tag in tags]
        held = self._tags.setdefault(key, set())
        for tag in headers.get("removed_tags") or ():
            if tag in held:
                held.discard(tag)
                self._index(key, tag, add=False)
        for tag in tags:
            if tag not in held:
                held.add(tag)
                self._index(key, tag, add=True)
        active = headers.get("active_conditions")
        if active:
            self._active[key] = list(active)

    def _index(self, key: str, tag: str, *, add: bool) -> None:
        for position, slot in enumerate(tag.split("/")):
            if not slot:
                continue
            if add:
                self._by_slot.setdefault((position, slot), set()).add(key)
            else:
                keys = self._by_slot.get((position, slot))
                if keys is not None:
                    keys.discard(key)

    def _forget_tags(self, key: str) -> None:
        for tag in self._tags.pop(key, ()):
            self._index(key, tag, add=False)
        self._active.pop(key, None)

    def _move(self, event: str, patterns: Iterable[Mapping[str, Any]]) -> None:
        for pattern in patterns:
            position, value = int(pattern["pos"]), str(pattern["value"])
            for key in list(self._by_slot.get((position, value), ())):
                active = self._active.get(key)
                if active is None:  # no conditions: the tag itself goes
                    if event == "move-out":
                        self._drop_tags_at(key, position, value)
                    continue
                if position < len(active):
                    active[position] = event == "move-in"
                if event == "move-out" and not self._included(active):
                    self.rows.pop(key, None)
                    self._forget_tags(key)

    def _drop_tags_at(self, key: str, position: int, value: str) -> None:
        held = self._tags.get(key, set())
        for tag in [t for t in held if _slot(t, position) == value]:
            held.discard(tag)
            self._index(key, tag, add=False)
        if not held:
            self.rows.pop(key, None)
            self._forget_tags(key)

    def _included(self, active: list[bool]) -> bool:
        disjuncts = self._disjuncts or [list(range(len(active)))]
        return any(all(p < len(active) and active[p] for p in d) for d in disjuncts)

    def apply_all(self, messages: Iterable[Message]) -> None:
        """Apply messages in order."""
        for message in messages:
            self.apply(message)


def _slot(tag: str, position: int) -> str:
    slots = tag.split("/")
    return slots[position] if position < len(slots) else ""
