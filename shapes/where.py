"""Shape ``where`` clauses: parsed by Postgres's own parser, checked, compiled, evaluated.

Layer: ``shapes`` (pure). :func:`parse_where` wraps the clause as ``SELECT 1 WHERE <clause>``,
parses it with pglast (libpg_query), rejects everything outside the supported subset
(``docs/protocol.md``, "Where clauses"), types it against the table's columns, substitutes ``$n``
parameters as typed literals and compiles the tree into closures (:mod:`shapes.where_eval`).
The resulting :class:`Where` carries

* ``sql``: the validated AST deparsed again (never the client's text), safe to embed in a
  snapshot query;
* ``matches(row)``: evaluation of a replicated row with Postgres semantics;
* ``index_conditions()``: the ``col = const`` style conjuncts the router indexes on.

A clause may hold ``col IN (SELECT c FROM t WHERE ...)`` sublinks when the caller describes the
inner tables: :func:`subquery_tables` names them (a pure parse), ``parse_where(...,
tables=...)`` then checks and compiles the whole clause (:mod:`shapes.subquery_compile`). Such a
``Where`` is evaluated with ``evaluate(row, views)`` against the current value set of each of
its ``dependencies`` and carries DNF positions, tags, move patterns and SQL over the views
(:mod:`shapes.subquery_plan`); for a clause without sublinks nothing changes.

Errors are :class:`~shapes.errors.WhereClauseError` with the reference server's texts: syntax
errors carry the parser's position in the wrapped string (``At location 17: syntax error at or
near "x"`` for ``1 x 1``), semantic errors the byte offset inside the clause itself.

Decisions are Postgres's (values read as syncd's sessions output them, ``C`` collation); what
is refused rather than risk deciding differently is listed in :mod:`shapes.where_compile`.
Evaluation raises :class:`~shapes.errors.EvaluationError` exactly where Postgres raises.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
from pglast import ast
from pglast.enums import SetOperation
from pglast.parser import ParseError, parse_sql_json, scan

from shapes import pgtypes, where_sql
from shapes import where_eval as ev
from shapes.errors import InvalidRequest, WhereClauseError
from shapes.parse_tree import parse_sql
from shapes.schema import Column
from shapes.subquery import Dependency, Position, RowMeta, SubqueryLimits, ValueKey
from shapes.subquery_compile import Tables, compile_subquery_where
from shapes.subquery_plan import SubqueryPlan
from shapes.where_compile import (
    PREFIX,
    SELECT_CLAUSES,
    IndexCondition,
    WhereCompiler,
    column_type,
)

__all__ = [
    "ColumnReference",
    "IndexCondition",
    "MAX_WHERE_BYTES",
    "Where",
    "column_references",
    "column_type",
    "normalise_value",
    "parse_where",
    "subquery_tables",
    "validate_params",
]

MAX_WHERE_BYTES: Final = 65536


@dataclass(frozen=True, eq=False)
class Where:
    """A validated, compiled ``where`` clause. Equal clauses have equal ``sql``.

    A clause with ``IN (SELECT ...)`` sublinks (``has_subqueries``) is evaluated with
    :meth:`evaluate` against the current value set (*view*) of each of its ``dependencies``;
    its other members (positions, tags, patterns, SQL over views) are described in
    :mod:`shapes.subquery_plan`. For a clause without sublinks they are empty.
    """

    sql: str
    columns: frozenset[str]
    _slots: tuple[tuple[str, Callable[[str], Any]], ...] = field(repr=False)
    _fn: ev.Fn = field(repr=False)
    _index: tuple[IndexCondition, ...] = field(repr=False)
    _plan: SubqueryPlan | None = field(default=None, repr=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Where) and other.sql == self.sql

    def __hash__(self) -> int:
        return hash(self.sql)

    def matches(self, row: Mapping[str, str | None]) -> bool:
        """Whether the row (column name -> Postgres text value, None for NULL) is in the shape.

        NULL and false both mean "no". A missing column counts as NULL. Raises
        :class:`~shapes.errors.EvaluationError` (a ``ValueError``) exactly where Postgres would
        raise evaluating the clause on this row (division by zero, out of range, ...) and when
        a referenced value does not parse as its column's type; messages never quote row data.
        A clause with subqueries raises ``TypeError``: it needs :meth:`evaluate`.
        """
        if self._plan is not None:
            raise TypeError("a where clause with subqueries is evaluated with evaluate()")
        slots = self._slots
        if type(row) is ev.ParsedRow:
            try:  # the environment another clause of the same columns built for this row
                env = row.envs[slots]
            except (AttributeError, KeyError):
                env = ev.row_env(slots, row)
        else:
            env = ev.row_env(slots, row)
        return self._fn(env) is True

    def index_conditions(self) -> tuple[IndexCondition, ...]:
        """Top-level AND conjuncts ``col = const`` / ``col IN (...)`` / ``col = ANY(...)``.

        Each is the column and the set of normalised values (:func:`normalise_value`) of which
        the row's value must be one for the clause to be true. Conditions inside a subquery are
        never among them.
        """
        return self._index

    # -- subqueries ----------------------------------------------------------------------------

    @property
    def has_subqueries(self) -> bool:
        """Whether the clause holds ``IN (SELECT ...)`` sublinks."""
        return self._plan is not None

    @property
    def dependencies(self) -> tuple[Dependency, ...]:
        """The distinct inner ``SELECT`` s; ``views[k]`` is the value set of the k-th."""
        return () if self._plan is None else self._plan.dependencies

    @property
    def positions(self) -> tuple[Position, ...]:
        """The DNF leaves, numbered disjunct by disjunct."""
        return () if self._plan is None else self._plan.positions

    @property
    def disjunct_count(self) -> int:
        """How many disjuncts the DNF has (0 without subqueries)."""
        return 0 if self._plan is None else self._plan.disjunct_count

    @property
    def position_sql(self) -> tuple[str, ...]:
        """Per position, SQL for its active condition (never NULL), with real subqueries."""
        return () if self._plan is None else self._plan.position_sql

    @property
    def routing_dependency(self) -> tuple[int, str] | None:
        """(dependency, column) when every row of the shape has that column's value in that
        dependency's view: one disjunct holding a positive single-column sublink."""
        return None if self._plan is None else self._plan.routing_dependency

    def evaluate(
        self, row: Mapping[str, str | None], views: Sequence[AbstractSet[ValueKey]]
    ) -> RowMeta:
        """The row against the views: ``included`` is the clause being TRUE (as in SQL), and
        ``active_conditions[p]`` position p being TRUE (an error there counts as false).

        Raises :class:`~shapes.errors.EvaluationError` exactly as :meth:`matches` does.
        """
        if self._plan is None:
            return RowMeta(self.matches(row), ())
        return self._plan.evaluate(row, views)

    def outer_value(self, dependency: int, row: Mapping[str, str | None]) -> ValueKey | None:
        """The key of the outer row's left-side column(s) of the dependency's (first) sublink:
        None when the single column is NULL; for the row form a tuple with None parts.
        ``ValueError`` when a value does not parse."""
        return self._require_plan().outer_value(dependency, row)

    def dependency_value(
        self, dependency: int, inner_row: Mapping[str, str | None]
    ) -> ValueKey | None:
        """The key of an inner row's projected column(s) (None when the single column is
        NULL). ``ValueError`` when a value does not parse."""
        return self._require_plan().dependency_value(dependency, inner_row)

    def value_texts(self, dependency: int, value: ValueKey) -> tuple[str | None, ...]:
        """A value as texts, one per projected column (JSON-safe; the SQL array elements)."""
        return self._require_plan().value_texts(dependency, value)

    def value_from_texts(self, dependency: int, texts: Sequence[str | None]) -> ValueKey:
        """The inverse of :meth:`value_texts`; ``ValueError`` when a text does not parse."""
        return self._require_plan().value_from_texts(dependency, texts)

    def tags(self, row: Mapping[str, str | None], prefix: str) -> list[str]:
        """One tag per disjunct: the position slots joined by ``/`` (empty outside the
        disjunct, ``1`` for a predicate, the value hash for a sublink)."""
        return [] if self._plan is None else self._plan.tags(row, prefix)

    def patterns(
        self, dependency: int, values: Iterable[ValueKey], prefix: str
    ) -> list[dict[str, object]]:
        """``{"pos", "value"}`` for each position of the dependency and each value: equal to
        the tag slot of an outer row holding that value. Values with a NULL part are left out:
        ``x IN (...)`` is never true through them, so no row's condition follows them (but a
        NULL entering a negated dependency's view makes ``NOT IN`` NULL for every row)."""
        return self._require_plan().patterns(dependency, values, prefix)

    def null_patterns(
        self, dependency: int, values: Iterable[ValueKey], prefix: str
    ) -> list[dict[str, object]]:
        """The patterns of rows whose left side has NULL parts and compares NULL (not FALSE)
        with one of the values: ``NULL`` (single column), or the value with some parts NULL
        (row form). When such a value enters a ``NOT IN`` dependency's view, these rows' position
        stops being true along with the rows of :meth:`patterns` (``x NOT IN (...)`` is NULL).
        Values with a NULL part give none."""
        return self._require_plan().null_patterns(dependency, values, prefix)

    def views_sql(self, prefix: str) -> str:
        """The clause with each sublink tested against array parameters ``%(<prefix><k>_<i>)s``
        (other ``%`` doubled), for psycopg with :meth:`view_params`."""
        if self._plan is None:
            return self.sql.replace("%", "%%")
        return self._plan.views_sql(prefix)

    def views_position_sql(self, prefix: str) -> tuple[str, ...]:
        """:attr:`position_sql` with the array parameters of :meth:`views_sql`."""
        return () if self._plan is None else self._plan.views_position_sql(prefix)

    def view_params(
        self, prefix: str, views: Sequence[AbstractSet[ValueKey]]
    ) -> dict[str, list[str | None]]:
        """The parameters of :meth:`views_sql` for these views."""
        return {} if self._plan is None else self._plan.view_params(prefix, views)

    def _require_plan(self) -> SubqueryPlan:
        if self._plan is None:
            raise IndexError("the where clause has no subquery dependencies")
        return self._plan


