"""Checking and compiling a ``where`` clause that holds ``IN (SELECT ...)`` sublinks.

Layer: ``shapes`` (pure). :func:`compile_subquery_where` is what
:func:`shapes.where.parse_where` calls when the clause has sublinks and the engine has described
the inner tables. It

1. compiles the clause with :class:`SublinkCompiler`, a :class:`~shapes.where_compile.
   WhereCompiler` that also accepts ``<col> IN (SELECT <c> FROM <t> [WHERE ...])`` and the row
   form. Each sublink's inner ``SELECT`` is checked first (so its errors win, as in the
   reference server), its ``WHERE`` compiled recursively against the inner table (depth + 1,
   nested sublinks included), and the sublink becomes a membership test of the left side in a
   *view* (the dependency's value set, read from a reserved environment slot);
2. puts the clause in disjunctive normal form (NOT pushed to the leaves, AND distributed over
   OR). A sub-tree without a sublink stays one leaf, and so do the sublink-free arguments of
   one AND or OR taken together, so only sublinks multiply disjuncts and positions (the
   reference server expands every predicate; tags are opaque to clients, so only their
   agreement with move patterns matters). Leaves are numbered disjunct by disjunct into
   :class:`~shapes.subquery.Position` s;
3. deparses the SQL variants from the checked tree (:mod:`shapes.subquery_plan`).

Parameters are numbered across the whole text and substituted at every level, so each inner
``WHERE`` text stands on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from pglast import ast
from pglast.enums import BoolExprType, SetOperation, SubLinkType

from shapes import pgtypes, where_sql
from shapes import where_eval as ev
from shapes.errors import InvalidRequest, WhereClauseError
from shapes.schema import Column
from shapes.subquery import Dependency, Position, SubqueryLimits, missing_table_message
from shapes.subquery_plan import DependencyValues, Pieces, SublinkLeaf, SubqueryPlan, membership
from shapes.subquery_values import KeyColumn, key_type
from shapes.where_compile import (
    SELECT_CLAUSES,
    Typed,
    WhereCompiler,
    column_type,
    common_type,
    location_of,
)

Tables = Mapping[tuple[str, str], Mapping[str, Column]]

SUBLINK_KIND: Final = "only `value IN (SELECT ...)` sublinks are supported right now"
LEFT_SIDE: Final = (
    "currently, left side of `IN (SELECT ...)` can only be a column reference or a list of "
    "column references"
)
NO_CLAUSES: Final = "SELECT statement must not contain any clauses"
PLAIN_COLUMN: Final = "Expected a plain column reference"
SINGLE_TABLE: Final = "Expected a single table reference"
POLARITY: Final = (
    "a subquery dependency cannot be used with both positive and negative polarity in the same "
    "filter"
)
BOOLEAN_ONLY: Final = "`IN (SELECT ...)` can only be combined with AND, OR and NOT"
MAX_DISJUNCTS: Final = 100
VIEW_SLOT: Final = "\x00view"  # environment slot names no column can have

_INNER_CLAUSES: Final = tuple(c for c in SELECT_CLAUSES if c != "fromClause")


@dataclass
class _Context:
    """What every level of one clause shares."""

    tables: Tables
    params: Mapping[int, str]
    wrapped: str
    limits: SubqueryLimits
    count: int = 0


@dataclass
class _Level:
    """The sublinks of one clause level (an inner ``WHERE`` is its own level)."""

    dependencies: list[Dependency] = field(default_factory=list)
    values: list[DependencyValues] = field(default_factory=list)
    leaves: list[SublinkLeaf] = field(default_factory=list)
    by_node: dict[int, int] = field(default_factory=dict)  # id(SubLink) -> leaf index

    def add_dependency(self, dependency: Dependency, values: DependencyValues) -> int:
        """The dependency's index (equal dependencies are one)."""
        for index, known in enumerate(self.dependencies):
            if known == dependency:
                return index
        self.dependencies.append(dependency)
        self.values.append(values)
        return len(self.dependencies) - 1


