"""Type checking and compilation of a parsed ``where`` clause into closures.

Layer: ``shapes`` (pure). :class:`WhereCompiler` walks the pglast tree of a clause that
:func:`shapes.where.parse_where` has parsed: it rejects nodes outside the supported subset
(``docs/protocol.md``, "Where clauses"), gives every expression a type from the table's columns
and the ``$n`` parameters, applies Postgres's implicit casts and operator rules, substitutes the
parameters into the tree as typed literals, and builds :mod:`shapes.where_eval` closures over a
row environment (one slot per referenced column). Top-level ``col = const`` conjuncts are
collected as index conditions for the router.

Every clause accepted here is decided exactly as Postgres decides it (the differential fuzzer in
``tests/where_fuzz`` holds it to that), or refused with a 400 saying why. Refused although
Postgres would run them (:class:`~shapes.errors.RefusedClause`), because the answer would depend
on the server's version:

* integer or numeric literals with a base prefix (``'0x1F'``) or underscores (``'1_000'``):
  only Postgres 16 and later read them;
* date, time and timestamp literals not written in ISO 8601 (``'Feb 29 2024'``): their
  meaning depends on ``DateStyle`` and the parser's many spellings.

Refused as Postgres refuses them: a constant part that raises while the snapshot is planned
(``1 / 0 = x``; but ``false AND 1 / 0 = 1`` is accepted, as the planner never folds it),
``ilike(a, b)``, ``::varchar(0)``, ``date + int8``, ``anyarray`` operators on arrays of
different types. Assumed of the database: the ``C`` collation and ctype (text compares by code
point; ``lower``/``upper``/``ILIKE`` change ASCII letters only) and, as syncd's sessions set,
``TimeZone=UTC``, ``DateStyle=ISO``, ``IntervalStyle=iso_8601``. Not read in rows (the row's
evaluation raises :class:`~shapes.errors.EvaluationError`): infinite intervals (Postgres 17+).
``timestamp - timestamp`` with an infinite side raises, as Postgres 16 and older do (17 and
later return an infinite interval).
Postgres may evaluate the top-level ``AND`` conditions of a snapshot's ``WHERE`` in another
order than written; this evaluator goes left to right, as Postgres does for one expression, so
on a row where a later condition raises the two may differ (raise or decide).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from pglast import ast
from pglast.enums import (
    A_Expr_Kind,
    BoolExprType,
    BoolTestType,
    MinMaxOp,
    NullTestType,
)

from shapes import pgtime, pgtypes, where_like
from shapes import where_eval as ev
from shapes.errors import EvaluationError, RefusedClause, WhereClauseError
from shapes.pgtypes import INTS, NUMERIC_RANK, SCALARS, TEXTS, TIMESTAMPS, UNKNOWN
from shapes.schema import Column, columns_hint

_MAX_INTEGER_LITERAL: Final = 64
"""Longer integer literals are read as numeric text (Python's int() refuses thousands of digits)."""

SELECT_CLAUSES: Final = (
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
"""The parts of a ``SELECT`` that a wrapped clause (or a subquery's inner SELECT) must not have."""

PREFIX: Final = "SELECT 1 WHERE "
"""What a clause is wrapped in for the parser; error offsets are counted without it."""

IndexCondition = tuple[str, frozenset[Hashable]]

_TIMESTAMP_ORDER: Final = ("date", "timestamp", "timestamptz")
_LIKE_OPS: Final = {"~~": (False, False), "~~*": (True, False), "!~~": (False, True)}
_LIKE_OPS_ALL: Final = {**_LIKE_OPS, "!~~*": (True, True)}
_ARRAY_OPS: Final = frozenset({"@>", "<@", "&&"})
_ARITHMETIC: Final = frozenset({"+", "-", "*", "/", "%"})


def column_type(column: Column) -> str:
    """The type the where clause sees for a column (``opaque:<name>`` outside the subset)."""
    base = column.base_type_name or column.type_name
    name = base if base in SCALARS else f"opaque:{column.type_name}"
    return name + "[]" if column.dims else name


@dataclass(frozen=True, slots=True)
class _Typed:
    """A compiled sub-expression: its type, closure and what the checker knows about it."""

    type: str
    fn: ev.Fn
    location: int
    const: bool = False
    value: Any = None
    column: str | None = None
    eqs: tuple[IndexCondition, ...] = ()
    param: Any = None
    failed: Exception | None = None  # folding this constant expression raised


def _common2(left: str, right: str) -> str | None:
    if left.startswith("opaque:") or right.startswith("opaque:"):
        return None
    if left == right:
        return left
    if left in NUMERIC_RANK and right in NUMERIC_RANK:
        return pgtypes.common_numeric(left, right)
    if left in TEXTS and right in TEXTS:
        # operator resolution: bpchar's operators take varchar exactly-once; text is preferred
        return "bpchar" if {left, right} == {"varchar", "bpchar"} else "text"
    if left in TIMESTAMPS and right in TIMESTAMPS:
        return max(left, right, key=_TIMESTAMP_ORDER.index)
    if pgtypes.is_array(left) and pgtypes.is_array(right):
        inner = _common2(pgtypes.element_type(left), pgtypes.element_type(right))
        return None if inner is None else inner + "[]"
    return None


def _common(types: Sequence[str], first_text_wins: bool = False) -> str | None:
    """The type values are compared or combined in.

    Operators prefer ``text`` when string types mix; ``first_text_wins`` follows
    ``select_common_type`` instead (``COALESCE``, ``GREATEST``, ``ARRAY[...]``): the string types
    cast to each other implicitly, so the first one is kept.
    """
    known = [name for name in types if name != UNKNOWN]
    if not known:
        return "text"
    if first_text_wins and known[0] in TEXTS and all(name in TEXTS for name in known):
        return known[0]
    result: str | None = known[0]
    for name in known[1:]:
        if result is None:
            return None
        result = _common2(result, name)
    if result is not None and result.startswith("opaque:"):
        return None
    if result == "varchar" and not first_text_wins:
        return "text"  # varchar has no operators of its own: Postgres uses text's
    return result


def _keeps_representation(source: str, target: str) -> bool:
    """Whether converting keeps values equal to the column's own normalised values."""
    if source in INTS:
        return target in INTS or target == "numeric"
    if source == "float4":
        return target == "float8"
    if source in TEXTS or source.startswith("opaque:"):
        return target in ("text", "varchar")
    return False


def _implicit(source: str, target: str) -> bool:
    if source in NUMERIC_RANK and target in NUMERIC_RANK:
        return pgtypes.common_numeric(source, target) == target
    if source in TEXTS and target in TEXTS:
        return True
    if source in TIMESTAMPS and target in TIMESTAMPS:
        return _TIMESTAMP_ORDER.index(source) <= _TIMESTAMP_ORDER.index(target)
    if pgtypes.is_array(source) and pgtypes.is_array(target):
        return _implicit(pgtypes.element_type(source), pgtypes.element_type(target))
    return False


def _shown(type_name: str) -> str:
    return type_name.removeprefix("opaque:")


def _loc(node: Any) -> int:
    location = getattr(node, "location", None)
    return location if isinstance(location, int) else 0


def _names(nodes: Any) -> list[str]:
    return [getattr(node, "sval", "?") for node in nodes or ()]


class WhereCompiler:
    """Compiles one clause: ``compile_root`` types and builds it, ``substitute_params`` puts the
    parameters into the tree; ``slots``/``slot_types`` name the columns the closures read."""

    def __init__(self, columns: Mapping[str, Column], params: Mapping[int, str], wrapped: str):
        self.columns = columns
        self.params = params
        self.wrapped = wrapped
        self.slots: dict[str, int] = {}
        self.slot_types: list[tuple[str, str]] = []
        self.param_types: dict[int, tuple[Any, str]] = {}

    # -- errors and helpers ------------------------------------------------------------------

    def error(self, location: int, message: str) -> WhereClauseError:
        offset = len(self.wrapped[: max(location, 0)].encode("utf-8")) - len(PREFIX)
        return WhereClauseError(f"At location {max(offset, 0)}: {message}")

    def refuse(self, location: int, why: str) -> RefusedClause:
        """A clause Postgres would run that syncd refuses (listed in the module docstring)."""
        offset = len(self.wrapped[: max(location, 0)].encode("utf-8")) - len(PREFIX)
        return RefusedClause(f"At location {max(offset, 0)}: refused: {why}")

    def fold(self, type_name: str, fn: ev.Fn, location: int, args: Sequence[_Typed]) -> _Typed:
        """Constant arguments are evaluated now, as Postgres's planner does.

        A constant expression that raises is kept as *failed*: Postgres raises when planning,
        unless an ``AND``/``OR``/``COALESCE`` before it already decided (see ``short_circuit``).
        A failed root refuses the clause.
        """
        for arg in args:
            if arg.failed is not None:
                return _failed(type_name, arg.failed, arg.location)
        if all(arg.const for arg in args):
            try:
                value = fn(())
            except (ValueError, ArithmeticError) as error:
                return _failed(type_name, error, location)
            return _Typed(type_name, ev.constant(value), location, const=True, value=value)
        return _Typed(type_name, fn, location)

    def coerce(self, typed: _Typed, target: str, explicit: bool = False) -> _Typed:
        if typed.type == target:
            return typed
        if typed.failed is not None:
            return _failed(target, typed.failed, typed.location)
        if typed.type == UNKNOWN:
            return self.literal(typed, target)
        source = typed.type
        allowed = _implicit(source, target)
        if explicit and not allowed:
            opaque_ok = target in TEXTS or not source.startswith("opaque:")
            allowed = opaque_ok and pgtypes.converter(source, target) is not None
        if not allowed:
            raise self.error(
                typed.location, f"cannot cast type {_shown(source)} to {_shown(target)}"
            )
        convert = pgtypes.converter(source, target)
        assert convert is not None
        if typed.const:
            try:
                value = None if typed.value is None else convert(typed.value)
            except (ValueError, ArithmeticError) as error:
                return _failed(target, error, typed.location)
            return _Typed(target, ev.constant(value), typed.location, const=True, value=value)
        identity = (source in INTS and target in INTS and not explicit) or (
            source in ("text", "varchar") and target in ("text", "varchar")
        )
        fn = typed.fn if identity else ev.strict1(_guard(convert), typed.fn)
        column = typed.column if _keeps_representation(source, target) else None
        return _Typed(target, fn, typed.location, column=column)

    def literal(self, typed: _Typed, target: str) -> _Typed:
        if target.startswith("opaque:") and target != pgtypes.JSONB:
            raise self.error(typed.location, f"cannot compare with type {_shown(target)}")
        if typed.param is not None:
            self.param_types[id(typed.param)] = (typed.param, target)
        value = typed.value
        if value is not None:
            try:
                value = pgtypes.parse_text(target, value)
            except (pgtypes.NewerSyntax, pgtime.OtherSpelling) as error:
                raise self.refuse(typed.location, str(error)) from None
            except ValueError as error:
                raise self.error(typed.location, str(error)) from None
        return _Typed(target, ev.constant(value), typed.location, const=True, value=value)

    def unify(
        self, items: Sequence[_Typed], location: int, first_text_wins: bool = False
    ) -> tuple[str, list[_Typed]]:
        common = _common([item.type for item in items], first_text_wins)
        if common is None:
            raise self.error(location, "Could not select an operator overload")
        return common, [self.coerce(item, common) for item in items]

    # -- entry points ------------------------------------------------------------------------

    def compile_root(self, node: Any) -> _Typed:
        root = self.compile(node)
        if root.type == UNKNOWN:
            root = self.literal(root, "bool")
        if root.type != "bool":
            raise self.error(root.location, "WHERE clause must return a boolean")
        if root.failed is not None:  # Postgres raises this while planning the snapshot
            raise self.error(root.location, str(root.failed))
        return root

    def substitute_params(self, node: Any) -> None:
        for name in node:
            value = getattr(node, name, None)
            if isinstance(value, ast.Node):
                if isinstance(value, ast.ParamRef):
                    setattr(node, name, self.param_literal(value))
                else:
                    self.substitute_params(value)
            elif isinstance(value, tuple):
                setattr(node, name, tuple(self.substitute_item(item) for item in value))

    def substitute_item(self, item: Any) -> Any:
        if not self.params:  # nothing to put in: compiling refused any ``$n`` already
            return item
        if isinstance(item, ast.ParamRef):
            return self.param_literal(item)
        if isinstance(item, ast.Node):
            self.substitute_params(item)
        return item

    def param_literal(self, ref: Any) -> ast.TypeCast:
        _, type_name = self.param_types.get(id(ref), (ref, "text"))
        array = pgtypes.is_array(type_name)
        element = pgtypes.element_type(type_name) if array else type_name
        type_node = ast.TypeName(
            names=(ast.String(sval=element),),
            arrayBounds=(ast.Integer(ival=-1),) if array else None,
        )
        const = ast.A_Const(val=ast.String(sval=self.params[ref.number]))
        return ast.TypeCast(arg=const, typeName=type_node)

    def compile(self, node: Any) -> _Typed:
        handler = getattr(self, "c_" + type(node).__name__, None)
        if handler is None:
            location = _loc(node)
            raise self.error(location, f"{type(node).__name__} is not supported in this context")
        result: _Typed = handler(node)
        return result

    # -- leaves ------------------------------------------------------------------------------

    def c_A_Const(self, node: Any) -> _Typed:
        location = _loc(node)
        value = node.val
        if node.isnull or value is None:
            return _Typed(UNKNOWN, ev.constant(None), location, const=True)
        if isinstance(value, ast.Integer):
            return self.const("int4", value.ival, location)
        if isinstance(value, ast.Float):
            text = str(value.fval).replace("_", "")
            if text.lstrip("+-")[:2].lower() in ("0x", "0o", "0b"):
                if len(text) > _MAX_INTEGER_LITERAL:  # str() of a huge int raises
                    raise RefusedClause("a non-decimal integer literal this long is not supported")
                text = str(int(text, 0))
            if text.lstrip("+-").isdigit() and len(text) <= _MAX_INTEGER_LITERAL:
                number = int(text)
                if -(1 << 31) <= number < 1 << 31:
                    return self.const("int4", number, location)
                if -(1 << 63) <= number < 1 << 63:
                    return self.const("int8", number, location)
            return self.const("numeric", pgtypes.parse_numeric(text), location)
        if isinstance(value, ast.Boolean):
            return self.const("bool", bool(value.boolval), location)
        if isinstance(value, ast.String):
            return _Typed(UNKNOWN, ev.constant(value.sval), location, const=True, value=value.sval)
        raise self.error(location, f"{type(value).__name__} is not supported in this context")

    def const(self, type_name: str, value: Any, location: int) -> _Typed:
        return _Typed(type_name, ev.constant(value), location, const=True, value=value)

    def c_ColumnRef(self, node: Any) -> _Typed:
        location = _loc(node)
        fields = node.fields or ()
        if any(not isinstance(part, ast.String) for part in fields):
            raise self.error(location, "A_Star is not supported in this context")
        name = ".".join(part.sval for part in fields)
        column = self.columns.get(name) if len(fields) == 1 else None
        if column is None:
            raise self.error(location, f"unknown reference {name}; {columns_hint(self.columns)}")
        type_name = column_type(column)
        if name not in self.slots:
            self.slots[name] = len(self.slot_types)
            self.slot_types.append((name, type_name))
        eqs = ((name, frozenset({True})),) if type_name == "bool" else ()
        return _Typed(type_name, ev.slot(self.slots[name]), location, column=name, eqs=eqs)

    def c_ParamRef(self, node: Any) -> _Typed:
        location = _loc(node)
        value = self.params.get(node.number)
        if value is None:
            raise self.error(location, f"parameter ${node.number} was not provided")
        return _Typed(UNKNOWN, ev.constant(value), location, const=True, value=value, param=node)

    def c_SubLink(self, node: Any) -> _Typed:
        raise self.error(_loc(node), "subqueries are not supported")

    # -- casts -------------------------------------------------------------------------------

    def type_from_name(self, node: Any) -> tuple[str, Callable[[Any], Any] | None]:
        names = _names(node.names)
        location = _loc(node)
        if len(names) == 2 and names[0] == "pg_catalog":
            names = names[1:]
        name = pgtypes.ALIASES.get(names[-1], names[-1]) if len(names) == 1 else ""
        if name == "jsonb" and not (node.typmods or node.arrayBounds or node.setof):
            return pgtypes.JSONB, None
        if name not in SCALARS or node.setof or node.pct_type:
            raise self.error(location, f"unsupported type {'.'.join(names)}")
        modifier = self.type_modifier(name, node.typmods, location)
        if node.arrayBounds:
            return name + "[]", None if modifier is None else _array_modifier(modifier)
        return name, modifier

    def type_modifier(self, name: str, typmods: Any, location: int) -> Callable[[Any], Any] | None:
        if not typmods:
            return None
        values: list[int] = []
        for mod in typmods:
            value = getattr(getattr(mod, "val", None), "ival", None)
            if not isinstance(value, int) or value < 0:
                raise self.error(location, f"invalid type modifier for type {name}")
            values.append(value)
        if name in ("varchar", "bpchar") and len(values) == 1:
            length = values[0]
            if length < 1:
                word = "varchar" if name == "varchar" else "char"
                raise self.error(location, f"length for type {word} must be at least 1")
            if name == "bpchar":
                return lambda text: pgtypes.BpChar(text[:length].ljust(length))
            return lambda text: text[:length]
        if name == "numeric" and len(values) in (1, 2):
            return _numeric_modifier(values[0], values[1] if len(values) == 2 else 0)
        raise self.error(location, f"type modifiers are not supported for type {name}")

    def cast(self, typed: _Typed, target: str, modifier: Callable[[Any], Any] | None) -> _Typed:
        result = self.coerce(typed, target, explicit=True)
        if modifier is None:
            return result
        return self.fold(target, ev.strict1(_guard(modifier), result.fn), typed.location, [result])

    def c_TypeCast(self, node: Any) -> _Typed:
        target, modifier = self.type_from_name(node.typeName)
        return self.cast(self.compile(node.arg), target, modifier)

    # -- boolean structure -------------------------------------------------------------------

    def to_bool(self, typed: _Typed, what: str) -> _Typed:
        if typed.type == UNKNOWN:
            return self.literal(typed, "bool")
        if typed.type != "bool":
            message = f"argument of {what} must be type boolean, not type {_shown(typed.type)}"
            raise self.error(typed.location, message)
        return typed

    def c_BoolExpr(self, node: Any) -> _Typed:
        location = _loc(node)
        what = {
            BoolExprType.AND_EXPR: "AND",
            BoolExprType.OR_EXPR: "OR",
            BoolExprType.NOT_EXPR: "NOT",
        }[node.boolop]
        args = [self.to_bool(self.compile(arg), what) for arg in node.args]
        if what == "NOT":
            return self.fold("bool", ev.not_(args[0].fn), location, args)
        decided = _short_circuit(args, what == "OR", location)
        if decided is not None:
            return decided
        fns = [arg.fn for arg in args]
        if what == "OR":
            return self.fold("bool", ev.or_(fns), location, args)
        result = self.fold("bool", ev.and_(fns), location, args)
        eqs = tuple(eq for arg in args for eq in arg.eqs)
        return _Typed("bool", result.fn, location, result.const, result.value, eqs=eqs)

    def c_NullTest(self, node: Any) -> _Typed:
        arg = self.compile(node.arg)
        if arg.type == UNKNOWN:
            arg = self.literal(arg, "text")
        negate = node.nulltesttype == NullTestType.IS_NOT_NULL
        return self.fold("bool", ev.null_test(arg.fn, negate), _loc(node), [arg])

    def c_BooleanTest(self, node: Any) -> _Typed:
        kinds = {
            BoolTestType.IS_TRUE: ("IS TRUE", True, False),
            BoolTestType.IS_NOT_TRUE: ("IS NOT TRUE", True, True),
            BoolTestType.IS_FALSE: ("IS FALSE", False, False),
            BoolTestType.IS_NOT_FALSE: ("IS NOT FALSE", False, True),
            BoolTestType.IS_UNKNOWN: ("IS UNKNOWN", None, False),
            BoolTestType.IS_NOT_UNKNOWN: ("IS NOT UNKNOWN", None, True),
        }
        what, expect, negate = kinds[node.booltesttype]
        arg = self.to_bool(self.compile(node.arg), what)
        return self.fold("bool", ev.bool_test(arg.fn, expect, negate), _loc(node), [arg])

    # -- operators ---------------------------------------------------------------------------

    def operator_name(self, node: Any) -> str:
        names = _names(node.name)
        if len(names) == 2 and names[0] == "pg_catalog":
            return names[1]
        if len(names) != 1:
            raise self.error(_loc(node), f"unknown or unsupported operator {names[-1]}")
        return names[0]

    def c_A_Expr(self, node: Any) -> _Typed:
        location = _loc(node)
        kind = node.kind
        if kind in (A_Expr_Kind.AEXPR_OP, A_Expr_Kind.AEXPR_LIKE, A_Expr_Kind.AEXPR_ILIKE):
            op = self.operator_name(node)
            if node.lexpr is None:
                return self.unary(op, self.compile(node.rexpr), location)
            if op in _LIKE_OPS_ALL:
                return self.like_expr(op, node, location)
            return self.binary(op, self.compile(node.lexpr), self.compile(node.rexpr), location)
        if kind in (A_Expr_Kind.AEXPR_DISTINCT, A_Expr_Kind.AEXPR_NOT_DISTINCT):
            left, right = self.compile(node.lexpr), self.compile(node.rexpr)
            common, (left, right) = self.unify([left, right], location)
            negate = kind == A_Expr_Kind.AEXPR_DISTINCT
            fn = ev.distinct(ev.comparator("=", common), left.fn, right.fn, negate)
            return self.fold("bool", fn, location, [left, right])
        if kind == A_Expr_Kind.AEXPR_IN:
            return self.in_expr(node, location)
        if kind in (A_Expr_Kind.AEXPR_OP_ANY, A_Expr_Kind.AEXPR_OP_ALL):
            return self.quantified(node, kind == A_Expr_Kind.AEXPR_OP_ALL, location)
        if kind in _BETWEEN:
            return self.between(node, kind, location)
        label = kind.name if kind is not None else "?"
        raise self.error(location, f"{label} expressions are not supported in this context")

    def unary(self, op: str, arg: _Typed, location: int) -> _Typed:
        if arg.type in NUMERIC_RANK or arg.type == "interval":
            if op == "+" and arg.type != "interval":
                return arg
            if op == "-":
                fn = ev.strict1(ev.negate_value(arg.type), arg.fn)
                return self.fold(arg.type, fn, location, [arg])
        raise self.error(location, "Could not select an operator overload")

    def binary(self, op: str, left: _Typed, right: _Typed, location: int) -> _Typed:
        if op in ev.COMPARISON_OPS:
            return self.compare(op, left, right, location)
        if op in _ARITHMETIC:
            return self.arithmetic(op, left, right, location)
        if op == "||":
            return self.concat_op(left, right, location)
        if op in _ARRAY_OPS:
            return self.array_op(op, left, right, location)
        raise self.error(location, f"unknown or unsupported operator {op}")

    def same_arrays(self, left: _Typed, right: _Typed, location: int) -> None:
        """``anyarray`` operators take two arrays of one type: Postgres casts neither."""
        lt, rt = left.type, right.type
        if pgtypes.is_array(lt) and pgtypes.is_array(rt) and lt != rt:
            raise self.error(location, "Could not select an operator overload")

    def compare(self, op: str, left: _Typed, right: _Typed, location: int) -> _Typed:
        self.same_arrays(left, right, location)
        common, (left, right) = self.unify([left, right], location)
        fn = ev.strict2(ev.comparator(op, common), left.fn, right.fn)
        result = self.fold("bool", fn, location, [left, right])
        if op != "=" or result.const:
            return result
        eq = _eq_condition(left, right) or _eq_condition(right, left)
        return result if eq is None else _Typed("bool", result.fn, location, eqs=(eq,))

    def like_expr(self, op: str, node: Any, location: int) -> _Typed:
        escape = "\\"
        pattern_node: Any = node.rexpr
        if isinstance(pattern_node, ast.FuncCall) and _names(pattern_node.funcname)[-1] == (
            "like_escape"
        ):
            pattern_node, escape_node = pattern_node.args or (None, None)
            escape_arg = self.compile(escape_node)
            if escape_arg.type == UNKNOWN:
                escape_arg = self.literal(escape_arg, "text")
            if not escape_arg.const or escape_arg.type not in TEXTS:
                raise self.error(location, "ESCAPE must be a constant string")
            escape = escape_arg.value or ""
            if len(escape) > 1:
                raise self.error(location, "invalid escape string")
        left, right = self.compile(node.lexpr), self.compile(pattern_node)
        return self.like(op, left, right, location, escape)

    def like(self, op: str, left: _Typed, right: _Typed, location: int, escape: str) -> _Typed:
        left, right = self.textual(left, location), self.textual(right, location)
        if right.type == "bpchar":  # the pattern is text; only the matched side keeps padding
            right = self.coerce(right, "text")
        ignore_case, negate = _LIKE_OPS_ALL[op]
        fn: ev.Fn | None = None
        if right.const and right.failed is None:
            try:
                pattern = right.fn([])  # the constant as it is at run time, coerced
            except EvaluationError:
                pattern = None
            if isinstance(pattern, str):
                fn = ev.like_constant(pattern, ignore_case, escape, left.fn)
        if fn is None:
            fn = ev.strict2(ev.like(ignore_case, escape), left.fn, right.fn)
        if negate:
            fn = ev.not_(fn)
        return self.fold("bool", fn, location, [left, right])

    def textual(self, typed: _Typed, location: int) -> _Typed:
        if typed.type == UNKNOWN:
            return self.literal(typed, "text")
        if typed.type not in TEXTS:
            raise self.error(location, "Could not select an operator overload")
        return typed

    def arithmetic(self, op: str, left: _Typed, right: _Typed, location: int) -> _Typed:
        if left.type == UNKNOWN and right.type == UNKNOWN:
            raise self.error(location, "Could not select an operator overload")
        left, right = self.arithmetic_unknowns(op, left, right)
        lt, rt = left.type, right.type
        if lt in NUMERIC_RANK and rt in NUMERIC_RANK:
            common, (left, right) = self.unify([left, right], location)
            func = ev.numeric_op(op, common)
            if func is None:
                raise self.error(location, "Could not select an operator overload")
            return self.fold(common, ev.strict2(func, left.fn, right.fn), location, [left, right])
        picked = self.datetime_arithmetic(op, left, right)
        if picked is None:
            raise self.error(location, "Could not select an operator overload")
        type_name, func, args = picked
        fn = ev.strict2(func, args[0].fn, args[1].fn)
        return self.fold(type_name, fn, location, args)

    def arithmetic_unknowns(self, op: str, left: _Typed, right: _Typed) -> tuple[_Typed, _Typed]:
        # Postgres: ``ts + 'x'`` can only mean an interval, ``ts - 'x'`` means a timestamp.
        if left.type == UNKNOWN:
            known = right.type
            target = "interval" if known in TIMESTAMPS and op == "+" else known
            left = self.literal(left, target)
        if right.type == UNKNOWN:
            known = left.type
            target = "interval" if known in TIMESTAMPS and op == "+" else known
            right = self.literal(right, target)
        return left, right

    def datetime_arithmetic(
        self, op: str, left: _Typed, right: _Typed
    ) -> tuple[str, Callable[[Any, Any], Any], list[_Typed]] | None:
        lt, rt = left.type, right.type
        if lt == "date" and rt in ("int2", "int4") and op in "+-":
            sign = 1 if op == "+" else -1
            return "date", lambda d, n: ev.date_plus_days(d, sign * n), [left, right]
        if lt in ("int2", "int4") and rt == "date" and op == "+":
            return "date", lambda n, d: ev.date_plus_days(d, n), [left, right]
        if lt == "date" and rt == "date" and op == "-":
            return "int4", ev.date_minus_date, [left, right]
        if lt == "interval" and rt == "interval" and op in "+-":
            func = (lambda a, b: a + b) if op == "+" else (lambda a, b: a - b)
            return "interval", func, [left, right]
        if lt == "interval" and rt in TIMESTAMPS and op == "+":
            left, right = right, left
            lt, rt = rt, lt
        if lt in TIMESTAMPS and rt == "interval" and op in "+-":
            target = "timestamp" if lt == "date" else lt
            left = self.coerce(left, target)
            if op == "+":
                return target, ev.timestamp_plus, [left, right]
            return target, lambda t, i: ev.timestamp_plus(t, -i), [left, right]
        if lt in TIMESTAMPS and rt in TIMESTAMPS and op == "-":
            common, args = self.unify([left, right], left.location)
            if common == "date":
                return None
            return "interval", ev.timestamp_minus, args
        return None

    def concat_op(self, left: _Typed, right: _Typed, location: int) -> _Typed:
        lt, rt = left.type, right.type
        if pgtypes.is_array(lt) or pgtypes.is_array(rt):
            return self.array_concat(left, right, location)
        if lt in TEXTS or rt in TEXTS or UNKNOWN in (lt, rt):
            left, right = self.as_text(left, location), self.as_text(right, location)
            fn = ev.strict2(lambda a, b: a + b, left.fn, right.fn)
            return self.fold("text", fn, location, [left, right])
        raise self.error(location, "Could not select an operator overload")

    def as_text(self, typed: _Typed, location: int) -> _Typed:
        if typed.type == UNKNOWN:
            return self.literal(typed, "text")
        if typed.type == "bpchar":
            return self.coerce(typed, "text")
        if typed.type in TEXTS or typed.type.startswith("opaque:"):
            return _Typed(
                "text", typed.fn, typed.location, typed.const, typed.value, failed=typed.failed
            )
        if pgtypes.is_array(typed.type):
            raise self.error(location, "Could not select an operator overload")
        source = typed.type

        def render(value: Any) -> str:
            return pgtypes.format_value(source, value)

        return self.fold("text", ev.strict1(render, typed.fn), typed.location, [typed])

    def array_concat(self, left: _Typed, right: _Typed, location: int) -> _Typed:
        lt, rt = left.type, right.type
        if pgtypes.is_array(lt) and pgtypes.is_array(rt) or UNKNOWN in (lt, rt):
            common, (left, right) = self.unify([left, right], location)
            return self.fold(common, _array_cat(left.fn, right.fn), location, [left, right])
        array_first = pgtypes.is_array(lt)
        array, element = (left, right) if array_first else (right, left)
        inner = _common([pgtypes.element_type(array.type), element.type])
        if inner is None:
            raise self.error(location, "Could not select an operator overload")
        array, element = self.coerce(array, inner + "[]"), self.coerce(element, inner)
        fn = _array_add(array.fn, element.fn, append=array_first)
        return self.fold(inner + "[]", fn, location, [array, element])

    def array_op(self, op: str, left: _Typed, right: _Typed, location: int) -> _Typed:
        if not (pgtypes.is_array(left.type) or pgtypes.is_array(right.type)):
            raise self.error(location, "Could not select an operator overload")
        self.same_arrays(left, right, location)
        common, (left, right) = self.unify([left, right], location)
        if not pgtypes.is_array(common):
            raise self.error(location, "Could not select an operator overload")
        funcs: dict[str, Callable[[Any, Any], bool]] = {
            "@>": ev.array_contains,
            "<@": lambda a, b: ev.array_contains(b, a),
            "&&": ev.array_overlaps,
        }
        fn = ev.strict2(funcs[op], left.fn, right.fn)
        return self.fold("bool", fn, location, [left, right])

    def in_expr(self, node: Any, location: int) -> _Typed:
        """``x IN (...)`` as Postgres builds it: the constant items (two or more) become one
        ``x = ANY(ARRAY[...])`` typed together; every other item is its own ``x = item``, all
        OR-ed in that order. ``NOT IN`` is its negation."""
        needle = self.compile(node.lexpr)
        items = [self.compile(item) for item in node.rexpr]
        negate = self.operator_name(node) == "<>"
        constants = [item for item in items if item.const or item.failed is not None]
        parts: list[_Typed] = []
        rest = items
        if len(constants) > 1:
            parts.append(self.constant_list(needle, constants, location))
            rest = [item for item in items if not (item.const or item.failed is not None)]
        parts += [self.compare("=", needle, item, location) for item in rest]
        result = parts[0] if len(parts) == 1 else _short_circuit(parts, True, location)
        if result is None:
            result = self.fold("bool", ev.or_([part.fn for part in parts]), location, parts)
        if negate:
            return self.fold("bool", ev.not_(result.fn), location, [result])
        return result

    def constant_list(self, needle: _Typed, constants: list[_Typed], location: int) -> _Typed:
        common, (needle, *items) = self.unify([needle, *constants], location, first_text_wins=True)
        fn = ev.in_list(ev.comparator("=", common), needle.fn, [item.fn for item in items])
        result = self.fold("bool", fn, location, [needle, *items])
        if result.const or result.failed is not None or needle.column is None:
            return result
        values = frozenset(ev.hash_key(i.value) for i in items if i.value is not None)
        return _Typed("bool", result.fn, location, eqs=((needle.column, values),))

    def quantified(self, node: Any, want_all: bool, location: int) -> _Typed:
        op = self.operator_name(node)
        left, right = self.compile(node.lexpr), self.compile(node.rexpr)
        if right.type == UNKNOWN:
            element = "text" if left.type == UNKNOWN else left.type
            right = self.literal(right, element + "[]")
        if not pgtypes.is_array(right.type):
            raise self.error(right.location, "argument of ANY must be an array")
        if op in _LIKE_OPS_ALL:
            left = self.textual(left, location)
            right = self.coerce(right, "text[]") if right.type != "text[]" else right
            ignore_case, negate = _LIKE_OPS_ALL[op]
            func = _negated(ev.like(ignore_case), negate)
            element = "text"
        elif op in ev.COMPARISON_OPS:
            element = _common([left.type, pgtypes.element_type(right.type)]) or ""
            if not element or pgtypes.is_array(element):
                raise self.error(location, "Could not select an operator overload")
            left, right = self.coerce(left, element), self.coerce(right, element + "[]")
            func = ev.comparator(op, element)
        else:
            raise self.error(location, f"unknown or unsupported operator {op}")
        fn = ev.quantified(func, left.fn, right.fn, want_all)
        result = self.fold("bool", fn, location, [left, right])
        if want_all or op != "=" or result.const or left.column is None or not right.const:
            return result
        elements = pgtypes.flatten(right.value or ())
        values = frozenset(ev.hash_key(item) for item in elements if item is not None)
        return _Typed("bool", result.fn, location, eqs=((left.column, values),))

    def between(self, node: Any, kind: A_Expr_Kind, location: int) -> _Typed:
        needle = self.compile(node.lexpr)
        low, high = (self.compile(bound) for bound in node.rexpr)
        if needle.type == UNKNOWN and needle.param is not None:  # typed by x >= low, as in Postgres
            needle = self.literal(needle, _common([low.type]) or "text")

        def within(lower: _Typed, upper: _Typed) -> _Typed:
            first = self.compare("<=", lower, needle, location)
            second = self.compare("<=", needle, upper, location)
            return self.fold("bool", ev.and_([first.fn, second.fn]), location, [first, second])

        result = within(low, high)
        if kind in (A_Expr_Kind.AEXPR_BETWEEN_SYM, A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM):
            swapped = within(high, low)
            result = self.fold("bool", ev.or_([result.fn, swapped.fn]), location, [result, swapped])
        if kind in (A_Expr_Kind.AEXPR_NOT_BETWEEN, A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM):
            result = self.fold("bool", ev.not_(result.fn), location, [result])
        return result

    # -- arrays and functions ----------------------------------------------------------------

    def c_A_ArrayExpr(self, node: Any) -> _Typed:
        location = _loc(node)
        elements = [self.compile(item) for item in node.elements or ()]
        if not elements:
            raise self.error(location, "cannot determine type of empty array")
        common, elements = self.unify(elements, location, first_text_wins=True)
        type_name = common if pgtypes.is_array(common) else common + "[]"
        fns = [element.fn for element in elements]

        def build(env: ev.Env) -> tuple[Any, ...]:
            return tuple(fn(env) for fn in fns)

        return self.fold(type_name, build, location, elements)

    def c_FuncCall(self, node: Any) -> _Typed:
        location = _loc(node)
        aggregate = (
            node.agg_star
            or node.agg_distinct
            or node.agg_order
            or node.agg_filter
            or node.over
            or node.agg_within_group
        )
        if aggregate:
            raise self.error(location, "aggregation is not supported in this context")
        names = _names(node.funcname)
        if len(names) == 2 and names[0] == "pg_catalog":
            names = names[1:]
        args = list(node.args or ())
        name = ".".join(names)
        handler = _FUNCTIONS.get(name) if not node.func_variadic else None
        cast_target = pgtypes.ALIASES.get(name, name)
        if handler is None and cast_target in SCALARS and len(args) == 1:
            return self.cast(self.compile(args[0]), cast_target, None)
        if handler is None or not handler[0] <= len(args) <= handler[1]:
            raise self.error(location, f"unknown or unsupported function {name}/{len(args)}")
        compiled = [self.compile(arg) for arg in args]
        result: _Typed = getattr(self, handler[2])(name, compiled, location)
        return result

    def c_CoalesceExpr(self, node: Any) -> _Typed:
        args = [self.compile(arg) for arg in node.args or ()]
        return self.f_coalesce("coalesce", args, _loc(node))

    def c_MinMaxExpr(self, node: Any) -> _Typed:
        args = [self.compile(arg) for arg in node.args or ()]
        name = "greatest" if node.op == MinMaxOp.IS_GREATEST else "least"
        return self.f_greatest(name, args, _loc(node))

    def f_case(self, name: str, args: list[_Typed], location: int) -> _Typed:
        arg = args[0]
        if arg.type not in TEXTS and arg.type != UNKNOWN:
            message = f"Could not select a function overload for {name}({_shown(arg.type)})"
            raise self.error(location, message)
        arg = self.textual(arg, location)
        if arg.type == "bpchar":
            arg = self.coerce(arg, "text")
        func = where_like.fold_case if name == "lower" else where_like.upper_case
        return self.fold("text", ev.strict1(func, arg.fn), location, [arg])

    def f_like(self, name: str, args: list[_Typed], location: int) -> _Typed:
        return self.like("~~", args[0], args[1], location, "\\")

    def f_concat(self, name: str, args: list[_Typed], location: int) -> _Typed:
        parts = [self.concat_part(arg) for arg in args]
        fns = [part.fn for part in parts]

        def run(env: ev.Env) -> str:
            return "".join(value for fn in fns if (value := fn(env)) is not None)

        return self.fold("text", run, location, parts)

    def concat_part(self, typed: _Typed) -> _Typed:
        if typed.type == UNKNOWN:
            return self.literal(typed, "text")
        if typed.type in TEXTS or typed.type.startswith("opaque:"):
            return typed
        source = typed.type

        def render(value: Any) -> str:
            return pgtypes.format_value(source, value)

        return self.fold("text", ev.strict1(render, typed.fn), typed.location, [typed])

    def f_coalesce(self, name: str, args: list[_Typed], location: int) -> _Typed:
        common, args = self.unify(args, location, first_text_wins=True)
        kept: list[_Typed] = []
        for arg in args:  # the planner stops at the first non-NULL constant
            if arg.failed is not None:
                return _failed(common, arg.failed, arg.location)
            if arg.const and arg.value is None:
                continue
            kept.append(arg)
            if arg.const:
                break
        if not kept:
            return self.const(common, None, location)
        return self.fold(common, ev.coalesce([arg.fn for arg in kept]), location, kept)

    def f_greatest(self, name: str, args: list[_Typed], location: int) -> _Typed:
        common, args = self.unify(args, location, first_text_wins=True)
        compare = ev.comparator(">" if name == "greatest" else "<", common)
        return self.fold(common, ev.greatest(compare, [arg.fn for arg in args]), location, args)


_BETWEEN: Final = frozenset(
    {
        A_Expr_Kind.AEXPR_BETWEEN,
        A_Expr_Kind.AEXPR_NOT_BETWEEN,
        A_Expr_Kind.AEXPR_BETWEEN_SYM,
        A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM,
    }
)
_MANY: Final = 1 << 16
_FUNCTIONS: Final = {
    "lower": (1, 1, "f_case"),
    "upper": (1, 1, "f_case"),
    "like": (2, 2, "f_like"),
    "concat": (1, _MANY, "f_concat"),
}


def _failed(type_name: str, error: Exception, location: int) -> _Typed:
    message = str(error)

    def run(env: ev.Env) -> Any:
        raise ev.EvalError(message)

    return _Typed(type_name, run, location, failed=error)


def _short_circuit(args: Sequence[_Typed], stop: bool, location: int) -> _Typed | None:
    """``AND`` (``stop`` false) / ``OR`` (true) as the planner folds them, in order: a failed
    constant raises, a constant ``stop`` decides and the arguments after it are never run."""
    for arg in args:
        if arg.failed is not None:
            return _failed("bool", arg.failed, arg.location)
        if arg.const and arg.value is stop:
            return _Typed("bool", ev.constant(stop), location, const=True, value=stop)
    return None


def _eq_condition(column_side: _Typed, const_side: _Typed) -> IndexCondition | None:
    if column_side.column is None or not const_side.const:
        return None
    value = const_side.value
    values: frozenset[Hashable] = frozenset() if value is None else frozenset({ev.hash_key(value)})
    return column_side.column, values


def _guard(func: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Turn conversion failures at run time into :class:`EvalError`."""

    def run(value: Any) -> Any:
        try:
            return func(value)
        except ev.EvalError:
            raise
        except (ValueError, ArithmeticError, OverflowError, RecursionError):
            # the input function's message may quote the row's value: never pass it on
            raise ev.EvalError(
                "invalid input syntax in a cast", "invalid_text_representation"
            ) from None

    return run


def _negated(func: Callable[[Any, Any], bool], negate: bool) -> Callable[[Any, Any], bool]:
    if not negate:
        return func
    return lambda a, b: not func(a, b)


def _numeric_modifier(precision: int, scale: int) -> Callable[[Any], Any]:
    quantum = Decimal(1).scaleb(-scale)
    limit = Decimal(10) ** (precision - scale)

    def apply(value: Decimal) -> Decimal:
        if not value.is_finite():
            return value
        rounded = value.quantize(quantum, rounding="ROUND_HALF_UP", context=ev.EXACT)
        if rounded.copy_abs() >= limit:
            raise ev.EvalError("numeric field overflow")
        return rounded

    return apply


def _array_modifier(modifier: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def apply(value: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(
            apply(item) if isinstance(item, tuple) else (None if item is None else modifier(item))
            for item in value
        )

    return apply


def _array_cat(left: ev.Fn, right: ev.Fn) -> ev.Fn:
    def run(env: ev.Env) -> Any:
        a, b = left(env), right(env)
        if a is None:
            return b
        if b is None:
            return a
        return ev.array_concat(a, b)

    return run


def _array_add(array: ev.Fn, element: ev.Fn, append: bool) -> ev.Fn:
    def run(env: ev.Env) -> Any:
        values, item = array(env), element(env)
        return ev.array_add(values or (), item, append)

    return run


# Names the subquery compiler (:mod:`shapes.subquery_compile`) builds on.
Typed = _Typed
common_type = _common
location_of = _loc
