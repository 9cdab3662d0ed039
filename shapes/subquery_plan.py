"""The compiled plan of a ``where`` clause with sublinks: evaluation, tags and SQL over views.

Layer: ``shapes`` (pure). :class:`SubqueryPlan` is what :mod:`shapes.subquery_compile` builds
and :class:`~shapes.where.Where` delegates to. The engine keeps, per dependency, the current
*view*: the set of :data:`~shapes.subquery.ValueKey` the inner query returns now. With the views
the plan

* evaluates a row: the compiled clause (sublinks test membership in the views, with SQL's
  NULL rules) decides ``included``; each DNF position gives one active condition;
* hashes tags and move patterns from the same canonical value text, so a row's tag slot and the
  pattern of its value are always equal (values with a NULL part make no position true and
  get no patterns; :meth:`SubqueryPlan.null_patterns` names the rows whose comparison with a
  value is NULL, which a value entering a ``NOT IN`` view turns off);
* writes SQL in which each sublink is a real subquery, or a test against array parameters that
  carry the views (``col = ANY(%(p0_0)s::pg_catalog.int8[])``).

Theory of operation for the SQL templates: the clause is deparsed once with every sublink
replaced by a marker ``\\x00<n>\\x00`` (NUL never occurs in a parsed clause) and split on it,
giving alternating text pieces and sublink numbers; each variant joins the pieces, escaping
``%`` in the text pieces when the result is a psycopg query with named parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final

from shapes import where_eval as ev
from shapes.errors import EvaluationError
from shapes.subquery import Dependency, Position, RowMeta, ValueKey
from shapes.subquery_values import KeyColumn, canonical_text, key_from_text, tag_hash
from shapes.subquery_values import value_slot_text as _slot_text

_SOLE_MEMBER: Final = RowMeta(True, (True,))

Pieces = tuple[str | int, ...]
"""SQL text pieces and sublink numbers (indexes into :attr:`SubqueryPlan.leaves`)."""

_MAX_MASKED_LOOKUPS: Final = 4
"""Row forms up to this width find NULL matches by lookups; wider ones scan the view."""


@dataclass(frozen=True, slots=True)
class SublinkLeaf:
    """One sublink occurrence: ``columns`` (outer) ``IN`` dependency ``dependency``."""

    dependency: int
    columns: tuple[str, ...]
    quoted: tuple[str, ...]  # the columns as SQL identifiers
    outer_keys: tuple[KeyColumn, ...]
    subquery_sql: str  # ``SELECT ... FROM ... [WHERE ...]``

    def real_sql(self) -> str:
        return f"({self._left()} IN ({self.subquery_sql}))"

    def views_sql(self, prefix: str) -> str:
        params = [
            f"%({prefix}{self.dependency}_{i})s::pg_catalog.{key.key}[]"
            for i, key in enumerate(self.outer_keys)
        ]
        left = self._left().replace("%", "%%")  # a quoted name may hold a percent sign
        if len(params) == 1:
            return f"({left} = ANY({params[0]}))"
        return f"({left} IN (SELECT * FROM unnest({', '.join(params)})))"

    def _left(self) -> str:
        return self.quoted[0] if len(self.quoted) == 1 else "(" + ", ".join(self.quoted) + ")"


@dataclass(frozen=True, slots=True)
class DependencyValues:
    """How the values of one dependency are read: the inner projected columns' key columns."""

    inner_keys: tuple[KeyColumn, ...]

    @property
    def key_types(self) -> tuple[str, ...]:
        return tuple(key.key for key in self.inner_keys)


