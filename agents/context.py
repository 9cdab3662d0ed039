"""The LLM context: a thread's rows (members, events, facts) rendered as the single user message
an agent sends to the model. Pure functions of their arguments.

Layout::

    Here's everything that happened so far:

    <members> ... </members>          one entry per member: id, name, role, fact count
    <facts> ... </facts>              the newest facts, when there are any
    (N earlier events omitted)        only when the budget left some out
    <user_message> ... </user_message>
    <ask_user_about_themselves> ... </ask_user_about_themselves>
    ...
    What's the next step?

Each block is a tag line, the block's fields as an indented YAML-like map with sorted keys, and
the closing tag. Events come in ``seq`` order; ``do_nothing`` calls are left out (they say
nothing). Every string written by a person or a model is encoded as a JSON string literal with
``<`` and ``>`` escaped, so it stays on its line and cannot open or close a tag; keys that are
not plain identifiers are encoded the same way, and a tag name that is not a plain identifier is
replaced by a generic one. So the structure the model sees is exactly the one rendered here.

Budget: the newest ``keep_newest`` events are always rendered; older ones are added newest first
while the text stays within ``max_chars``; the rest are counted in an "omitted" line.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

HEADER = "Here's everything that happened so far:"
FOOTER = "What's the next step?"
INDENT = "  "
PLAIN_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
SILENT_TOOLS = frozenset({"do_nothing"})


@dataclass(frozen=True)
class UserRow:
    id: uuid.UUID
    name: str
    kind: str
    """``human`` or ``agent``."""


@dataclass(frozen=True)
class MembershipRow:
    user_id: uuid.UUID
    role: str


@dataclass(frozen=True)
class EventRow:
    id: uuid.UUID
    seq: int
    user_id: uuid.UUID
    kind: str
    """``system``, ``text``, ``tool_use`` or ``tool_result``."""
    data: Mapping[str, Any]
    at: float = 0.0
    """``inserted_at`` as seconds since the epoch (used for debouncing, not rendered)."""
    data_json: bytes | None = field(default=None, compare=False, repr=False)
    """``data`` as JSON with sorted keys, when the reader knows it is JSON (a jsonb column):
    the key of the remembered block, so rendering need not encode it again."""


@dataclass(frozen=True)
class FactRow:
    id: uuid.UUID
    subject_id: uuid.UUID
    source_event_id: uuid.UUID
    predicate: str
    object: str
    category: str
    confidence: float
    disputed: bool
    inserted_at_order: int = 0
    """Position for "newest" among facts (e.g. the row's order by ``inserted_at``, ``id``)."""


@dataclass(frozen=True)
class ThreadState:
    """The rows of one thread, as one consistent snapshot."""

    users: Mapping[uuid.UUID, UserRow]
    memberships: Sequence[MembershipRow]
    events: Sequence[EventRow]
    facts: Sequence[FactRow]


@dataclass(frozen=True)
class Budget:
    max_chars: int = 60_000
    keep_newest: int = 1
    max_facts: int = 60


@dataclass(frozen=True)
class RenderedContext:
    text: str
    event_ids: tuple[uuid.UUID, ...]
    """The events rendered, oldest first."""
    omitted_events: int


# --- scalars and maps -------------------------------------------------------------------------


def quote(text: str) -> str:
    """``text`` as a one-line JSON string literal that contains no ``<`` or ``>``."""
    return json.dumps(text, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")


def scalar(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return quote(str(value))


def key_text(key: object) -> str:
    text = str(key)
    return text if PLAIN_KEY.match(text) else quote(text)


def map_lines(value: Mapping[Any, Any], depth: int) -> list[str]:
    lines: list[str] = []
    for key in sorted(value, key=str):
        lines.extend(entry_lines(f"{key_text(key)}:", value[key], depth))
    return lines


def entry_lines(label: str, value: object, depth: int) -> list[str]:
    pad = INDENT * depth
    if isinstance(value, Mapping):
        return [f"{pad}{label} {{}}"] if not value else [pad + label, *map_lines(value, depth + 1)]
    if isinstance(value, list | tuple):
        if not value:
            return [f"{pad}{label} []"]
        lines = [pad + label]
        for item in value:
            lines.extend(entry_lines("-", item, depth + 1))
        return lines
    return [f"{pad}{label} {scalar(value)}"]


def block(tag: str, fields: Mapping[str, Any]) -> str:
    name = tag if PLAIN_NAME.match(tag) else "tool_use"
    return "\n".join([f"<{name}>", *map_lines(fields, 1), f"</{name}>"])


# --- blocks -----------------------------------------------------------------------------------


def person(users: Mapping[uuid.UUID, UserRow], user_id: uuid.UUID) -> dict[str, Any]:
    user = users.get(user_id)
    return {"id": str(user_id), "name": user.name if user else "unknown"}


def event_block(event: EventRow, users: Mapping[uuid.UUID, UserRow]) -> str:
    data = dict(event.data)
    author = users.get(event.user_id)
    if event.kind == "text":
        fields = {"from": str(event.user_id), "id": str(event.id), "text": data.get("text", "")}
        if author is not None:
            fields["name"] = author.name
        return block("user_message", fields)
    if event.kind == "system":
        role_key = "agent" if author is not None and author.kind == "agent" else "user"
        return block("system_message", {**data, role_key: person(users, event.user_id)})
    if event.kind == "tool_use":
        name = str(data.get("name", "tool_use"))
        return block(name, {**data, "from": str(event.user_id)})
    name = str(data.get("tool_name", "tool"))
    rest = {k: v for k, v in data.items() if k != "tool_name"}
    return block(f"{name}_result", {**rest, "from": str(event.user_id)})


def event_block_cached(event: EventRow, users: Mapping[uuid.UUID, UserRow]) -> str:
    """:func:`event_block`, remembered: an agent renders its whole thread before every call,
    and a thread's events do not change. The key is everything the block depends on: the
    event, its data as sorted JSON and its author. Data that JSON does not carry exactly (not
    the case for rows read from Postgres) is rendered afresh."""
    data = event.data_json
    if data is None:
        try:
            data = encode_sorted(event.data)
        except (TypeError, ValueError):
            return event_block(event, users)
        if msgspec.json.decode(data) != event.data:
            return event_block(event, users)
    return _event_block_of(event.id, event.user_id, event.kind, data, users.get(event.user_id))


encode_sorted = msgspec.json.Encoder(order="sorted").encode
"""JSON with sorted keys (bytes)."""


@functools.lru_cache(maxsize=50_000)
def _event_block_of(
    event_id: uuid.UUID, user_id: uuid.UUID, kind: str, data: bytes, author: UserRow | None
) -> str:
    event = EventRow(event_id, 0, user_id, kind, msgspec.json.decode(data))
    return event_block(event, {} if author is None else {user_id: author})


def members_block(state: ThreadState) -> str:
    counts: dict[uuid.UUID, int] = {}
    for fact in state.facts:
        counts[fact.subject_id] = counts.get(fact.subject_id, 0) + 1
    entries = [
        {**person(state.users, m.user_id), "role": m.role, "facts": counts.get(m.user_id, 0)}
        for m in sorted(state.memberships, key=lambda m: (m.role, str(m.user_id)))
    ]
    return block("members", {"members": entries})


def facts_block(facts: Sequence[FactRow], limit: int) -> str | None:
    if not facts or limit <= 0:
        return None
    newest = sorted(facts, key=lambda f: (f.inserted_at_order, str(f.id)))[-limit:]
    lines = [f"{INDENT}facts:"]
    for fact in newest:
        lines.extend(_fact_lines(fact))
    return "\n".join(["<facts>", *lines, "</facts>"])


@functools.lru_cache(maxsize=50_000)
def _fact_lines(fact: FactRow) -> tuple[str, ...]:
    """One fact's lines in the facts block, remembered (a fact never changes; new ones come)."""
    entry = {
        "subject": str(fact.subject_id),
        "predicate": fact.predicate,
        "object": fact.object,
        "category": fact.category,
        "confidence": round(float(fact.confidence), 2),
        "disputed": fact.disputed,
        "source_event": str(fact.source_event_id),
    }
    return tuple(entry_lines("-", entry, 2))


def visible_events(events: Iterable[EventRow]) -> list[EventRow]:
    ordered = sorted(events, key=lambda e: e.seq)
    return [
        e for e in ordered if not (e.kind == "tool_use" and str(e.data.get("name")) in SILENT_TOOLS)
    ]


def omitted_line(count: int) -> str:
    return f"({count} earlier events omitted)"


def render(state: ThreadState, budget: Budget = Budget()) -> RenderedContext:
    """The context for ``state``, within ``budget`` (see the module docstring)."""
    events = visible_events(state.events)
    blocks = [event_block_cached(e, state.users) for e in events]
    fixed = [HEADER, members_block(state)]
    facts = facts_block(state.facts, budget.max_facts)
    if facts is not None:
        fixed.append(facts)
    separator = "\n\n"
    keep = min(len(blocks), max(budget.keep_newest, 0))
    chosen = len(blocks) - keep
    size = sum(len(part) + len(separator) for part in fixed) + len(FOOTER)
    size += sum(len(b) + len(separator) for b in blocks[chosen:])
    omitted_allowance = len(omitted_line(len(blocks))) + len(separator)
    while chosen > 0:
        candidate = len(blocks[chosen - 1]) + len(separator)
        reserve = omitted_allowance if chosen > 1 else 0
        if size + candidate + reserve > budget.max_chars:
            break
        size += candidate
        chosen -= 1
    parts = list(fixed)
    if chosen:
        parts.append(omitted_line(chosen))
    parts.extend(blocks[chosen:])
    parts.append(FOOTER)
    return RenderedContext(
        separator.join(parts), tuple(e.id for e in events[chosen:]), omitted_events=chosen
    )
