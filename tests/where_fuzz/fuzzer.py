"""Differential fuzzer of where clauses: syncd's evaluator against Postgres itself.

A typed table with edge-case rows is created in a database; clauses over it are generated from
the supported subset (with ``$n`` parameters). For every clause and row, three decisions are
compared: syncd's (``parse_where`` then ``Where.matches`` on the row's text values exactly as
syncd receives them: output functions under the replication session's settings), Postgres's on
the clause as the client wrote it (parameters bound as untyped text), and Postgres's on the SQL
syncd deparses for its snapshot query. Each disagreement is counted under a class:

``crash``                   syncd raised something other than a request error / evaluation error
``refused_but_pg_accepts``  syncd answered 400, Postgres runs the clause on every row
``accepted_but_pg_refuses`` syncd accepted a clause Postgres cannot prepare or plan
``wrong_row``               both decided a row, differently
``missed_error``            Postgres raises on the row, syncd decided it
``spurious_error``          syncd raised on the row, Postgres decided it
``snapshot_differs``        the deparsed snapshot SQL selects other rows than the clause

Deliberate refusals (:class:`shapes.errors.RefusedClause`) are counted as ``refused_documented``
and are not mismatches. Run it long with ``make fuzz``; ``python -m tests.where_fuzz.fuzzer
--dsn <conninfo> --clauses N --seed S`` prints the counts and examples.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import psycopg
from psycopg import pq

from shapes import errors
from shapes.errors import WhereClauseError
from shapes.schema import Column
from shapes.where import Where, parse_where

SESSION_SETTINGS: Final = {
    "DateStyle": "ISO, DMY",
    "TimeZone": "UTC",
    "extra_float_digits": "1",
    "IntervalStyle": "iso_8601",
    "bytea_output": "hex",
}
"""The settings syncd's snapshot and replication sessions use (values arrive in these forms)."""

TABLE: Final = "where_fuzz"
_T = TypeVar("_T")
_INFINITE_DIFFERENCE: Final = "cannot subtract infinite timestamps"

# name, SQL type, Column(type_name, dims), edge values as SQL literals
_SPEC: Final[list[tuple[str, str, str, int, list[str]]]] = [
    ("i2", "int2", "int2", 0, ["0", "1", "-1", "32767", "-32768", "7"]),
    ("i4", "int4", "int4", 0, ["0", "1", "-1", "2147483647", "-2147483648", "42", "3"]),
    ("i8", "int8", "int8", 0, ["0", "-1", "9223372036854775807", "-9223372036854775808", "5"]),
    (
        "n",
        "numeric",
        "numeric",
        0,
        [
            "0",
            "-0.0",
            "1.5",
            "-2.50",
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "1e20",
            "0.000001",
            "123456789012345678901234567890.123",
            "0.1",
        ],
    ),
    (
        "f4",
        "float4",
        "float4",
        0,
        ["0", "'-0'", "1.5", "'NaN'", "'Infinity'", "'-Infinity'", "3.4e38", "1e-45", "0.1"],
    ),
    (
        "f8",
        "float8",
        "float8",
        0,
        [
            "0",
            "'-0'",
            "0.1",
            "1e308",
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "5e-324",
            "2.5",
            "0.30000000000000004",
            "123456789.123",
        ],
    ),
    (
        "t",
        "text",
        "text",
        0,
        [
            "''",
            "'a'",
            "'A'",
            "'abc'",
            "'a%b'",
            "'a_b'",
            "E'a\\\\b'",
            "' lead'",
            "'trail '",
            "'ÀÉß'",
            "'😀x'",
            "'NULL'",
            "'%'",
            "'ab  '",
        ],
    ),
    ("vc", "varchar(5)", "varchar", 0, ["''", "'ab'", "'abcde'", "'a b'", "'AB'"]),
    ("c", "char(4)", "bpchar", 0, ["''", "'a'", "'ab'", "'abcd'", "'A'", "'a_'"]),
    ("b", "bool", "bool", 0, ["true", "false"]),
    (
        "d",
        "date",
        "date",
        0,
        [
            "'2024-02-29'",
            "'2023-03-01'",
            "'0001-01-01'",
            "'0044-03-15 BC'",
            "'9999-12-31'",
            "'12000-01-01'",
            "'infinity'",
            "'-infinity'",
            "'2000-01-01'",
        ],
    ),
    ("tm", "time", "time", 0, ["'00:00'", "'23:59:59.999999'", "'24:00:00'", "'12:30:15.5'"]),
    (
        "ts",
        "timestamp",
        "timestamp",
        0,
        [
            "'2024-02-29 12:00'",
            "'infinity'",
            "'-infinity'",
            "'0001-01-01 00:00'",
            "'0044-03-15 10:00 BC'",
            "'9999-12-31 23:59:59.999999'",
            "'2000-01-01'",
            "'2000-01-31 08:00'",
        ],
    ),
    (
        "tz",
        "timestamptz",
        "timestamptz",
        0,
        [
            "'2024-02-29 12:00+02'",
            "'infinity'",
            "'-infinity'",
            "'2000-01-01 00:00+00'",
            "'1999-12-31 23:30-01'",
        ],
    ),
    (
        "iv",
        "interval",
        "interval",
        0,
        [
            "'0'",
            "'1 day'",
            "'-1 day'",
            "'1 mon -1 day'",
            "'1 year 2 mons 3 days 04:05:06.789'",
            "'-00:00:01'",
            "'30 days'",
            "'1 mon'",
            "'23:59:59'",
            "'-1 year +2 days'",
            "'1.5 hours'",
        ],
    ),
    (
        "u",
        "uuid",
        "uuid",
        0,
        [
            "'00000000-0000-0000-0000-000000000000'",
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
            "'ffffffff-ffff-ffff-ffff-ffffffffffff'",
        ],
    ),
    ("j", "jsonb", "jsonb", 0, ["'{}'", '\'{"b": 1, "a": [1, 2.50]}\'', "'null'", "'\"x\"'"]),
    (
        "ia",
        "int4[]",
        "int4",
        1,
        ["'{}'", "'{1,2,3}'", "'{NULL,1}'", "'{{1,2},{3,4}}'", "'[2:3]={7,8}'", "'{2147483647}'"],
    ),
    ("ta", "text[]", "text", 1, ["'{}'", "'{a,b}'", "'{\"a b\",NULL}'", "'{\"%\",_}'", "'{A}'"]),
]