def normalise_value(column: Column, text: str) -> Hashable:
    """A row's text value of ``column`` in the form :meth:`Where.index_conditions` uses.

    Raises ``ValueError`` when the text does not parse as the column's type.
    """
    return ev.hash_key(pgtypes.parse_text(column_type(column), text))


_NOT_SEQUENTIAL = "Parameters must be numbered sequentially, starting from 1"


def validate_params(params: Mapping[str, str] | None) -> dict[int, str]:
    """Check the ``params`` keys (integers numbered 1..n) and key the values by number."""
    if not params:
        return {}
    numbered: dict[int, str] = {}
    for key, value in params.items():
        if not (key.isascii() and key.isdigit()) or key.startswith("0") and key != "0":
            raise InvalidRequest("params", "Parameters can only use numbers as keys")
        if len(key) > 18:  # never 1..n; and int() refuses thousands of digits
            raise InvalidRequest("params", _NOT_SEQUENTIAL)
        numbered[int(key)] = value
    if sorted(numbered) != list(range(1, len(numbered) + 1)):
        raise InvalidRequest("params", _NOT_SEQUENTIAL)
    return numbered


def parse_where(
    text: str,
    columns: Mapping[str, Column],
    params: Mapping[str, str] | None = None,
    *,
    tables: Tables | None = None,
    limits: SubqueryLimits = SubqueryLimits(),  # noqa: B008 (frozen)
) -> Where:
    """Parse, check and compile a ``where`` clause against a table's columns.

    ``tables`` maps ``(schema, table)`` to the columns of every table the clause's sublinks
    select from (:func:`subquery_tables` names them); without it sublinks are refused.

    Raises:
        InvalidRequest: ``params`` keys are not 1..n (field ``params``); an inner table is not
            in ``tables`` (field ``table``) or lacks a projected column (field ``columns``).
        WhereClauseError: anything wrong with the clause itself.
    """
    numbered = validate_params(params)
    if len(text.encode("utf-8")) > MAX_WHERE_BYTES:
        raise WhereClauseError(f"WHERE clause is too long (limit {MAX_WHERE_BYTES} bytes)")
    wrapped = PREFIX + text
    try:
        clause = _parse_clause(wrapped)
        if tables is not None and _has_sublink(clause):
            return _parse_subquery_where(clause, columns, numbered, wrapped, tables, limits)
        compiler = WhereCompiler(columns, numbered, wrapped)
        root = compiler.compile_root(clause)
        clause = compiler.substitute_item(clause)
        sql = where_sql.deparse(clause)
        _check_standalone(sql)
    except RecursionError:  # nested deeper than the compiler (and the evaluator) can go
        raise WhereClauseError("stack depth limit exceeded") from None
    slots = tuple((name, pgtypes.parser_for(type_name)) for name, type_name in compiler.slot_types)
    return Where(sql, frozenset(compiler.slots), slots, root.fn, root.eqs)


