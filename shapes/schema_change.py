"""Which shapes a table's schema change invalidates.

Layer: ``shapes`` (pure). A shape survives a change that cannot alter what it sends: a column
added to a table whose shape lists its columns, or a change to a column it neither selects nor
filters on. Anything else (a selected or filtered column dropped, renamed or retyped; any change
under a shape that selects every column; the table renamed or dropped) invalidates it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

ColumnTypes = Mapping[str, tuple[int, int]]
"""Column name -> (type OID, type modifier)."""


@dataclass(frozen=True, slots=True)
class SchemaDiff:
    """Columns that disappeared (dropped or renamed away), appeared, or changed type."""

    removed: frozenset[str]
    added: frozenset[str]
    retyped: frozenset[str]

    @property
    def empty(self) -> bool:
        """True when nothing changed."""
        return not (self.removed or self.added or self.retyped)


def diff_columns(before: ColumnTypes, after: ColumnTypes) -> SchemaDiff:
    """Compare two column lists of one table."""
    removed = frozenset(before.keys() - after.keys())
    added = frozenset(after.keys() - before.keys())
    retyped = frozenset(
        name for name in before.keys() & after.keys() if not _same_type(before[name], after[name])
    )
    return SchemaDiff(removed, added, retyped)


def _same_type(before: tuple[int, int], after: tuple[int, int]) -> bool:
    # pgoutput sends -1 as the modifier of some types where the catalog has one; compare the
    # modifier only when both sides know it.
    if before[0] != after[0]:
        return False
    return before[1] == after[1] or -1 in (before[1], after[1])


def is_affected(
    diff: SchemaDiff, selects_all: bool, selected: Iterable[str], filtered: Iterable[str]
) -> bool:
    """Whether a shape must be invalidated by ``diff``."""
    if diff.empty:
        return False
    if selects_all:
        return True
    touched = diff.removed | diff.retyped
    return bool(touched.intersection(selected) or touched.intersection(filtered))