COLUMNS: Final = {"id": Column("id", "int4", pk_index=0, not_null=True)} | {
    name: Column(name, type_name, dims=dims) for name, _, type_name, dims, _ in _SPEC
}


def sql_type(column: str) -> str:
    """The SQL type of a fuzz table column."""
    return next(spec[1] for spec in _SPEC if spec[0] == column)


def create_table(conn: psycopg.Connection[Any], rows: int, seed: int) -> None:
    """(Re)create the fuzz table with ``rows`` edge-case rows (row 1: all NULL)."""
    rng = random.Random(seed)
    definition = ", ".join(f"{name} {sql_type}" for name, sql_type, *_ in _SPEC)
    conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    conn.execute(f"CREATE TABLE {TABLE} (id int4 PRIMARY KEY, {definition})")
    for row_id in range(1, rows + 1):
        values = []
        for _, sql_type, _, _, edges in _SPEC:
            if row_id == 1 or rng.random() < 0.12:
                values.append("NULL")
            else:
                values.append(f"({rng.choice(edges)})::{sql_type}")
        conn.execute(f"INSERT INTO {TABLE} VALUES ({row_id}, {', '.join(values)})")


def read_rows(conn: psycopg.Connection[Any]) -> list[dict[str, str | None]]:
    """Every row as text values from the output functions, as syncd receives them."""
    names = ["id", *(spec[0] for spec in _SPEC)]
    result = conn.pgconn.exec_(f"SELECT {', '.join(names)} FROM {TABLE} ORDER BY id".encode())
    rows = []
    for index in range(result.ntuples):
        row: dict[str, str | None] = {}
        for column, name in enumerate(names):
            value = result.get_value(index, column)
            row[name] = None if value is None else value.decode()
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Clause generation


