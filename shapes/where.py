"""Shape ``where`` clauses: parsed by Postgres's own parser, checked, compiled, evaluated.

Layer: ``shapes`` (pure). :func:`parse_where` wraps the clause as ``SELECT 1 WHERE <clause>``,
parses it with pglast (libpg_query), rejects everything outside the supported subset
(``docs/protocol.md`` §12), types it against the table's columns, substitutes ``$n``
parameters as typed literals and compiles the tree into closures (:mod:`shapes.where_eval`).
The resulting :class:`Where` carries

* ``sql``: the validated AST deparsed again (never the client's text), safe to embed in a
  snapshot query;
* ``matches(row)``: evaluation of a replicated row with Postgres semantics;
* ``index_conditions()``: the ``col = const`` style conjuncts the router indexes on.

Errors are :class:`~shapes.errors.WhereClauseError` with the reference server's texts: syntax
errors carry the parser's position in the wrapped string (``At location 17: syntax error at or
near "x"`` for ``1 x 1``), semantic errors the byte offset inside the clause itself.

Deviations from Postgres, all conservative: text compares by code point (``C`` collation);
``numeric`` is exact ``Decimal`` arithmetic (division to 40 significant digits);
``timestamptz`` values and literals without a zone are read as UTC.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from pglast import ast, parse_sql
from pglast.enums import SetOperation
from pglast.parser import ParseError, scan
from pglast.stream import RawStream

from shapes import pgtypes
from shapes import where_eval as ev
from shapes.errors import InvalidRequest, WhereClauseError
from shapes.schema import Column
from shapes.where_compile import PREFIX, IndexCondition, WhereCompiler, column_type

__all__ = [
    "ColumnReference",
    "IndexCondition",
    "MAX_WHERE_BYTES",
    "Where",
    "column_references",
    "column_type",
    "normalise_value",
    "parse_where",
    "validate_params",
]

MAX_WHERE_BYTES: Final = 65536

_SELECT_CLAUSES: Final = (
    "distinctClause",
    "intoClause",
    "fromClause",
    "groupClause",
    "havingClause",
    "windowClause",
    "valuesLists",
    "sortClause",
    "limitOffset",
    "limitCount",
    "lockingClause",
    "withClause",
    "larg",
    "rarg",
)


@dataclass(frozen=True, eq=False)
class Where:
    """A validated, compiled ``where`` clause. Equal clauses have equal ``sql``."""

    sql: str
    columns: frozenset[str]
    _slots: tuple[tuple[str, Callable[[str], Any]], ...] = field(repr=False)
    _fn: ev.Fn = field(repr=False)
    _index: tuple[IndexCondition, ...] = field(repr=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Where) and other.sql == self.sql

    def __hash__(self) -> int:
        return hash(self.sql)

    def matches(self, row: Mapping[str, str | None]) -> bool:
        """Whether the row (column name -> Postgres text value, None for NULL) is in the shape.

        NULL and false both mean "no". A missing column counts as NULL. Raises ``ValueError``
        when a referenced value does not parse as its column's type, or when Postgres would fail
        evaluating the clause (``EvalError``, e.g. division by zero).
        """
        env: list[Any] = []
        for name, parse in self._slots:
            text = row.get(name)
            if text is None:
                env.append(None)
                continue
            try:
                env.append(parse(text))
            except (ValueError, TypeError, ArithmeticError):
                raise ValueError(f"column {name} has an unparseable value {text!r}") from None
        return self._fn(env) is True

    def index_conditions(self) -> tuple[IndexCondition, ...]:
        """Top-level AND conjuncts ``col = const`` / ``col IN (...)`` / ``col = ANY(...)``.

        Each is the column and the set of normalised values (:func:`normalise_value`) of which
        the row's value must be one for the clause to be true.
        """
        return self._index


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
    text: str, columns: Mapping[str, Column], params: Mapping[str, str] | None = None
) -> Where:
    """Parse, check and compile a ``where`` clause against a table's columns.

    Raises:
        InvalidRequest: ``params`` keys are not 1..n (field ``params``).
        WhereClauseError: anything wrong with the clause itself.
    """
    numbered = validate_params(params)
    if len(text.encode("utf-8")) > MAX_WHERE_BYTES:
        raise WhereClauseError(f"WHERE clause is too long (limit {MAX_WHERE_BYTES} bytes)")
    wrapped = PREFIX + text
    try:
        clause = _parse_clause(wrapped)
        compiler = WhereCompiler(columns, numbered, wrapped)
        root = compiler.compile_root(clause)
        if isinstance(clause, ast.ParamRef):  # a bare ``$1``: the clause is the parameter
            clause = compiler.param_literal(clause)
        compiler.substitute_params(clause)
        sql = RawStream()(clause)
        _parse_clause(PREFIX + sql)  # the deparsed text must stand on its own
    except RecursionError:  # nested deeper than the compiler (and the evaluator) can go
        raise WhereClauseError("stack depth limit exceeded") from None
    slots = tuple((name, pgtypes.parser_for(type_name)) for name, type_name in compiler.slot_types)
    return Where(sql, frozenset(compiler.slots), slots, root.fn, root.eqs)


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
    extra = any(getattr(statement, name, None) for name in _SELECT_CLAUSES)
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
    extra = any(getattr(statement, name, None) for name in _SELECT_CLAUSES if name != "sortClause")
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