@dataclass(frozen=True, slots=True)
class _Inner:
    schema: str
    table: str
    columns: tuple[str, ...]
    types: tuple[str, ...]
    where: str | None


class SublinkCompiler(WhereCompiler):
    """A :class:`WhereCompiler` that accepts ``IN (SELECT ...)`` sublinks at ``depth``."""

    def __init__(self, columns: Mapping[str, Column], context: _Context, depth: int) -> None:
        super().__init__(columns, context.params, context.wrapped)
        self.context = context
        self.depth = depth
        self.level = _Level()
        self.compiled: dict[int, Typed] = {}

    def compile(self, node: Any) -> Typed:
        result = super().compile(node)
        self.compiled[id(node)] = result
        return result

    def c_SubLink(self, node: Any) -> Typed:
        self.count_sublink()
        inner = self.inner_select(node.subselect, location_of(node))
        if node.subLinkType != SubLinkType.ANY_SUBLINK or node.operName:
            raise WhereClauseError(SUBLINK_KIND)
        refs = self.left_side(node.testexpr)
        left = [self.compile(ref) for ref in refs]
        keys = self.key_types(left, inner, location_of(node))
        values = DependencyValues(
            tuple(KeyColumn.of(t, k) for t, k in zip(inner.types, keys, strict=True))
        )
        dependency = Dependency(inner.schema, inner.table, inner.columns, inner.where, keys)
        index = self.level.add_dependency(dependency, values)
        names = tuple(str(typed.column) for typed in left)
        leaf = SublinkLeaf(
            dependency=index,
            columns=names,
            quoted=tuple(where_sql.quote_name(name) for name in names),
            outer_keys=tuple(KeyColumn.of(t.type, k) for t, k in zip(left, keys, strict=True)),
            subquery_sql=_subquery_sql(inner),
        )
        self.level.by_node[id(node)] = len(self.level.leaves)
        self.level.leaves.append(leaf)
        slot = self.view_slot(index)
        fn = membership([typed.fn for typed in left], leaf.outer_keys, slot)
        return Typed("bool", fn, location_of(node))

    def count_sublink(self) -> None:
        limits = self.context.limits
        if self.depth > limits.max_depth:
            raise WhereClauseError(
                f"subqueries nested deeper than {limits.max_depth} levels "
                f"(limit max_subquery_depth={limits.max_depth})"
            )
        self.context.count += 1
        if self.context.count > limits.max_subqueries:
            raise WhereClauseError(
                f"more than {limits.max_subqueries} subqueries "
                f"(limit max_subqueries={limits.max_subqueries})"
            )

    def view_slot(self, dependency: int) -> int:
        name = f"{VIEW_SLOT}{dependency}"
        if name not in self.slots:
            self.slots[name] = len(self.slot_types)
            self.slot_types.append((name, "opaque:view"))
        return self.slots[name]

    # -- the inner SELECT -----------------------------------------------------------------------

    def inner_select(self, select: Any, location: int) -> _Inner:
        if not isinstance(select, ast.SelectStmt):
            raise WhereClauseError(NO_CLAUSES)
        extra = any(getattr(select, name, None) for name in _INNER_CLAUSES)
        if extra or select.op != SetOperation.SETOP_NONE:
            raise WhereClauseError(NO_CLAUSES)
        targets = [self.target_column(target) for target in select.targetList or ()]
        if not targets:
            raise WhereClauseError(f"At location {location}: {PLAIN_COLUMN}")
        source = self.single_table(select.fromClause)
        schema, table = source.schemaname or "public", source.relname
        columns = self.context.tables.get((schema, table))
        if columns is None:
            raise InvalidRequest("table", missing_table_message(schema, table))
        names = self.projected(targets, source)
        missing = [name for name in names if name not in columns]
        if missing:
            message = f"The following columns are not found on the table: {', '.join(missing)}"
            raise InvalidRequest("columns", message)
        where = None
        if select.whereClause is not None:
            where = compile_level(select.whereClause, columns, self.context, self.depth + 1).sql
        types = tuple(column_type(columns[name]) for name in names)
        return _Inner(schema, table, names, types, where)

    def target_column(self, target: Any) -> Any:
        value = getattr(target, "val", None)
        fields = getattr(value, "fields", None) or ()
        plain = isinstance(value, ast.ColumnRef) and 1 <= len(fields) <= 2
        if not plain or not all(isinstance(part, ast.String) for part in fields):
            raise WhereClauseError(f"At location {location_of(target)}: {PLAIN_COLUMN}")
        return value

    def single_table(self, sources: Any) -> Any:
        sources = sources or ()
        if len(sources) != 1 or not isinstance(sources[0], ast.RangeVar):
            raise WhereClauseError(SINGLE_TABLE)
        source = sources[0]
        renamed = source.alias is not None and source.alias.colnames
        if source.catalogname or renamed or not source.inh:  # ONLY would change the rows
            raise WhereClauseError(SINGLE_TABLE)
        return source

    def projected(self, targets: list[Any], source: Any) -> tuple[str, ...]:
        alias = source.alias.aliasname if source.alias is not None else source.relname
        names: list[str] = []
        for target in targets:
            fields = [part.sval for part in target.fields]
            if len(fields) == 2 and fields[0] != alias:
                raise WhereClauseError(f"At location {location_of(target)}: {PLAIN_COLUMN}")
            names.append(fields[-1])
        return tuple(names)

    # -- the left side ----------------------------------------------------------------------------

    def left_side(self, node: Any) -> list[Any]:
        refs = list(node.args or ()) if isinstance(node, ast.RowExpr) else [node]
        if not refs or not all(isinstance(ref, ast.ColumnRef) for ref in refs):
            raise WhereClauseError(LEFT_SIDE)
        return refs

    def key_types(self, left: list[Typed], inner: _Inner, location: int) -> tuple[str, ...]:
        outer_types = tuple(typed.type for typed in left)
        commons = [common_type([a, b]) for a, b in zip(outer_types, inner.types, strict=False)]
        if len(outer_types) != len(inner.types) or None in commons:
            raise WhereClauseError(_mismatch(outer_types, inner.types))
        keys = tuple(key_type(common or "") for common in commons)
        if None in keys:
            shown = ", ".join(_shown(t) for t in outer_types)
            raise self.refuse(location, f"`IN (SELECT ...)` over type {shown} is not supported")
        return tuple(key or "" for key in keys)