def _parse_subquery_where(
    clause: Any,
    columns: Mapping[str, Column],
    numbered: Mapping[int, str],
    wrapped: str,
    tables: Tables,
    limits: SubqueryLimits,
) -> Where:
    compiled = compile_subquery_where(clause, columns, numbered, wrapped, tables, limits)
    _check_standalone(compiled.sql)
    compiler, root = compiled.compiler, compiled.root
    slots = tuple((name, pgtypes.parser_for(type_name)) for name, type_name in compiler.slot_types)
    names = frozenset(name for name in compiler.slots if not name.startswith("\x00"))
    return Where(compiled.sql, names, slots, root.fn, root.eqs, compiled.plan)


@functools.lru_cache(maxsize=256)
def subquery_tables(text: str) -> frozenset[tuple[str, str]]:
    """Every ``(schema, table)`` a sublink of the clause selects from, at any depth (schema
    ``public`` when not written). Needs no catalog: it only parses (remembered by text: the
    shapes of one clause with different parameters share it).

    Raises:
        WhereClauseError: the text is not one clause (found only when it may hold a subquery:
            :func:`parse_where` finds it in any text).
    """
    if len(text.encode("utf-8")) > MAX_WHERE_BYTES:
        raise WhereClauseError(f"WHERE clause is too long (limit {MAX_WHERE_BYTES} bytes)")
    if not _may_hold_subquery(text):
        return frozenset()
    try:
        clause = _parse_clause(PREFIX + text)
        found: set[tuple[str, str]] = set()
        _collect_tables(clause, found)
    except RecursionError:
        raise WhereClauseError("stack depth limit exceeded") from None
    return frozenset(found)


