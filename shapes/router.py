"""Routing replicated rows to the shapes they may affect, through hash indexes.

Layer: ``shapes`` (pure). Per table, a shape whose ``where`` has an index condition
(:meth:`~shapes.where.Where.index_conditions`: ``col = const``, ``col IN (...)``,
``col = ANY(...)`` among its top-level AND conjuncts) is filed under the first such condition,
in a hash index ``column -> normalised value -> shape ids``. Every other shape is *residual*
and returned for every row. A lookup parses each indexed column of the row once, so its cost
depends on the number of indexed columns and residual shapes, not on the number of shapes.

:meth:`Router.affected` returns a superset: callers re-check with ``Where.matches``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from shapes import pgtypes
from shapes.messages import text_at
from shapes.schema import Column
from shapes.where import Where, column_type
from shapes.where_eval import hash_key

K = TypeVar("K", bound=Hashable)

_EMPTY: frozenset[Any] = frozenset()
# (column, its text parser, its integer limit or 0, normalised value -> shapes)
_Lookup = tuple[str, Callable[[str], Any], int, dict[Hashable, set[Any]]]
_PLAIN = frozenset({int, str, bool})
_INT_LIMITS = {"int2": 1 << 15, "int4": 1 << 31, "int8": 1 << 63}
"""Integer columns: a plain ASCII decimal below the limit is its own normalised value."""


class _TableIndex:
    """The shapes of one table: residual ones, and hash indexes per column.

    Not generic (its shapes are ``Any``; :class:`Router` gives them their type): the module
    may run compiled (see ``shapes.compiled``), where a generic dataclass fails at import.
    """

    __slots__ = ("by_column", "columns", "derived", "filed", "residual", "shapes")

    def __init__(self) -> None:
        self.shapes: set[Any] = set()
        self.residual: set[Any] = set()
        self.by_column: dict[str, dict[Hashable, set[Any]]] = {}
        self.columns: dict[str, Column] = {}
        self.filed: dict[str, int] = {}
        """How many shapes are filed under each column (a shape may hold no value now)."""
        self.derived: tuple[frozenset[Any], tuple[_Lookup, ...]] | None = None
        """What affected() reads per row, derived from the above; None when it must be
        rebuilt."""

    def is_empty(self) -> bool:
        return not self.shapes

    def derive(self) -> tuple[frozenset[Any], tuple[_Lookup, ...]]:
        derived = self.derived
        if derived is None:
            lookups = tuple(
                (
                    column,
                    pgtypes.parser_for(column_type(self.columns[column])),
                    _INT_LIMITS.get(column_type(self.columns[column]), 0),
                    buckets,
                )
                for column, buckets in self.by_column.items()
            )
            derived = self.derived = (frozenset(self.residual), lookups)
        return derived


def _gather(residual: frozenset[Any], hits: list[set[Any] | None]) -> AbstractSet[Any]:
    """The residual shapes and every shape of ``hits`` (the sets themselves when one will do)."""
    result: AbstractSet[Any] = residual
    for hit in hits:
        if hit:
            result = result | hit if result else hit
    return result


def _bucket_hit(
    text: str | None,
    parse: Callable[[str], Any],
    int_limit: int,
    buckets: dict[Hashable, set[Any]],
) -> set[Any] | None:
    """The shapes filed under a column's value ``text`` (``None``: no value, or none filed)."""
    if text is None:
        return None
    # As where.normalise_value(), with the column's parser looked up once, and without it
    # for what Postgres sends for integers (its parser gives the same).
    if int_limit and text.isdigit() and text.isascii():
        number = int(text)
        if number >= int_limit:
            return None
        return buckets.get(number)
    try:
        value: Any = parse(text)  # Any: compiled, a narrower type would be checked
    except (ValueError, TypeError, ArithmeticError):
        return None
    return buckets.get(value if type(value) in _PLAIN else hash_key(value))


@dataclass(frozen=True, slots=True)
class _Entry:
    table: Hashable
    column: str | None
    values: frozenset[Hashable]


