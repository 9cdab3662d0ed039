"""Typed values from text values and ``electric-schema`` (``docs/protocol.md``, "Values")."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shapes.values import RowParser, parse_array, parse_row, parse_schema, parse_value


@pytest.mark.parametrize(
    ("type_", "text", "expected"),
    [
        ("int2", "-7", -7),
        ("int4", "42", 42),
        ("int8", "9223372036854775807", 9223372036854775807),
        ("float8", "4.5", 4.5),
        ("float4", "-Infinity", -math.inf),
        ("numeric", "1.10", Decimal("1.10")),
        ("bool", "t", True),
        ("bool", "true", True),
        ("bool", "f", False),
        ("bool", "false", False),
        ("json", '{"foo":"bar"}', {"foo": "bar"}),
        ("jsonb", '{"foo": [1, null]}', {"foo": [1, None]}),
        ("text", "42", "42"),
        ("uuid", "0b4c1a2e-0000-4000-8000-000000000000", "0b4c1a2e-0000-4000-8000-000000000000"),
        ("timestamptz", "2024-01-31 12:00:00+00", "2024-01-31 12:00:00+00"),
        ("mood", "happy", "happy"),
    ],
)
def test_scalars(type_: str, text: str, expected: object) -> None:
    assert parse_value(text, {"type": type_}) == expected


def test_nan_and_null() -> None:
    assert math.isnan(parse_value("NaN", {"type": "float8"}))
    assert parse_value(None, {"type": "int4", "not_null": True}) is None
    assert parse_value("1", None) == "1"


def test_arrays() -> None:
    assert parse_value("{1,NULL,3}", {"type": "int4", "dims": 1}) == [1, None, 3]
    assert parse_value("{{1,2,3},{4,5,6}}", {"type": "int8", "dims": 2}) == [[1, 2, 3], [4, 5, 6]]
    assert parse_value("{t,f,t}", {"type": "bool", "dims": 1}) == [True, False, True]
    assert parse_value("{}", {"type": "int4", "dims": 1}) == []
    assert parse_value('{"{\\"foo\\": \\"bar\\"}"}', {"type": "jsonb", "dims": 1}) == [
        {"foo": "bar"}
    ]
    assert parse_value('{"(1.1,2.2)","(3.3,4.4)"}', {"type": "point", "dims": 1}) == [
        "(1.1,2.2)",
        "(3.3,4.4)",
    ]
    assert parse_array('{"a\\\\b","NULL",NULL,"x,y"}') == ["a\\b", "NULL", None, "x,y"]
    assert parse_array("[0:1]={1,2}", int) == [1, 2]
    assert parse_value("{1.5,2}", {"type": "numeric", "dims": 1}) == [Decimal("1.5"), Decimal(2)]


@pytest.mark.parametrize("bad", ["1,2", "{1,2", '{"a', "{1}x", "[0:1]"])
def test_bad_arrays(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_array(bad)


def test_schema_and_row() -> None:
    schema = parse_schema(
        '{"id":{"type":"int8","pk_index":0,"not_null":true},"tags":{"type":"text","dims":1},'
        '"ok":{"type":"bool"}}'
    )
    assert schema["id"]["pk_index"] == 0
    row = parse_row({"id": "1", "tags": "{a,b}", "ok": "t", "extra": "x"}, schema)
    assert row == {"id": 1, "tags": ["a", "b"], "ok": True, "extra": "x"}
    assert parse_schema(None) == {}
    assert parse_schema("null") == {}
    assert parse_schema("not json") == {}


_TYPES = ["int4", "int8", "float8", "numeric", "bool", "jsonb", "text", "timestamptz", None]
_TEXTS = {
    "int4": st.integers(-(2**31), 2**31 - 1).map(str),
    "int8": st.integers().map(str),
    "float8": st.floats(allow_nan=False).map(repr),
    "numeric": st.decimals(allow_nan=False, allow_infinity=False).map(str),
    "bool": st.sampled_from(["t", "f", "true", "false"]),
    "jsonb": st.sampled_from(['{"a": 1}', "[1, 2]", '"x"', "null"]),
}


@st.composite
def schemas_and_rows(draw: st.DrawFn) -> tuple[dict[str, dict[str, object]], dict[str, object]]:
    names = draw(st.lists(st.text(max_size=4), min_size=1, max_size=6, unique=True))
    schema: dict[str, dict[str, object]] = {}
    row: dict[str, object] = {}
    for name in names:
        type_ = draw(st.sampled_from(_TYPES))
        dims = draw(st.sampled_from([0, 0, 1]))
        text = _TEXTS.get(str(type_), st.text(max_size=6))
        if type_ is not None:
            schema[name] = {"type": type_, "dims": dims} if dims else {"type": type_}
        if dims:
            text = st.lists(
                text.map(lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"'),
                max_size=3,
            ).map(lambda items: "{" + ",".join(items) + "}")
        if draw(st.booleans()):  # some columns absent from the row, some NULL or not text
            row[name] = draw(st.none() | text | st.just(7))
    return schema, row


@given(schemas_and_rows())
def test_row_parser_equals_parse_row(
    case: tuple[dict[str, dict[str, object]], dict[str, object]],
) -> None:
    schema, row = case
    expected = parse_row(row, schema)
    copy = dict(row)
    parsed = RowParser(schema).parse_in_place(copy)
    assert parsed is copy
    assert list(parsed) == list(expected)
    for name, value in expected.items():
        got = parsed[name]
        if isinstance(value, float) and math.isnan(value):
            assert isinstance(got, float) and math.isnan(got)
        else:
            assert got == value and type(got) is type(value), name
