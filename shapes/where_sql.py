"""SQL text of a checked ``where`` clause, for the snapshot query.

Layer: ``shapes`` (pure). :func:`deparse` writes a clause that :class:`~shapes.where_compile.
WhereCompiler` has accepted (and whose ``$n`` parameters it has replaced by typed literals) back
to SQL. Every operator application, test and cast is put in parentheses, so the text means the
same tree whatever Postgres's precedence rules are (``(a = $1) BETWEEN true AND b`` keeps its
parentheses, and ``NOT BETWEEN`` nests). Numeric literals are written in plain decimal, so the
text reads the same on every Postgres version; strings, identifiers and type names are quoted
by pglast. Only the node types the compiler accepts can reach this module.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Final

from pglast import ast
from pglast.enums import A_Expr_Kind, BoolExprType, BoolTestType, MinMaxOp, NullTestType
from pglast.stream import RawStream, maybe_double_quote_name

from shapes.pgtypes import ALIASES

_BOOL_TESTS: Final = {
    BoolTestType.IS_TRUE: "IS TRUE",
    BoolTestType.IS_NOT_TRUE: "IS NOT TRUE",
    BoolTestType.IS_FALSE: "IS FALSE",
    BoolTestType.IS_NOT_FALSE: "IS NOT FALSE",
    BoolTestType.IS_UNKNOWN: "IS UNKNOWN",
    BoolTestType.IS_NOT_UNKNOWN: "IS NOT UNKNOWN",
}
_BETWEEN: Final = {
    A_Expr_Kind.AEXPR_BETWEEN: "BETWEEN",
    A_Expr_Kind.AEXPR_NOT_BETWEEN: "NOT BETWEEN",
    A_Expr_Kind.AEXPR_BETWEEN_SYM: "BETWEEN SYMMETRIC",
    A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM: "NOT BETWEEN SYMMETRIC",
}


SublinkRenderer = Callable[[Any], str]
_sublinks: ContextVar[SublinkRenderer | None] = ContextVar("sublinks", default=None)


def deparse(node: Any, sublinks: SublinkRenderer | None = None) -> str:
    """The SQL text of an expression tree, fully parenthesised.

    ``sublinks`` renders each ``SubLink`` node (the subquery compiler checked them); without
    it a clause holding one cannot be deparsed.
    """
    if sublinks is not None:
        token = _sublinks.set(sublinks)
        try:
            return deparse(node)
        finally:
            _sublinks.reset(token)
    if isinstance(node, ast.SubLink):
        render = _sublinks.get()
        if render is None:
            raise ValueError("cannot deparse SubLink")
        return render(node)
    handler = _HANDLERS.get(type(node).__name__)
    if handler is None:
        raise ValueError(f"cannot deparse {type(node).__name__}")
    return handler(node)


def quote_name(*names: str) -> str:
    """A (possibly schema-qualified) identifier, quoted where Postgres needs it (by pglast's
    rule, as its printer quotes names)."""
    return ".".join(maybe_double_quote_name(name) for name in names)


def _raw(node: Any) -> str:
    """pglast's printing of ``node``. Each call builds a visitor class and links every node of
    the subtree to its ancestors (cyclic garbage): the frequent nodes are written here."""
    text: str = RawStream()(node)
    return text


def _column_ref(node: Any) -> str:
    fields = node.fields
    if all(isinstance(field, ast.String) for field in fields):
        return quote_name(*(field.sval for field in fields))
    return _raw(node)


def _const(node: Any) -> str:
    value = node.val
    if node.isnull or value is None:
        return "NULL"
    if isinstance(value, ast.Integer):
        return f"({value.ival})"
    if isinstance(value, ast.Float):
        return f"({plain_number(str(value.fval))})"
    if isinstance(value, ast.String) and value.sval is not None:  # as pglast quotes it
        return "'" + value.sval.replace("'", "''") + "'"
    return _raw(node)


def plain_number(text: str) -> str:
    """A numeric literal (``0x1F``, ``1_000``, ``1.5e3``) as SQL every Postgres version reads.

    Integers that fit ``int8`` stay bare (typed ``int4``/``int8`` as the literal was); anything
    else is a ``numeric`` literal, written as a string cast so its scale is kept.
    """
    cleaned = text.replace("_", "")
    negative = cleaned.startswith("-")
    body = cleaned.lstrip("+-")
    if body[:2].lower() in ("0x", "0o", "0b"):
        body = str(int(body, 0))
    number = "-" + body if negative else body
    if body.isdigit() and len(body) <= 20 and -(1 << 63) <= int(number) < (1 << 63):
        return str(int(number))
    return f"CAST('{number}' AS pg_catalog.numeric)"


def _type_name(node: Any) -> str:
    cast = _raw(ast.TypeCast(arg=ast.A_Const(isnull=True), typeName=node))
    prefix, suffix = "CAST(NULL AS ", ")"
    if not (cast.startswith(prefix) and cast.endswith(suffix)):
        raise ValueError("unexpected type name form")
    return cast[len(prefix) : -len(suffix)]


def _type_cast(node: Any) -> str:
    return f"CAST({deparse(node.arg)} AS {_type_name(node.typeName)})"


def _bool_expr(node: Any) -> str:
    args = [deparse(arg) for arg in node.args]
    if node.boolop == BoolExprType.NOT_EXPR:
        return f"(NOT {args[0]})"
    joiner = " AND " if node.boolop == BoolExprType.AND_EXPR else " OR "
    return "(" + joiner.join(args) + ")"


def _null_test(node: Any) -> str:
    test = "IS NOT NULL" if node.nulltesttype == NullTestType.IS_NOT_NULL else "IS NULL"
    return f"({deparse(node.arg)} {test})"


def _boolean_test(node: Any) -> str:
    return f"({deparse(node.arg)} {_BOOL_TESTS[node.booltesttype]})"


def _operator(node: Any) -> str:
    names: list[str] = [name.sval for name in node.name]
    if len(names) == 1:
        return names[0]
    return "OPERATOR(" + ".".join(names) + ")"


def _a_expr(node: Any) -> str:
    kind = node.kind
    if kind in (A_Expr_Kind.AEXPR_OP, A_Expr_Kind.AEXPR_LIKE, A_Expr_Kind.AEXPR_ILIKE):
        op = _operator(node)
        if node.lexpr is None:
            return f"({op} {deparse(node.rexpr)})"
        if op in _LIKE_WORDS:
            return _like(node, _LIKE_WORDS[op])
        return f"({deparse(node.lexpr)} {op} {deparse(node.rexpr)})"
    if kind in (A_Expr_Kind.AEXPR_DISTINCT, A_Expr_Kind.AEXPR_NOT_DISTINCT):
        test = "IS DISTINCT FROM" if kind == A_Expr_Kind.AEXPR_DISTINCT else "IS NOT DISTINCT FROM"
        return f"({deparse(node.lexpr)} {test} {deparse(node.rexpr)})"
    if kind == A_Expr_Kind.AEXPR_IN:
        negate = _operator(node) == "<>"
        items = ", ".join(deparse(item) for item in node.rexpr)
        return f"({deparse(node.lexpr)} {'NOT IN' if negate else 'IN'} ({items}))"
    if kind in (A_Expr_Kind.AEXPR_OP_ANY, A_Expr_Kind.AEXPR_OP_ALL):
        which = "ANY" if kind == A_Expr_Kind.AEXPR_OP_ANY else "ALL"
        return f"({deparse(node.lexpr)} {_operator(node)} {which} ({deparse(node.rexpr)}))"
    if kind in _BETWEEN:
        low, high = (deparse(bound) for bound in node.rexpr)
        return f"({deparse(node.lexpr)} {_BETWEEN[kind]} {low} AND {high})"
    raise ValueError(f"cannot deparse {kind!r}")


def _like(node: Any, word: str) -> str:
    pattern = node.rexpr
    names = [name.sval for name in getattr(pattern, "funcname", None) or ()]
    if isinstance(pattern, ast.FuncCall) and names[-1:] == ["like_escape"]:
        text, escape = (deparse(arg) for arg in pattern.args or ())
        return f"({deparse(node.lexpr)} {word} {text} ESCAPE {escape})"
    return f"({deparse(node.lexpr)} {word} {deparse(pattern)})"


def _array(node: Any) -> str:
    return "ARRAY[" + ", ".join(deparse(item) for item in node.elements or ()) + "]"


def _func_call(node: Any) -> str:
    names = [name.sval for name in node.funcname]
    if len(names) == 2 and names[0] == "pg_catalog":
        names = names[1:]
    if len(names) == 1 and names[0] not in _FUNCTIONS:  # a cast written as a call: int4(x)
        target = ALIASES.get(names[0], names[0])
        return f"CAST({deparse(node.args[0])} AS pg_catalog.{target})"
    quoted = quote_name("pg_catalog", *names)
    return f"{quoted}(" + ", ".join(deparse(arg) for arg in node.args or ()) + ")"


def _coalesce(node: Any) -> str:
    return "COALESCE(" + ", ".join(deparse(arg) for arg in node.args) + ")"


def _min_max(node: Any) -> str:
    name = "GREATEST" if node.op == MinMaxOp.IS_GREATEST else "LEAST"
    return f"{name}(" + ", ".join(deparse(arg) for arg in node.args) + ")"


_LIKE_WORDS: Final = {"~~": "LIKE", "~~*": "ILIKE", "!~~": "NOT LIKE", "!~~*": "NOT ILIKE"}
_FUNCTIONS: Final = frozenset({"lower", "upper", "like", "concat", "like_escape"})
_HANDLERS: Final = {
    "A_Const": _const,
    "ColumnRef": _column_ref,
    "TypeCast": _type_cast,
    "BoolExpr": _bool_expr,
    "NullTest": _null_test,
    "BooleanTest": _boolean_test,
    "A_Expr": _a_expr,
    "A_ArrayExpr": _array,
    "FuncCall": _func_call,
    "CoalesceExpr": _coalesce,
    "MinMaxExpr": _min_max,
}