@dataclass
class _Gen:
    rng: random.Random
    params: list[str] = field(default_factory=list)

    def pick(self, options: Sequence[_T]) -> _T:
        return options[self.rng.randrange(len(options))]

    def literal(self, text: str) -> str:
        """A placeholder for an untyped string literal (see :meth:`finish`)."""
        self.params.append(text)
        return f"\x00{len(self.params) - 1}\x00"

    def finish(self, clause: str) -> tuple[str, dict[str, str]]:
        """Turn the placeholders that survived into quoted literals or ``$n`` parameters."""
        pieces = clause.split("\x00")
        params: dict[str, str] = {}
        for index in range(1, len(pieces), 2):
            text = self.params[int(pieces[index])]
            if self.rng.random() < 0.3:
                params[str(len(params) + 1)] = text
                pieces[index] = f"${len(params)}"
            else:
                pieces[index] = "'" + text.replace("'", "''") + "'"
        return "".join(pieces), params

    # -- values of a kind ------------------------------------------------------------------

    def value(self, kind: str, depth: int) -> str:
        makers: dict[str, Callable[[int], str]] = {
            "int": self.int_value,
            "numeric": self.numeric_value,
            "float": self.float_value,
            "text": self.text_value,
            "date": self.date_value,
            "timestamp": self.timestamp_value,
            "timestamptz": self.timestamptz_value,
            "interval": self.interval_value,
            "time": self.time_value,
            "uuid": lambda _: self.pick(
                ["u", self.literal("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")]
            ),
            "bool": lambda d: self.bool_expr(d),
        }
        return makers[kind](depth)

    def uuid_value(self, depth: int) -> str:
        if self.rng.random() < 0.6:
            return "u"
        return self.literal("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")

    def int_value(self, depth: int) -> str:
        literals = [
            "0",
            "1",
            "-1",
            "7",
            "2147483647",
            "-2147483648",
            "2147483648",
            "9223372036854775807",
            "-9223372036854775808",
            "32767",
            "-32768",
            "0x10",
        ]
        choice = self.rng.random()
        if choice < 0.4 or depth <= 0:
            return str(self.pick(["i2", "i4", "i8"]))
        if choice < 0.6:
            return str(self.pick(literals))
        if choice < 0.7:
            return f"-{self.int_value(depth - 1)}"
        if choice < 0.8:
            return f"({self.int_value(depth - 1)})::{self.pick(['int2', 'int4', 'int8'])}"
        op = self.pick(["+", "-", "*", "/", "%"])
        return f"({self.int_value(depth - 1)} {op} {self.int_value(depth - 1)})"

    def numeric_value(self, depth: int) -> str:
        choice = self.rng.random()
        if choice < 0.35 or depth <= 0:
            return "n"
        if choice < 0.55:
            return str(
                self.pick(
                    [
                        "1.5",
                        "-0.0",
                        "0.1",
                        "1e3",
                        "'NaN'::numeric",
                        "'Infinity'::numeric",
                        "100000000000000000000",
                    ]
                )
            )
        if choice < 0.7:
            source = self.pick(["f8", "f4", "i4", "i8", self.literal("2.5")])
            return f"({source})::numeric"
        if choice < 0.75:
            return f"-({self.numeric_value(depth - 1)})"
        op = self.pick(["+", "-", "*", "/", "%"])
        return f"({self.numeric_value(depth - 1)} {op} {self.numeric_value(depth - 1)})"

    def float_value(self, depth: int) -> str:
        choice = self.rng.random()
        if choice < 0.4 or depth <= 0:
            return str(self.pick(["f4", "f8"]))
        if choice < 0.55:
            return str(
                self.pick(
                    [
                        "'1e308'::float8",
                        "'NaN'::float8",
                        "0.1::float4",
                        "'-Infinity'::float8",
                        "'1e-40'::float4",
                        "1e-300::float8",
                    ]
                )
            )
        if choice < 0.65:
            return f"({self.pick(['n', 'i8', 'i4'])})::{self.pick(['float4', 'float8'])}"
        if choice < 0.7:
            return f"-{self.float_value(depth - 1)}"
        op = self.pick(["+", "-", "*", "/"])
        return f"({self.float_value(depth - 1)} {op} {self.float_value(depth - 1)})"

    def text_value(self, depth: int) -> str:
        choice = self.rng.random()
        if choice < 0.35 or depth <= 0:
            return str(self.pick(["t", "vc", "c", "t", "c"]))
        if choice < 0.5:
            return self.literal(self.pick(["a", "abc", "A", "", "ab  ", "ÀÉß", "a%b", "NULL"]))
        if choice < 0.7:
            source = self.pick(
                [
                    "iv",
                    "f8",
                    "f4",
                    "n",
                    "d",
                    "ts",
                    "tz",
                    "tm",
                    "b",
                    "i8",
                    "c",
                    "j",
                    "u",
                    "ia",
                    "ta",
                    "(n * 1.0)",
                    "(f8 / 3)",
                ]
            )
            return f"({source})::{self.pick(['text', 'varchar', 'varchar(2)', 'char(3)'])}"
        if choice < 0.8:
            return f"{self.pick(['lower', 'upper'])}({self.text_value(depth - 1)})"
        if choice < 0.9:
            return f"({self.text_value(depth - 1)} || {self.text_value(depth - 1)})"
        other = self.pick(["i4", "iv", "f8", "b", "c", "n", "d"])
        return f"concat({self.text_value(depth - 1)}, {other})"

    def date_value(self, depth: int) -> str:
        choice = self.rng.random()
        if choice < 0.5 or depth <= 0:
            return "d"
        if choice < 0.7:
            return (
                self.literal(
                    self.pick(
                        ["2024-02-29", "0044-03-15 BC", "12000-01-01", "infinity", "2000-01-01"]
                    )
                )
                + "::date"
            )
        if choice < 0.85:
            return f"(d {self.pick(['+', '-'])} {self.int_value(0)})"
        return f"({self.pick(['ts', 'tz'])})::date"

    def timestamp_value(self, depth: int) -> str:
        choice = self.rng.random()
        if choice < 0.45 or depth <= 0:
            return "ts"
        if choice < 0.6:
            return (
                self.literal(
                    self.pick(
                        ["2024-02-29 12:00", "infinity", "0044-03-15 BC", "2000-01-01 00:00:00.5"]
                    )
                )
                + "::timestamp"
            )
        if choice < 0.8:
            return f"({self.pick(['ts', 'd'])} {self.pick(['+', '-'])} {self.interval_value(0)})"
        return f"({self.pick(['d', 'tz'])})::timestamp"

    def timestamptz_value(self, depth: int) -> str:
        choice = self.rng.random()
        if choice < 0.5 or depth <= 0:
            return "tz"
        if choice < 0.7:
            return self.literal(self.pick(["2024-02-29 12:00+02", "2000-01-01"])) + "::timestamptz"
        return f"(tz {self.pick(['+', '-'])} {self.interval_value(0)})"

    def interval_value(self, depth: int) -> str:
        choice = self.rng.random()
        if choice < 0.45 or depth <= 0:
            return "iv"
        if choice < 0.65:
            text = self.pick(
                [
                    "1 day",
                    "1 mon",
                    "-1 day",
                    "P1Y2M3DT4H5M6S",
                    "PT1.5S",
                    "30 days",
                    "1 year -1 mons",
                    "24:00:00",
                    "@ 1 hour ago",
                ]
            )
            return self.literal(text) + "::interval"
        if choice < 0.75:
            return f"-{self.interval_value(depth - 1)}"
        if choice < 0.85:
            return f"({self.pick(['ts', 'tz'])} - {self.pick(['ts', 'tz'])})"
        op = self.pick(["+", "-"])
        return f"({self.interval_value(depth - 1)} {op} {self.interval_value(depth - 1)})"

    def time_value(self, depth: int) -> str:
        if self.rng.random() < 0.6 or depth <= 0:
            return "tm"
        if self.rng.random() < 0.5:
            return self.literal(self.pick(["24:00:00", "12:30:15.5", "00:00"])) + "::time"
        return f"({self.pick(['ts', 'tz'])})::time"

    # -- boolean clauses -------------------------------------------------------------------

    def bool_expr(self, depth: int) -> str:
        choice = self.rng.random()
        if depth <= 0 or choice < 0.35:
            return self.predicate(depth)
        if choice < 0.55:
            joiner = self.pick([" AND ", " OR "])
            return "(" + joiner.join(self.bool_expr(depth - 1) for _ in range(2)) + ")"
        if choice < 0.62:
            return f"NOT {self.bool_expr(depth - 1)}"
        if choice < 0.7:
            test = self.pick(["IS TRUE", "IS NOT TRUE", "IS FALSE", "IS UNKNOWN"])
            return f"({self.bool_expr(depth - 1)}) {test}"
        if choice < 0.76:
            return f"({self.bool_expr(depth - 1)}) = ({self.bool_expr(depth - 1)})"
        if choice < 0.8:
            between = self.pick(["BETWEEN", "NOT BETWEEN"])
            return f"({self.bool_expr(depth - 1)}) {between} false AND b"
        return self.predicate(depth)

    def predicate(self, depth: int) -> str:
        choice = self.rng.random()
        kinds = [
            "int",
            "numeric",
            "float",
            "text",
            "date",
            "timestamp",
            "timestamptz",
            "interval",
            "time",
            "uuid",
        ]
        if choice < 0.3:
            kind = self.pick(kinds)
            op = self.pick(["=", "<>", "<", ">", "<=", ">="])
            return f"{self.value(kind, depth)} {op} {self.value(kind, depth)}"
        if choice < 0.45:
            op = self.pick(["LIKE", "ILIKE", "NOT LIKE", "NOT ILIKE"])
            pattern = self.pick(
                [
                    "%",
                    "a%",
                    "%b",
                    "a_b",
                    "%a%",
                    "A%",
                    "\\%%",
                    "_",
                    "ab  ",
                    "a\\",
                    "%_",
                    "ab__",
                    "%ß%",
                    "a!%",
                    "_a%",
                ]
            )
            escape = self.pick(["", "", " ESCAPE '!'", " ESCAPE ''"])
            return f"{self.text_value(depth)} {op} {self.literal(pattern)}{escape}"
        if choice < 0.52:
            column = self.pick([spec[0] for spec in _SPEC])
            return f"{column} IS {self.pick(['', 'NOT '])}NULL"
        if choice < 0.6:
            kind = self.pick(kinds)
            items = ", ".join(self.value(kind, 0) for _ in range(self.rng.randint(1, 3)))
            negate = self.pick(["", "NOT "])
            return f"{self.value(kind, depth)} {negate}IN ({items})"
        if choice < 0.68:
            kind = self.pick(kinds)
            between = self.pick(["BETWEEN", "NOT BETWEEN", "BETWEEN SYMMETRIC"])
            low, high = self.value(kind, 0), self.value(kind, 0)
            return f"{self.value(kind, depth)} {between} {low} AND {high}"
        if choice < 0.74:
            kind = self.pick(kinds)
            distinct = self.pick(["IS DISTINCT FROM", "IS NOT DISTINCT FROM"])
            return f"{self.value(kind, depth)} {distinct} {self.value(kind, depth)}"
        if choice < 0.84:
            return self.array_predicate(depth)
        if choice < 0.9:
            return self.pick(["b", "NOT b", "coalesce(b, false)", "b = true"])
        if choice < 0.95:
            kind = self.pick(["int", "text", "numeric", "date"])
            name = self.pick(["greatest", "least", "coalesce"])
            args = ", ".join(self.value(kind, 0) for _ in range(2))
            return f"{name}({args}) = {self.value(kind, depth)}"
        return self.pick(
            [
                "ilike(t, 'a%')",
                "like(t, 'a%')",
                "j::jsonb IS NOT NULL",
                "((j)::text)::jsonb IS NOT NULL",
                "(t)::jsonb IS NULL",
                '(\'{"b": 1, "a": [1, 2.50, 1e2]}\'::jsonb)::text = (j)::text',
                "(j::text) LIKE '%a%'",
                "'x'::varchar(0) = t",
                "t::varchar(1) = 'a'",
                "i4 = -2147483648 / 7",
                "c LIKE 'a %'",
                "c LIKE 'ab%'",
            ]
        )

    def array_predicate(self, depth: int) -> str:
        options = [
            lambda: f"ia @> {self.literal(self.pick(['{1}', '{1,2}', '{NULL}', '{}']))}",
            lambda: f"ia <@ {self.literal(self.pick(['{1,2,3}', '{7,8}']))}",
            lambda: f"ia && ARRAY[{self.int_value(0)}, 2]",
            lambda: f"{self.int_value(depth)} = ANY(ia)",
            lambda: f"{self.int_value(0)} {self.pick(['<', '>=', '<>'])} ALL(ia)",
            lambda: f"ta && {self.literal(self.pick(['{a}', '{%}', '{A,b}']))}",
            lambda: f"{self.text_value(0)} LIKE ANY(ta)",
            lambda: f"ia = {self.literal(self.pick(['{1,2,3}', '{7,8}', '[2:3]={7,8}']))}",
            lambda: f"ia < {self.literal(self.pick(['{7}', '{1,2}', '{{1}}']))}",
            lambda: f"(ia || {self.pick(['ia', 'ARRAY[1]', 'ARRAY[[1,2]]', '5'])}) = ia",
            lambda: f"t = ANY({self.literal(self.pick(['{a,b}', '{A,NULL}']))})",
        ]
        return str(self.pick(options)())


