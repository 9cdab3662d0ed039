"""``shapes.parse_tree.parse_sql`` gives pglast's tree, node for node and position for position.

The oracle is pglast's own ``parse_sql``: for each text, the trees are compared attribute by
attribute, locations included (pglast's ``==`` leaves them out), and a text pglast refuses is
refused with the same message and position.
"""

from __future__ import annotations

import enum
import random
from typing import Any

import pytest
from pglast import ast
from pglast import parse_sql as pglast_parse_sql
from pglast.parser import ParseError

from shapes.parse_tree import parse_sql
from tests.where_fuzz import fuzzer
from tests.where_fuzz.test_regressions import CASES

PREFIX = "SELECT 1 WHERE "

EDGES = [
    "id = 0",
    "b = false AND c = true AND n IS NULL AND x = NULL",
    "s = '' AND t = 'é' AND u = E'\\n' AND v = U&'\\0041'",
    "f = 1.5 AND g = -2 AND h = 1e10 AND i = 9223372036854775808 AND j = -0.0",
    "z = B'101' AND y = X'FF' AND w = B''",
    "c::varchar(3) = 'x' AND d::numeric(10, 2) > 1 AND e::timestamptz(0) < now()",
    "a = ANY('{1,2}'::int[]) AND b <> ALL(ARRAY[1, 2]) AND c[1] = 2 AND d[1:2] = '{}'",
    "t LIKE 'a%' ESCAPE '!' AND t NOT ILIKE '%B' AND t SIMILAR TO 'x'",
    "a BETWEEN 1 AND 2 AND b NOT BETWEEN SYMMETRIC 3 AND 1",
    "a IS DISTINCT FROM b AND c IS NOT DISTINCT FROM 1 AND d IS NOT TRUE AND e IS UNKNOWN",
    "coalesce(a, b, 0) = greatest(1, 2) AND least(x) > 0 AND nullif(a, 1) IS NULL",
    "CASE WHEN a THEN 1 ELSE 2 END = 1 AND (a, b) = (1, 2) AND ROW(a) IS NULL",
    "id IN (SELECT id FROM t WHERE x = 1) AND NOT EXISTS (SELECT 1 FROM u)",
    "x IN (1, 2, 3) AND y NOT IN ('a') AND \"Quoted Col\" = 1 AND s.t.u = 2",
    "lower(name) = $1 AND id = $2::int AND t @> '{}' AND - a > + b",
    "été = 'ça' AND “x” = 1 OR 名前 = '値' AND id = 5",
    "1 = 1 OR now() > '2024-01-01'::date AT TIME ZONE 'UTC' AND x COLLATE \"C\" < 'b'",
    "a = 1;",
    "",
]

BAD = ["id = ", "id = 1) OR (true", "é = 'unterminated", "a IN ()", "SELECT", "1 = 1 ORDER"]


def _same(ours: Any, theirs: Any, path: str) -> None:
    assert type(ours) is type(theirs), f"{path}: {type(ours)} != {type(theirs)}"
    if isinstance(theirs, ast.Node):
        for name in type(theirs).__slots__:  # type: ignore[attr-defined]
            _same(getattr(ours, name), getattr(theirs, name), f"{path}.{name}")
    elif isinstance(theirs, tuple):
        assert len(ours) == len(theirs), f"{path}: {len(ours)} != {len(theirs)} items"
        for index, (mine, other) in enumerate(zip(ours, theirs, strict=True)):
            _same(mine, other, f"{path}[{index}]")
    elif isinstance(theirs, enum.Enum):
        assert ours is theirs, f"{path}: {ours!r} != {theirs!r}"
    else:
        assert ours == theirs, f"{path}: {ours!r} != {theirs!r}"


def _check(text: str) -> None:
    try:
        expected = pglast_parse_sql(text)
    except ParseError as refused:
        with pytest.raises(ParseError) as ours:
            parse_sql(text)
        assert ours.value.args == refused.args
        return
    _same(parse_sql(text), expected, repr(text))


@pytest.mark.parametrize("clause", EDGES + BAD)
def test_edge_cases(clause: str) -> None:
    _check(PREFIX + clause)


def test_the_fuzzer_regressions() -> None:
    for _name, clause, _params, _row in CASES:
        _check(PREFIX + clause)


def test_generated_clauses() -> None:
    rng = random.Random(20261207)
    for _ in range(3000):
        clause, _params = fuzzer.generate_clause(rng)
        _check(PREFIX + clause)


def test_other_statements() -> None:
    # What subset requests and ORDER BY lists parse, and statements a clause must not become.
    for text in [
        "SELECT 1 ORDER BY a DESC NULLS LAST, b USING <",
        "SELECT 1 LIMIT 10 OFFSET 5",
        "SELECT DISTINCT id FROM parent WHERE id IN (SELECT DISTINCT ON (a) a FROM b)",
        "SELECT 1 WHERE a = 1; DROP TABLE x",
        "SELECT 1 WHERE é = 'ü'; SELECT 'ß' ; SELECT 2",
        "SELECT 1 WHERE a = 1 UNION SELECT 2",
        "INSERT INTO t (a) VALUES (1) RETURNING *",
        "CREATE TABLE t (a int PRIMARY KEY, b text DEFAULT 'x')",
        "WITH q AS (SELECT 1) SELECT * FROM q JOIN r USING (id) GROUP BY 1 HAVING count(*) > 1",
    ]:
        _check(text)