_SUBQUERY_WORDS: Final = ("select", "values", "table")
"""Every subquery starts with one of these keywords (``SELECT``, ``VALUES``, ``TABLE t``), and a
keyword cannot be escaped or quoted."""


def _may_hold_subquery(text: str) -> bool:
    """False when ``text`` cannot hold a subquery: then it need not be parsed to find out (a
    shape creation's cheapest check, for the common clause without one)."""
    lowered = text.lower()
    return any(word in lowered for word in _SUBQUERY_WORDS)


def _collect_tables(node: Any, found: set[tuple[str, str]]) -> None:
    if isinstance(node, tuple):
        for item in node:
            _collect_tables(item, found)
    elif isinstance(node, ast.SubLink):
        select = node.subselect
        for source in getattr(select, "fromClause", None) or ():
            if isinstance(source, ast.RangeVar) and source.relname is not None:
                found.add((source.schemaname or "public", source.relname))
        _collect_tables(node.testexpr, found)
        _collect_tables(getattr(select, "whereClause", None), found)
    elif isinstance(node, ast.Node):
        for name in node:
            _collect_tables(getattr(node, name, None), found)


def _has_sublink(node: Any) -> bool:
    if isinstance(node, ast.SubLink):
        return True
    if isinstance(node, tuple):
        return any(_has_sublink(item) for item in node)
    if isinstance(node, ast.Node):
        return any(_has_sublink(getattr(node, name, None)) for name in node)
    return False


_STANDALONE_KEYS: Final = frozenset({"targetList", "whereClause", "limitOption", "op"})
"""What the parse tree of ``SELECT 1 WHERE <clause>`` holds, and nothing more."""


def _check_standalone(sql: str) -> None:
    """The deparsed clause must parse back, on its own, as the where clause of one plain
    ``SELECT``: text that a deparser bug made mean something else is refused, not run.

    The parse tree is read as JSON (no Python nodes are built: a third of the cost)."""
    try:
        tree = msgspec.json.decode(parse_sql_json(PREFIX + sql))
    except ParseError as error:
        raise WhereClauseError(f"the clause does not stand on its own: {error.args[0]}") from None
    statements = tree.get("stmts") or []
    select = statements[0].get("stmt", {}).get("SelectStmt") if len(statements) == 1 else None
    if (
        not isinstance(select, dict)
        or "whereClause" not in select
        or not _STANDALONE_KEYS.issuperset(select)
        or select.get("op") != "SETOP_NONE"
    ):
        raise WhereClauseError("the clause does not stand on its own")