def generate_clause(rng: random.Random) -> tuple[str, dict[str, str]]:
    """One clause of the supported subset and its parameters."""
    gen = _Gen(rng)
    return gen.finish(gen.bool_expr(rng.randint(0, 3)))


# ---------------------------------------------------------------------------------------------
# Deciding


@dataclass
class Outcome:
    """What one side decided for every row: ``include``/``exclude``/``error``, or refused."""

    refused: str | None = None
    rows: dict[int, str] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)


def _pg_exec(conn: psycopg.Connection[Any], query: str, params: Sequence[str]) -> Any:
    return conn.pgconn.exec_params(query.encode(), [p.encode() for p in params])


def _failed(result: Any) -> bool:
    return result.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)


def _message(result: Any) -> str:
    return (result.error_message or b"").decode(errors="replace").strip()


def postgres_decisions(
    conn: psycopg.Connection[Any], clause: str, params: Sequence[str], ids: Sequence[int]
) -> Outcome:
    """Postgres's decision for every row: the clause as written, parameters untyped.

    ``CASE WHEN`` reads the clause as ``WHERE`` does (coerced to boolean, NULL is no).
    """
    decide = f"CASE WHEN ({clause}) THEN 'include' ELSE 'exclude' END"
    prepared = conn.pgconn.prepare(b"", f"SELECT {decide} FROM {TABLE}".encode())
    if _failed(prepared):
        return Outcome(refused=_message(prepared))
    whole = _pg_exec(conn, f"SELECT id, {decide} FROM {TABLE}", params)
    outcome = Outcome()
    if not _failed(whole):
        for index in range(whole.ntuples):
            row_id = int(whole.get_value(index, 0).decode())
            outcome.rows[row_id] = whole.get_value(index, 1).decode()
        return outcome
    for row_id in ids:
        single = _pg_exec(conn, f"SELECT {decide} FROM {TABLE} WHERE id = {row_id}", params)
        outcome.rows[row_id] = "error" if _failed(single) else single.get_value(0, 0).decode()
    return outcome