def _shown(type_name: str) -> str:
    return type_name.removeprefix("opaque:")


def _mismatch(outer: tuple[str, ...], inner: tuple[str, ...]) -> str:
    if len(outer) == 1:
        left = _shown(outer[0])
    else:
        left = "record(" + ", ".join(_shown(t) for t in outer) + ")"
    returns = (
        _shown(inner[0]) if len(inner) == 1 else "record(" + ", ".join(map(_shown, inner)) + ")"
    )
    return f"left side of `IN (SELECT ...)` has type {left} but subquery returns {returns}[]"


def _subquery_sql(inner: _Inner) -> str:
    columns = ", ".join(where_sql.quote_name(name) for name in inner.columns)
    text = f"SELECT {columns} FROM {where_sql.quote_name(inner.schema, inner.table)}"
    return text if inner.where is None else f"{text} WHERE {inner.where}"


# ---------------------------------------------------------------------------------------------
# One level: compile, normal form, SQL


@dataclass(frozen=True, slots=True)
class CompiledLevel:
    """A compiled clause level: its SQL and, when it has sublinks, its plan."""

    sql: str
    root: Typed
    compiler: SublinkCompiler
    plan: SubqueryPlan | None


def compile_level(
    clause: Any, columns: Mapping[str, Column], context: _Context, depth: int
) -> CompiledLevel:
    compiler = SublinkCompiler(columns, context, depth)
    root = compiler.compile_root(clause)
    if not compiler.level.leaves:
        clause = compiler.substitute_item(clause)
        return CompiledLevel(where_sql.deparse(clause), root, compiler, None)
    disjuncts = _NormalForm(clause).disjuncts(compiler)
    clause = compiler.substitute_item(clause)
    plan = _plan(clause, root, compiler, disjuncts)
    sql = "".join(
        piece if isinstance(piece, str) else plan.leaves[piece].real_sql()
        for piece in plan.clause_pieces
    )
    return CompiledLevel(sql, root, compiler, plan)