@dataclass(frozen=True, eq=False)
class SubqueryPlan:
    """Everything :class:`~shapes.where.Where` needs for a clause with sublinks."""

    dependencies: tuple[Dependency, ...]
    values: tuple[DependencyValues, ...]
    leaves: tuple[SublinkLeaf, ...]
    positions: tuple[Position, ...]
    position_leaves: tuple[int | None, ...]  # the sublink leaf of each position
    position_fns: tuple[ev.Fn, ...]
    disjunct_count: int
    slots: tuple[tuple[str, Callable[[str], Any]], ...]
    view_slots: tuple[tuple[int, int], ...]  # (env index, dependency)
    fn: ev.Fn
    clause_pieces: Pieces
    position_pieces: tuple[Pieces, ...]
    position_sql: tuple[str, ...]
    routing_dependency: tuple[int, str] | None

    # -- evaluation ---------------------------------------------------------------------------

    def evaluate(
        self, row: Mapping[str, str | None], views: Sequence[AbstractSet[ValueKey]]
    ) -> RowMeta:
        sole = self._sole_membership
        if sole is not None:
            # The clause is one ``column IN (subquery)``: a row whose value is in the view is
            # in. Anything else (NULL, not found, a text that does not parse) goes the general
            # way below, which knows SQL's NULL rules and errors.
            column, key, dependency = sole
            text = row.get(column)
            if text is not None:
                try:
                    found = key.from_text(text) in views[dependency]
                except Exception:  # judged (and raised, if need be) the general way
                    found = False
                if found:
                    return _SOLE_MEMBER
        return self._evaluate_clause(row, views)

    def _evaluate_clause(
        self, row: Mapping[str, str | None], views: Sequence[AbstractSet[ValueKey]]
    ) -> RowMeta:
        # The positions are the clause's leaves in DNF, so without an error among them the
        # clause is TRUE exactly when a disjunct has all its positions true. A leaf that raises
        # may or may not be reached by the clause as Postgres evaluates it (short-circuits):
        # then the compiled clause decides, raising where Postgres raises.
        env = self._env(row, views)
        active: list[bool] = []
        failed = False
        for fn, expected in self._expected:
            try:
                value = fn(env)
            except EvaluationError:
                failed = True
                value = None  # an error counts as not true
            active.append(value is expected)
        if failed:
            included = self.fn(env) is True
        elif self.disjunct_count == 1:
            included = all(active)
        else:
            included = self._any_disjunct(active)
        return RowMeta(included, tuple(active))

    @cached_property
    def _sole_membership(self) -> tuple[str, KeyColumn, int] | None:
        """``(column, key, dependency)`` when the whole clause is ``column IN (subquery)``."""
        if self.disjunct_count != 1 or len(self.positions) != 1:
            return None
        position, leaf_index = self.positions[0], self.position_leaves[0]
        if leaf_index is None or position.negated or position.dependency is None:
            return None
        leaf = self.leaves[leaf_index]
        if len(leaf.columns) != 1:
            return None
        return leaf.columns[0], leaf.outer_keys[0], leaf.dependency

    @cached_property
    def _expected(self) -> tuple[tuple[ev.Fn, bool], ...]:
        """Each position's function and the value that makes it active."""
        return tuple(
            (fn, not position.negated)
            for fn, position in zip(self.position_fns, self.positions, strict=True)
        )

    def _any_disjunct(self, active: list[bool]) -> bool:
        satisfied = [True] * self.disjunct_count
        for ok, position in zip(active, self.positions, strict=True):
            if not ok:
                satisfied[position.disjunct] = False
        return any(satisfied)

    def _env(
        self, row: Mapping[str, str | None], views: Sequence[AbstractSet[ValueKey]]
    ) -> list[Any]:
        env = ev.row_env(self.slots, row)
        for index, dependency in self.view_slots:
            env[index] = views[dependency]
        return env

    # -- values -------------------------------------------------------------------------------

    def outer_value(self, dependency: int, row: Mapping[str, str | None]) -> ValueKey | None:
        leaf = self.leaves[self._first_leaf(dependency)]
        return _key_of(leaf.outer_keys, [row.get(column) for column in leaf.columns])

    def dependency_value(
        self, dependency: int, inner_row: Mapping[str, str | None]
    ) -> ValueKey | None:
        keys = self.values[dependency].inner_keys
        columns = self.dependencies[dependency].columns
        return _key_of(keys, [inner_row.get(column) for column in columns])

    def value_texts(self, dependency: int, value: ValueKey) -> tuple[str | None, ...]:
        types = self.values[dependency].key_types
        parts: tuple[Any, ...] = (value,) if len(types) == 1 else value  # type: ignore[assignment]
        return tuple(
            None if part is None else canonical_text(key, part)
            for key, part in zip(types, parts, strict=True)
        )

    def value_from_texts(self, dependency: int, texts: Sequence[str | None]) -> ValueKey:
        types = self.values[dependency].key_types
        if len(texts) != len(types):
            raise ValueError(f"expected {len(types)} texts, got {len(texts)}")
        parts = tuple(
            None if text is None else key_from_text(key, text)
            for key, text in zip(types, texts, strict=True)
        )
        return parts[0] if len(types) == 1 else parts

    # -- tags ---------------------------------------------------------------------------------

    def tags(self, row: Mapping[str, str | None], prefix: str) -> list[str]:
        slots = [self._slot(index, row, prefix) for index in range(len(self.positions))]
        return [
            "/".join(
                slot if position.disjunct == disjunct else ""
                for slot, position in zip(slots, self.positions, strict=True)
            )
            for disjunct in range(self.disjunct_count)
        ]

    def _slot(self, index: int, row: Mapping[str, str | None], prefix: str) -> str:
        leaf_index = self.position_leaves[index]
        if leaf_index is None:
            return "1"
        leaf = self.leaves[leaf_index]
        texts = tuple([row.get(column) for column in leaf.columns])
        return tag_hash(prefix, _leaf_slot_text(leaf.outer_keys, leaf.columns, texts))

    def patterns(
        self, dependency: int, values: Iterable[ValueKey], prefix: str
    ) -> list[dict[str, object]]:
        moved = [value for value in values if not _has_null(value)]
        patterns: list[dict[str, object]] = []
        for index, leaf_index in enumerate(self.position_leaves):
            if leaf_index is None or self.leaves[leaf_index].dependency != dependency:
                continue
            leaf = self.leaves[leaf_index]
            types = tuple(key.key for key in leaf.outer_keys)
            for value in moved:
                digest = tag_hash(prefix, _slot_text(value, leaf.columns, types))
                patterns.append({"pos": index, "value": digest})
        return patterns

    def null_patterns(
        self, dependency: int, values: Iterable[ValueKey], prefix: str
    ) -> list[dict[str, object]]:
        slots: dict[tuple[int, str], None] = {}  # ordered and without repeats
        for index, leaf_index in enumerate(self.position_leaves):
            if leaf_index is None or self.leaves[leaf_index].dependency != dependency:
                continue
            leaf = self.leaves[leaf_index]
            types = tuple(key.key for key in leaf.outer_keys)
            for value in values:
                for masked in _null_masks(value, len(types)):
                    slots[(index, tag_hash(prefix, _slot_text(masked, leaf.columns, types)))] = None
        return [{"pos": index, "value": digest} for index, digest in slots]

    # -- SQL over views -----------------------------------------------------------------------

    def views_sql(self, prefix: str) -> str:
        return self._join(self.clause_pieces, prefix)

    def views_position_sql(self, prefix: str) -> tuple[str, ...]:
        return tuple(self._join(pieces, prefix) for pieces in self.position_pieces)

    def view_params(
        self, prefix: str, views: Sequence[AbstractSet[ValueKey]]
    ) -> dict[str, list[str | None]]:
        params: dict[str, list[str | None]] = {}
        for dependency in range(len(self.dependencies)):
            width = len(self.dependencies[dependency].columns)
            columns: list[list[str | None]] = [[] for _ in range(width)]
            for value in views[dependency]:
                for column, text in zip(columns, self.value_texts(dependency, value), strict=True):
                    column.append(text)
            for i, texts in enumerate(columns):
                params[f"{prefix}{dependency}_{i}"] = texts
        return params

    def _join(self, pieces: Pieces, prefix: str) -> str:
        return "".join(
            piece.replace("%", "%%")
            if isinstance(piece, str)
            else self.leaves[piece].views_sql(prefix)
            for piece in pieces
        )

    def _first_leaf(self, dependency: int) -> int:
        for index, leaf in enumerate(self.leaves):
            if leaf.dependency == dependency:
                return index
        raise IndexError(f"no dependency {dependency}")