def snapshot_ids(conn: psycopg.Connection[Any], sql: str) -> set[int] | str:
    """The ids the snapshot query selects with syncd's deparsed clause (or the error)."""
    result = _pg_exec(conn, f"SELECT id FROM {TABLE} WHERE {sql}", [])
    if _failed(result):
        return _message(result)
    return {int(result.get_value(index, 0).decode()) for index in range(result.ntuples)}


def syncd_decisions(
    clause: str, params: dict[str, str], rows: Sequence[dict[str, str | None]]
) -> tuple[Outcome, Where | None, str | None]:
    """syncd's decisions; the third item names a crash (an unexpected exception)."""
    refused: Any = getattr(errors, "RefusedClause", ())  # absent from older versions
    try:
        where = parse_where(clause, COLUMNS, params or None)
    except refused as error:
        return Outcome(refused="documented: " + error.message), None, None
    except WhereClauseError as error:
        return Outcome(refused=error.message), None, None
    except Exception as error:  # the fuzzer reports every crash
        return Outcome(refused="crash"), None, f"parse: {type(error).__name__}: {error}"
    outcome = Outcome()
    crash = None
    for row in rows:
        row_id = int(row["id"] or 0)
        try:
            outcome.rows[row_id] = "include" if where.matches(row) else "exclude"
        except ValueError as error:  # EvaluationError included
            outcome.rows[row_id] = "error"
            outcome.errors[row_id] = str(error)
        except Exception as error:  # a crash
            outcome.rows[row_id] = "error"
            crash = f"matches: {type(error).__name__}: {error}"
    return outcome, where, crash