def compile_subquery_where(
    clause: Any,
    columns: Mapping[str, Column],
    params: Mapping[int, str],
    wrapped: str,
    tables: Tables,
    limits: SubqueryLimits,
) -> CompiledLevel:
    """Compile the outer clause (``wrapped`` is the text errors locate into)."""
    context = _Context(tables, params, wrapped, limits)
    return compile_level(clause, columns, context, 1)


_Leaf = tuple[Any, bool]  # (node, negated)


class _NormalForm:
    """The clause's DNF: NOT pushed to the leaves, AND distributed over OR. A sub-tree holding
    no sublink is one leaf (only sublinks multiply disjuncts)."""

    def __init__(self, clause: Any) -> None:
        self.clause = clause
        self.holders: set[int] = set()  # id() of every node with a sublink beneath it
        self.groups: dict[int, list[Any]] = {}
        self._mark(clause)

    def _mark(self, node: Any) -> bool:
        if isinstance(node, ast.SubLink):
            held = True
        elif isinstance(node, tuple):
            held = any([self._mark(item) for item in node])  # noqa: C419 (mark every item)
        elif isinstance(node, ast.Node):
            held = any([self._mark(getattr(node, name, None)) for name in node])  # noqa: C419
        else:
            return False
        if held:
            self.holders.add(id(node))
        return held

    def structure(self, node: Any) -> bool:
        return isinstance(node, ast.BoolExpr) and id(node) in self.holders

    def operands(self, node: Any) -> list[Any]:
        """The node's arguments, those without a sublink joined into one leaf by the node's
        own operator (where the first of them stood): ``a AND b AND x IN (...)`` has two."""
        known = self.groups.get(id(node))
        if known is not None:
            return known
        plain = [arg for arg in node.args if id(arg) not in self.holders]
        operands = list(node.args)
        if len(plain) > 1:
            group = ast.BoolExpr(boolop=node.boolop, args=tuple(plain))
            first = operands.index(plain[0])
            operands = [arg for arg in operands if id(arg) in self.holders]
            operands.insert(first, group)
        self.groups[id(node)] = operands
        return operands

    def count(self, node: Any, negated: bool) -> int:
        if not self.structure(node):
            return 1
        if node.boolop == BoolExprType.NOT_EXPR:
            return self.count(node.args[0], not negated)
        counts = [self.count(arg, negated) for arg in self.operands(node)]
        if _conjunctive(node, negated):
            product = 1
            for count in counts:
                product *= count
            return product
        return sum(counts)

    def expand(self, node: Any, negated: bool) -> list[list[_Leaf]]:
        if not self.structure(node):
            return [[(node, negated)]]
        if node.boolop == BoolExprType.NOT_EXPR:
            return self.expand(node.args[0], not negated)
        parts = [self.expand(arg, negated) for arg in self.operands(node)]
        if not _conjunctive(node, negated):
            return [disjunct for part in parts for disjunct in part]
        result: list[list[_Leaf]] = [[]]
        for part in parts:
            result = [left + right for left in result for right in part]
        return result

    def disjuncts(self, compiler: SublinkCompiler) -> list[list[_Leaf]]:
        """The disjuncts; refuses too many, sublinks under other operators, mixed polarity."""
        count = self.count(self.clause, False)
        if count > MAX_DISJUNCTS:
            raise WhereClauseError(
                f"WHERE clause too complex for DNF decomposition ({count} disjuncts exceeds "
                f"limit of {MAX_DISJUNCTS})"
            )
        disjuncts = self.expand(self.clause, False)
        polarity: dict[int, bool] = {}
        for disjunct in disjuncts:
            for node, negated in disjunct:
                if not isinstance(node, ast.SubLink):
                    if id(node) in self.holders:
                        raise compiler.error(location_of(node), BOOLEAN_ONLY)
                    continue
                dependency = compiler.level.leaves[compiler.level.by_node[id(node)]].dependency
                if polarity.setdefault(dependency, negated) != negated:
                    raise WhereClauseError(POLARITY)
        return disjuncts


