"""Shape definitions: which table, which rows (``where`` + ``params``), which columns.

Layer: ``shapes`` (pure). Parses the ``table`` and ``columns`` request parameters with the
reference server's identifier rules and gives every definition a canonical, hashable form so
that equal definitions share one shape handle.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from shapes.errors import InvalidRequest

MAX_IDENTIFIER_LENGTH = 63

Replica = Literal["default", "full"]
LogMode = Literal["full", "changes_only"]


@dataclass(frozen=True, slots=True)
class CanonicalShape:
    """A shape as the server identifies it: schema and table resolved, ``where`` as written,
    columns sorted (``None`` meaning every column).

    Requests that differ only in spelling (quoting, column order, a default schema) map to the
    same ``CanonicalShape`` and so to the same log. Clients describe a shape with
    :class:`shapes.client.ShapeDefinition` instead: the query parameters they send.
    """

    schema: str
    table: str
    where: str | None = None
    params: tuple[tuple[str, str], ...] = ()
    columns: tuple[str, ...] | None = None
    replica: Replica = "default"
    log: LogMode = "full"
    params_map: Mapping[str, str] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params_map", dict(self.params))

    @property
    def relation(self) -> tuple[str, str]:
        """``(schema, table)``."""
        return (self.schema, self.table)

    def to_json(self) -> dict[str, object]:
        """A JSON-able form, stored next to the shape log."""
        return {
            "schema": self.schema,
            "table": self.table,
            "where": self.where,
            "params": dict(self.params),
            "columns": list(self.columns) if self.columns is not None else None,
            "replica": self.replica,
            "log": self.log,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> CanonicalShape:
        """Inverse of :meth:`to_json`."""
        params = data.get("params") or {}
        columns = data.get("columns")
        assert isinstance(params, dict)
        return cls(
            schema=str(data["schema"]),
            table=str(data["table"]),
            where=None if data.get("where") is None else str(data["where"]),
            params=tuple(sorted((str(k), str(v)) for k, v in params.items())),
            columns=None if columns is None else tuple(str(c) for c in columns),  # type: ignore[attr-defined]
            replica="full" if data.get("replica") == "full" else "default",
            log="changes_only" if data.get("log") == "changes_only" else "full",
        )

    def digest(self) -> str:
        """A stable hash of the definition; the first part of its handles."""
        text = repr((self.schema, self.table, self.where, self.params, self.columns))
        text += repr((self.replica, self.log))
        return str(int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big"))


def split_identifiers(text: str, field_name: str, separator: str) -> list[tuple[str, bool]]:
    """Split ``text`` on ``separator`` outside double quotes.

    Returns ``(name, was_quoted)`` pairs with quotes removed and ``""`` unescaped; unquoted
    names are lower-cased as Postgres does.

    Raises:
        InvalidRequest: for empty or unterminated identifiers, and for unquoted identifiers
            holding special characters.
    """
    parts: list[tuple[str, bool]] = []
    i, n = 0, len(text)
    while True:
        name, quoted, i = _read_identifier(text, i, field_name)
        parts.append((name, quoted))
        if i >= n:
            return parts
        if text[i] != separator:
            raise InvalidRequest(field_name, f"Invalid identifier: {text}")
        i += 1


def _read_identifier(text: str, i: int, field_name: str) -> tuple[str, bool, int]:
    n = len(text)
    if i < n and text[i] == '"':
        chars: list[str] = []
        i += 1
        while True:
            if i >= n:
                raise InvalidRequest(field_name, f"Invalid unterminated quoted identifier: {text}")
            if text[i] == '"':
                if i + 1 < n and text[i + 1] == '"':
                    chars.append('"')
                    i += 2
                    continue
                i += 1
                break
            chars.append(text[i])
            i += 1
        name = "".join(chars)
        if not name:
            raise InvalidRequest(field_name, "Invalid zero-length delimited identifier")
        return _check_length(name, field_name), True, i
    start = i
    while i < n and text[i] not in ",.":
        i += 1
    raw = text[start:i].strip()
    if not raw:
        raise InvalidRequest(field_name, "Invalid zero-length delimited identifier")
    if not _is_plain_identifier(raw):
        message = f"Invalid unquoted identifier contains special characters: {raw}"
        raise InvalidRequest(field_name, message)
    return _check_length(raw.lower(), field_name), False, i


def _is_plain_identifier(raw: str) -> bool:
    first = raw[0]
    if not (first.isalpha() or first == "_"):
        return False
    return all(ch.isalnum() or ch in "_$" for ch in raw)


def _check_length(name: str, field_name: str) -> str:
    if len(name.encode()) > MAX_IDENTIFIER_LENGTH:
        raise InvalidRequest(field_name, f"Identifier too long: {name}")
    return name


def parse_table(text: str) -> tuple[str, str]:
    """Parse the ``table`` parameter into ``(schema, table)``; ``public`` when unqualified."""
    if not text:
        raise InvalidRequest("table", "can't be blank")
    parts = split_identifiers(text, "table", ".")
    if len(parts) == 1:
        return ("public", parts[0][0])
    if len(parts) == 2:
        return (parts[0][0], parts[1][0])
    raise InvalidRequest("table", f"Invalid relation identifier, too many delimiters: {text}")


def parse_columns(text: str) -> tuple[str, ...]:
    """Parse the ``columns`` parameter into a list of names, in the order given."""
    if not text:
        raise InvalidRequest("columns", "The list of columns must not be empty")
    names = [name for name, _quoted in _split_columns(text)]
    return tuple(names)


def _split_columns(text: str) -> list[tuple[str, bool]]:
    parts: list[tuple[str, bool]] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == '"':
            name, quoted, i = _read_identifier(text, i, "columns")
        else:
            start = i
            while i < n and text[i] != ",":
                i += 1
            raw = text[start:i].strip()
            if not raw:
                raise InvalidRequest("columns", "Invalid zero-length delimited identifier")
            if not _is_plain_identifier(raw):
                message = f"Invalid unquoted identifier contains special characters: {raw}"
                raise InvalidRequest("columns", message)
            name, quoted = _check_length(raw.lower(), "columns"), False
        parts.append((name, quoted))
        if i >= n:
            return parts
        if text[i] != ",":
            raise InvalidRequest("columns", f"Invalid identifier: {text}")
        i += 1
        if i >= n:
            raise InvalidRequest("columns", "Invalid zero-length delimited identifier")


def quote_ident(name: str) -> str:
    """Quote an identifier the SQL way (``"a""b"``)."""
    return '"' + name.replace('"', '""') + '"'