@dataclass
class Report:
    """Counts of each mismatch class, with a few examples of each."""

    clauses: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, example: str) -> None:
        self.counts[kind] += 1
        shown = self.examples.setdefault(kind, [])
        if len(shown) < 8:
            shown.append(example)

    @property
    def mismatches(self) -> int:
        return sum(n for kind, n in self.counts.items() if not kind.startswith("ok_"))

    def summary(self) -> str:
        lines = [f"{self.clauses} clauses"]
        lines += [f"  {kind}: {count}" for kind, count in sorted(self.counts.items())]
        for kind, shown in sorted(self.examples.items()):
            if kind.startswith("ok_"):
                continue
            lines.append(f"{kind}:")
            lines += [f"    {example}" for example in shown]
        return "\n".join(lines)


def check_clause(
    conn: psycopg.Connection[Any],
    clause: str,
    params: dict[str, str],
    rows: Sequence[dict[str, str | None]],
    report: Report,
) -> None:
    """Decide one clause on every row both ways and record what disagrees."""
    report.clauses += 1
    ids = [int(row["id"] or 0) for row in rows]
    values = [params[str(n)] for n in range(1, len(params) + 1)]
    truth = postgres_decisions(conn, clause, values, ids)
    ours, where, crash = syncd_decisions(clause, params, rows)
    shown = f"{clause}  params={params}"
    if crash is not None:
        report.add("crash", f"{shown}  {crash}")
        return
    if ours.refused is not None:
        if ours.refused.startswith("documented: "):
            report.add("ok_refused_documented", f"{shown}  -> {ours.refused}")
        elif truth.refused is not None or (
            truth.rows and all(d == "error" for d in truth.rows.values())
        ):
            report.add("ok_both_refuse", shown)  # Postgres fails planning or on every row
        else:
            report.add("refused_but_pg_accepts", f"{shown}  -> {ours.refused}")
        return
    if truth.refused is not None:
        if "parameter $" in truth.refused or (
            params and "operator does not exist" in truth.refused
        ):
            # Postgres types untyped parameters differently; syncd types each from its context
            # (the protocol's rule) and its snapshot runs the typed literals, so it is consistent.
            report.add("ok_parameter_typing", shown)
        else:
            report.add("accepted_but_pg_refuses", f"{shown}  pg: {truth.refused}")
        return
    row_kinds: Counter[str] = Counter()
    for row_id in ids:
        mine, theirs = ours.rows[row_id], truth.rows[row_id]
        if mine == theirs:
            continue
        if theirs == "error":
            kind = "missed_error"
        elif mine == "error" and ours.errors.get(row_id) == _INFINITE_DIFFERENCE:
            kind = "ok_version_dependent"  # Postgres 17+ gives an infinite interval, 16 raises
        elif mine == "error":
            kind = "spurious_error"
        else:
            kind = "wrong_row"
        row = next(r for r in rows if r["id"] == str(row_id))
        used = {k: v for k, v in row.items() if where is not None and k in where.columns}
        row_kinds[kind] += 1
        if row_kinds[kind] == 1:
            report.add(kind, f"{shown}  row={used}  ours={mine} pg={theirs}")
    if not row_kinds:
        report.counts["ok_agree"] += 1
    if where is not None and "error" not in truth.rows.values():
        selected = snapshot_ids(conn, where.sql)
        expected = {row_id for row_id, d in truth.rows.items() if d == "include"}
        if isinstance(selected, str) and snapshot_ids(conn, f"({where.sql}) IS TRUE") == expected:
            # Postgres's planner reorders the top-level AND conditions of a WHERE, so a row on
            # which a later condition raises may fail the snapshot while evaluation left to right
            # (Postgres's own, in a select list, or as one expression) decides it.
            report.add("ok_planner_reorders_and", f"{shown}  sql={where.sql}")
        elif selected != expected:
            report.add("snapshot_differs", f"{shown}  sql={where.sql}  got={selected}")


def open_connection(dsn: str) -> psycopg.Connection[Any]:
    """An autocommit connection with syncd's session settings."""
    conn = psycopg.connect(dsn, autocommit=True)
    for name, value in SESSION_SETTINGS.items():
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    return conn


def run(dsn: str, clauses: int, seed: int, rows: int = 40) -> Report:
    """Create the table and check ``clauses`` generated clauses; returns the report."""
    report = Report()
    with open_connection(dsn) as conn:
        create_table(conn, rows, seed)
        table_rows = read_rows(conn)
        rng = random.Random(seed)
        for _ in range(clauses):
            clause, params = generate_clause(rng)
            check_clause(conn, clause, params, table_rows, report)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--clauses", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sys.stdout.write(run(args.dsn, args.clauses, args.seed).summary() + "\n")


if __name__ == "__main__":
    main()