class Router(Generic[K]):
    """Finds the shapes a row change may affect."""

    def __init__(self) -> None:
        self._tables: dict[Hashable, _TableIndex] = {}
        self._entries: dict[K, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def add(
        self,
        shape_id: K,
        table: Hashable,
        where: Where | None,
        columns: Mapping[str, Column],
        dynamic: tuple[str, AbstractSet[Hashable]] | None = None,
    ) -> None:
        """Register a shape (replacing an earlier registration under the same id).

        ``dynamic`` files the shape under a column and the current value set of one of its
        subqueries instead (every row of the shape has its value in that set); the caller keeps
        the filing current with :meth:`move`.
        """
        if shape_id in self._entries:
            self.remove(shape_id)
        index = self._tables.setdefault(table, _TableIndex())
        index.shapes.add(shape_id)
        conditions = where.index_conditions() if where is not None else ()
        condition = conditions[0] if conditions else None
        if dynamic is not None:
            condition = (dynamic[0], frozenset(v for v in dynamic[1] if v is not None))
        if condition is None or condition[0] not in columns:
            index.residual.add(shape_id)
            self._entries[shape_id] = _Entry(table, None, frozenset())
            index.derived = None
            return
        column, values = condition
        if column not in index.by_column or index.columns[column] != columns[column]:
            index.derived = None
        index.columns[column] = columns[column]
        index.filed[column] = index.filed.get(column, 0) + 1
        buckets = index.by_column.setdefault(column, {})
        for value in values:
            buckets.setdefault(value, set()).add(shape_id)
        self._entries[shape_id] = _Entry(table, column, values)

    def move(
        self, shape_id: K, entered: AbstractSet[Hashable], left: AbstractSet[Hashable]
    ) -> None:
        """Values entered or left the set a shape is filed under (see ``dynamic`` of
        :meth:`add`); a shape not filed under a column is left alone."""
        entry = self._entries.get(shape_id)
        if entry is None or entry.column is None:
            return
        buckets = self._tables[entry.table].by_column[entry.column]
        for value in left:
            bucket = buckets.get(value)
            if bucket is not None:
                bucket.discard(shape_id)
                if not bucket:
                    del buckets[value]
        for value in entered:
            if value is not None:
                buckets.setdefault(value, set()).add(shape_id)
        values = (entry.values - left) | {v for v in entered if v is not None}
        self._entries[shape_id] = _Entry(entry.table, entry.column, frozenset(values))

    def remove(self, shape_id: K) -> None:
        """Forget a shape; unknown ids are ignored."""
        entry = self._entries.pop(shape_id, None)
        if entry is None:
            return
        index = self._tables[entry.table]
        index.shapes.discard(shape_id)
        if entry.column is None:
            index.residual.discard(shape_id)
            index.derived = None
        else:
            buckets = index.by_column[entry.column]
            for value in entry.values:
                bucket = buckets.get(value)
                if bucket is None:
                    continue
                bucket.discard(shape_id)
                if not bucket:
                    del buckets[value]
            index.filed[entry.column] -= 1
            if not index.filed[entry.column]:  # the column's last shape
                del index.filed[entry.column]
                del index.by_column[entry.column]
                del index.columns[entry.column]
                index.derived = None
        if index.is_empty():
            del self._tables[entry.table]

    def affected(self, table: Hashable, row: Mapping[str, str | None]) -> AbstractSet[K]:
        """The shapes of ``table`` whose ``where`` may be true for ``row`` (a superset).

        The result may be shared with the router: do not modify it.
        """
        index = self._tables.get(table)
        if index is None:
            return _EMPTY
        residual, lookups = index.derive()
        return _gather(
            residual, [_bucket_hit(row.get(c), parse, limit, b) for c, parse, limit, b in lookups]
        )

    def affected_values(
        self, table: Hashable, positions: Mapping[str, int], values: Sequence[object]
    ) -> AbstractSet[K]:
        """:meth:`affected` for the row whose column ``c`` is ``values[positions[c]]`` (text
        or ``None``; anything else counts as ``None``), without making it a mapping."""
        index = self._tables.get(table)
        if index is None:
            return _EMPTY
        residual, lookups = index.derive()
        return _gather(
            residual,
            [
                _bucket_hit(text_at(values, positions.get(c)), parse, limit, b)
                for c, parse, limit, b in lookups
            ],
        )

    def residual(self, table: Hashable) -> frozenset[K]:
        """The shapes of ``table`` that every row is routed to (no index condition)."""
        index = self._tables.get(table)
        return frozenset(index.residual) if index is not None else frozenset()

    def has_table(self, table: Hashable) -> bool:
        """Whether any shape of ``table`` is registered (cheap)."""
        return table in self._tables

    def shapes_for_table(self, table: Hashable) -> set[K]:
        """Every shape registered on ``table`` (for truncates and relation changes)."""
        index = self._tables.get(table)
        return set(index.shapes) if index is not None else set()