def _null_masks(value: ValueKey | None, width: int) -> list[ValueKey | None]:
    """The left sides whose comparison with ``value`` is NULL, not FALSE: ``value`` with one
    or more of its parts NULL (``None`` alone for a single column)."""
    if _has_null(value):
        return []
    if width == 1:
        return [None]
    parts: tuple[Any, ...] = value  # type: ignore[assignment]
    return [
        tuple(None if mask >> i & 1 else part for i, part in enumerate(parts))
        for mask in range(1, 1 << width)
    ]


def _has_null(value: ValueKey | None) -> bool:
    """A value with a NULL part never equals a left side: no row's condition hangs on it."""
    return value is None or isinstance(value, tuple) and None in value


@functools.lru_cache(maxsize=16_384)
def _leaf_slot_text(
    keys: tuple[KeyColumn, ...], columns: tuple[str, ...], texts: tuple[str | None, ...]
) -> str:
    """The slot text of a sublink's left-side texts (remembered: the shapes of one clause with
    other parameters share their leaves' key columns, and rows of a thread share values)."""
    value = _key_of(keys, texts)
    return _slot_text(value, columns, tuple(key.key for key in keys))


def _key_of(keys: Sequence[KeyColumn], texts: Sequence[str | None]) -> ValueKey | None:
    """The key of row texts; ``ValueError`` when one does not parse."""
    try:
        parts = tuple(key.from_text(text) for key, text in zip(keys, texts, strict=True))
    except EvaluationError as error:
        raise ValueError(error.message) from None
    return parts[0] if len(parts) == 1 else parts


