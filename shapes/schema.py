"""Table and column descriptions, as read from the Postgres catalog.

Layer: ``shapes`` (pure). ``syncd`` fills these from ``pg_attribute``/``pg_type``; the where
parser types column references with them and the HTTP layer renders ``electric-schema`` from them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

MAX_LISTED_COLUMNS: Final = 50
"""The most column names a 400 for an unknown column lists."""
_PLAIN_NAME: Final = re.compile(r"[a-z_][a-z0-9_$]*")


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a table.

    ``type_name`` is the element type's ``typname`` for arrays (``dims > 0``), otherwise the
    column type's own name (enums, domains and composites keep their own names). ``category`` is
    ``pg_type.typcategory`` of that element type (``N`` numeric, ``S`` string, ``B`` boolean,
    ``D`` date/time, ``E`` enum, ``U`` user-defined, ...). ``base_type_name`` is the built-in type
    a domain is based on (equal to ``type_name`` for non-domains).
    """

    name: str
    type_name: str
    type_oid: int = 0
    dims: int = 0
    not_null: bool = False
    pk_index: int | None = None
    type_mod: int = -1
    category: str = "U"
    base_type_name: str = ""

    def schema_entry(self) -> dict[str, Any]:
        """The column's entry in the ``electric-schema`` header."""
        entry: dict[str, Any] = {"type": self.type_name}
        if self.dims:
            entry["dims"] = self.dims
        if self.pk_index is not None:
            entry["pk_index"] = self.pk_index
        if self.not_null:
            entry["not_null"] = True
        entry.update(_type_modifiers(self.type_name, self.type_mod))
        return entry


def _type_modifiers(type_name: str, type_mod: int) -> dict[str, int]:
    if type_mod < 0:
        return {}
    if type_name in ("varchar", "bpchar"):
        key = "max_length" if type_name == "varchar" else "length"
        return {key: type_mod - 4}
    if type_name in ("bit", "varbit"):
        return {"length": type_mod}
    if type_name in ("time", "timetz", "timestamp", "timestamptz"):
        return {"precision": type_mod}
    if type_name == "numeric":
        value = type_mod - 4
        return {"precision": (value >> 16) & 0xFFFF, "scale": value & 0xFFFF}
    return {}


@dataclass(frozen=True, slots=True)
class Table:
    """A table: its qualified name, relation OID and columns in attribute order."""

    schema: str
    name: str
    columns: tuple[Column, ...]
    oid: int = 0
    replica_identity: str = "d"
    by_name: Mapping[str, Column] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {c.name: c for c in self.columns})

    @property
    def primary_key(self) -> tuple[str, ...]:
        """PK column names in key order; all columns (by name) for a table without a PK."""
        pk = sorted((c for c in self.columns if c.pk_index is not None), key=_pk_position)
        if pk:
            return tuple(c.name for c in pk)
        return tuple(sorted(c.name for c in self.columns))


def _pk_position(column: Column) -> int:
    return column.pk_index if column.pk_index is not None else 0


def columns_hint(names: Iterable[str]) -> str:
    """What a 400 for an unknown column adds: the columns the table has, quoted where SQL
    needs it (``the table's columns are: id, title, "Due Date"``)."""
    shown = [n if _PLAIN_NAME.fullmatch(n) else '"' + n.replace('"', '""') + '"' for n in names]
    more = len(shown) - MAX_LISTED_COLUMNS
    listed = ", ".join(shown[:MAX_LISTED_COLUMNS]) + (f" and {more} more" if more > 0 else "")
    return f"the table's columns are: {listed}" if shown else "the table has no columns"