def _conjunctive(node: Any, negated: bool) -> bool:
    conjunction: bool = node.boolop == BoolExprType.AND_EXPR
    return conjunction != negated


def _plan(
    clause: Any, root: Typed, compiler: SublinkCompiler, disjuncts: list[list[_Leaf]]
) -> SubqueryPlan:
    level = compiler.level
    positions: list[Position] = []
    position_leaves: list[int | None] = []
    fns: list[ev.Fn] = []
    real: list[str] = []
    pieces: list[Pieces] = []
    texts: dict[int, str] = {}  # a predicate leaf may sit in several disjuncts
    for number, disjunct in enumerate(disjuncts):
        for node, negated in disjunct:
            leaf_index = level.by_node.get(id(node)) if isinstance(node, ast.SubLink) else None
            leaf = None if leaf_index is None else level.leaves[leaf_index]
            dependency = None if leaf is None else leaf.dependency
            columns = () if leaf is None else leaf.columns
            positions.append(Position(number, dependency, negated, columns))
            position_leaves.append(leaf_index)
            fns.append(_leaf_fn(node, compiler))
            if leaf is not None:
                text = leaf.real_sql()
            elif id(node) in texts:
                text = texts[id(node)]
            else:
                text = texts[id(node)] = where_sql.deparse(compiler.substitute_item(node))
            real.append(_active_sql(text, negated))
            body: Pieces = (text,) if leaf_index is None else (leaf_index,)
            pieces.append(_active_pieces(body, negated))
    slots = tuple((name, pgtypes.parser_for(type_name)) for name, type_name in compiler.slot_types)
    view_slots = tuple(
        (compiler.slots[f"{VIEW_SLOT}{index}"], index) for index in range(len(level.dependencies))
    )
    return SubqueryPlan(
        dependencies=tuple(level.dependencies),
        values=tuple(level.values),
        leaves=tuple(level.leaves),
        positions=tuple(positions),
        position_leaves=tuple(position_leaves),
        position_fns=tuple(fns),
        disjunct_count=len(disjuncts),
        slots=slots,
        view_slots=view_slots,
        fn=root.fn,
        clause_pieces=_clause_pieces(clause, compiler),
        position_pieces=tuple(pieces),
        position_sql=tuple(real),
        routing_dependency=_routing(positions, len(disjuncts)),
    )


def _leaf_fn(node: Any, compiler: SublinkCompiler) -> ev.Fn:
    typed = compiler.compiled.get(id(node))
    if typed is None:  # a leaf joining several predicates: compile it now
        typed = compiler.compile(node)
    return compiler.to_bool(typed, "AND").fn


def _active_sql(text: str, negated: bool) -> str:
    inner = f"(NOT {text})" if negated else f"({text})"
    return f"COALESCE({inner}::boolean, false)"


def _active_pieces(body: Pieces, negated: bool) -> Pieces:
    opening = "COALESCE((NOT " if negated else "COALESCE(("
    return (opening, *body, ")::boolean, false)")


def _clause_pieces(clause: Any, compiler: SublinkCompiler) -> Pieces:
    level = compiler.level
    marked = where_sql.deparse(clause, lambda node: f"\x00{level.by_node[id(node)]}\x00")
    parts = marked.split("\x00")
    return tuple(part if i % 2 == 0 else int(part) for i, part in enumerate(parts) if part != "")


def _routing(positions: list[Position], disjunct_count: int) -> tuple[int, str] | None:
    if disjunct_count != 1:
        return None
    for position in positions:
        if position.dependency is not None and not position.negated and len(position.columns) == 1:
            return position.dependency, position.columns[0]
    return None