def membership(left: Sequence[ev.Fn], keys: Sequence[KeyColumn], view_slot: int) -> ev.Fn:
    """``left IN (view)`` with SQL's rules: FALSE for an empty view; otherwise TRUE when found,
    NULL when the left side is (or has a part that is) NULL or no row matches but some row's
    comparison is NULL, FALSE otherwise."""
    if len(left) == 1:
        return _single_membership(left[0], keys[0], view_slot)
    return _row_membership(tuple(left), tuple(keys), view_slot)


def _single_membership(left: ev.Fn, key: KeyColumn, view_slot: int) -> ev.Fn:
    def run(env: ev.Env) -> bool | None:
        value = left(env)
        view: AbstractSet[Hashable] = env[view_slot]
        if value is None:
            return None if view else False  # nothing to compare with: FALSE
        if key.from_value(value) in view:
            return True
        return None if None in view else False

    return run


def _row_membership(left: tuple[ev.Fn, ...], keys: tuple[KeyColumn, ...], view_slot: int) -> ev.Fn:
    def run(env: ev.Env) -> bool | None:
        values = [fn(env) for fn in left]
        parts = tuple(
            None if value is None else key.from_value(value)
            for fn, key, value in zip(left, keys, values, strict=True)
        )
        view: AbstractSet[Hashable] = env[view_slot]
        if None not in parts:
            if parts in view:
                return True
            if len(parts) <= _MAX_MASKED_LOOKUPS:
                return None if _masked_match(parts, view) else False
        return None if any(_row_unknown(parts, item) for item in view) else False

    return run


def _masked_match(parts: tuple[Any, ...], view: AbstractSet[Hashable]) -> bool:
    """Whether some view row equals ``parts`` except for NULLs (the row comparison is NULL)."""
    width = len(parts)
    for mask in range(1, 1 << width):
        probe = tuple(None if mask >> i & 1 else part for i, part in enumerate(parts))
        if probe in view:
            return True
    return False


def _row_unknown(parts: tuple[Any, ...], item: Any) -> bool:
    """Row ``=`` is NULL: no pair of non-NULL parts differs and some part is NULL."""
    if not isinstance(item, tuple) or len(item) != len(parts):
        return False
    unknown = False
    for a, b in zip(parts, item, strict=True):
        if a is None or b is None:
            unknown = True
        elif a != b:
            return False
    return unknown
