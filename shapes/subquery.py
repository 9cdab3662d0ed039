"""The vocabulary of subquery shapes (``col IN (SELECT c FROM t WHERE ...)`` in a ``where``).

Layer: ``shapes`` (pure). A clause with sublinks is compiled (:mod:`shapes.subquery_compile`)
into a plan (:mod:`shapes.subquery_plan`) that the engine drives with the current value set of
each inner query. This module holds the plain data both sides share:

* :class:`Dependency`: one distinct inner ``SELECT`` (table, projected columns, inner ``where``);
* :class:`Position`: one leaf of the clause's disjunctive normal form;
* :class:`RowMeta`: what evaluating a row against the value sets gives;
* :class:`SubqueryLimits`: how deep and how many sublinks a clause may hold;
* :data:`ValueKey`: the normalised value of a dependency's projected column(s).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "Dependency",
    "Position",
    "RowMeta",
    "SubqueryLimits",
    "ValueKey",
    "missing_table_message",
]

ValueKey = Hashable
"""A dependency value: one normalised value (single column) or a tuple of them (row form);
``None`` stands for a NULL part. Values Postgres finds equal have equal keys."""


@dataclass(frozen=True, slots=True)
class Dependency:
    """One distinct inner ``SELECT``: equal table, columns and ``where`` are one dependency.

    ``where`` is the inner clause as canonical SQL with parameters substituted (it may itself
    hold sublinks), ``None`` when the inner ``SELECT`` has no ``WHERE``. ``key_types`` are the
    types the values are compared and normalised in (one per column, from the outer and inner
    column types: ``int8`` for every integer pair, ``text``, ``numeric``, ...): equal
    dependencies give equal :data:`ValueKey` s for equal inner rows, so their value sets can be
    shared; the same ``SELECT`` compared in other types is another dependency.
    """

    schema: str
    table: str
    columns: tuple[str, ...]
    where: str | None
    key_types: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Position:
    """A leaf of the clause's DNF. ``dependency`` is None for an ordinary predicate leaf;
    ``columns`` are the outer left-side columns of a subquery leaf (empty otherwise)."""

    disjunct: int
    dependency: int | None
    negated: bool
    columns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SubqueryLimits:
    """Bounds on sublinks: nesting depth (outer clause's sublinks are depth 1) and count."""

    max_depth: int = 4
    max_subqueries: int = 16


class RowMeta(NamedTuple):
    """A row evaluated against the dependencies' value sets."""

    included: bool
    active_conditions: tuple[bool, ...]


def missing_table_message(schema: str, name: str) -> str:
    """The reference server's text for a table that does not exist."""
    return (
        f'Table "{schema}"."{name}" does not exist. If the table name contains capitals or '
        "special characters you must quote it."
    )