def _parse_clause(wrapped: str) -> Any:
    try:
        statements = parse_sql(wrapped)
    except ParseError as error:
        message, location = error.args[0], error.args[1]
        if location is None:
            location = len(wrapped)
        raise WhereClauseError(f"At location {location}: {message}") from None
    if len(statements) != 1:
        raise WhereClauseError('unescaped ";" causing statement split')
    statement = statements[0].stmt
    if not isinstance(statement, ast.SelectStmt):
        raise WhereClauseError("malformed query ending with SQL clauses")
    extra = any(getattr(statement, name, None) for name in SELECT_CLAUSES)
    if extra or statement.op != SetOperation.SETOP_NONE or statement.whereClause is None:
        raise WhereClauseError("malformed query ending with SQL clauses")
    return statement.whereClause


@dataclass(frozen=True, slots=True)
class ColumnReference:
    """A column reference in a clause: ``name`` is the column it names (the last part of a
    qualified reference, ``*`` for a star) and ``text`` the reference as written."""

    name: str
    text: str


_ORDER_BY_PREFIX: Final = "SELECT 1 ORDER BY "


def column_references(text: str, *, order_by: bool = False) -> tuple[ColumnReference, ...]:
    """Every column reference in a ``where`` clause (or, with ``order_by``, an ORDER BY list),
    in the order written. Needs no table: it only parses.

    Raises:
        WhereClauseError: the text is not one clause (or ORDER BY list).
    """
    if len(text.encode("utf-8")) > MAX_WHERE_BYTES:
        raise WhereClauseError(f"WHERE clause is too long (limit {MAX_WHERE_BYTES} bytes)")
    wrapped = (_ORDER_BY_PREFIX if order_by else PREFIX) + text
    try:
        root = _parse_order_by(wrapped) if order_by else _parse_clause(wrapped)
        refs: list[Any] = []
        _collect_column_refs(root, refs)
    except RecursionError:
        raise WhereClauseError("stack depth limit exceeded") from None
    if not refs:
        return ()
    # parser locations and token positions are both character offsets into ``wrapped``
    tokens = scan(wrapped)
    starts = {token.start: index for index, token in enumerate(tokens)}
    return tuple(_reference(ref, wrapped, tokens, starts) for ref in refs)


def _parse_order_by(wrapped: str) -> Any:
    try:
        statements = parse_sql(wrapped)
    except ParseError as error:
        location = error.args[1] if error.args[1] is not None else len(wrapped)
        raise WhereClauseError(f"At location {location}: {error.args[0]}") from None
    statement = statements[0].stmt if len(statements) == 1 else None
    if not isinstance(statement, ast.SelectStmt) or statement.sortClause is None:
        raise WhereClauseError("malformed ORDER BY list")
    extra = any(getattr(statement, name, None) for name in SELECT_CLAUSES if name != "sortClause")
    if extra or statement.whereClause is not None or statement.op != SetOperation.SETOP_NONE:
        raise WhereClauseError("malformed query ending with SQL clauses")
    return statement.sortClause


def _collect_column_refs(node: Any, out: list[Any]) -> None:
    if isinstance(node, tuple):
        for item in node:
            _collect_column_refs(item, out)
    elif isinstance(node, ast.ColumnRef):
        out.append(node)
    elif isinstance(node, ast.Node):
        for name in node:
            _collect_column_refs(getattr(node, name, None), out)


def _reference(ref: Any, wrapped: str, tokens: Any, starts: Mapping[int, int]) -> ColumnReference:
    fields = ref.fields or ()
    last = fields[-1] if fields else None
    name = last.sval if isinstance(last, ast.String) and last.sval is not None else "*"
    first = starts.get(ref.location if ref.location is not None else -1)
    if first is None or first + 2 * len(fields) - 2 >= len(tokens):
        return ColumnReference(name, ".".join(getattr(f, "sval", None) or "*" for f in fields))
    end = tokens[first + 2 * len(fields) - 2].end  # name . name . name: 2n - 1 tokens
    return ColumnReference(name, wrapped[tokens[first].start : end + 1])
