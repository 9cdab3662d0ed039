"""Typed body decoding (``shapes.client.decoding.BodyDecoder``) against the untyped decode
followed by :func:`~shapes.values.parse_row`, its oracle."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shapes.client.decoding import BodyDecoder
from shapes.values import parse_row


def _pg_float(value: float) -> str:
    """Postgres's text output of a float."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


_NUMERIC = (
    st.decimals(allow_nan=False, allow_infinity=False)
    .map(lambda d: d.copy_abs() if d.is_zero() else d)  # a numeric's zero has no sign
    .map(lambda d: format(d, "f"))
)
TEXTS: dict[str | None, st.SearchStrategy[str]] = {
    "int2": st.integers(-(2**15), 2**15 - 1).map(str),
    "int4": st.integers(-(2**31), 2**31 - 1).map(str),
    "int8": st.integers(-(2**63), 2**63 - 1).map(str),
    "float4": st.floats(width=32).map(_pg_float),
    "float8": st.floats().map(_pg_float) | st.sampled_from(["-0", "0", "1e-320"]),
    "numeric": _NUMERIC | st.sampled_from(["NaN", "Infinity", "-Infinity", "0.000"]),
    "bool": st.sampled_from(["t", "f"]),
    "jsonb": st.sampled_from(['{"a": 1}', "[1, 2]", '"x"', "null", "3.5"]),
    "json": st.sampled_from(['{"b": [true]}', "1"]),
    "text": st.text(max_size=5),
    "timestamptz": st.just("2026-01-01 00:00:01+00"),
    None: st.text(max_size=3),  # a column whose schema entry has no type
}


def _array(element: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    quoted = element.map(lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return st.lists(quoted | st.just("NULL"), max_size=3).map(lambda i: "{" + ",".join(i) + "}")


@st.composite
def schemas(draw: st.DrawFn) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    names = draw(st.lists(st.text(max_size=4), min_size=1, max_size=7, unique=True))
    schema: dict[str, dict[str, Any]] = {}
    texts: dict[str, st.SearchStrategy[str]] = {}
    for name in names:
        type_ = draw(st.sampled_from(sorted(TEXTS, key=str)))
        dims = draw(st.sampled_from([0, 0, 0, 1]))
        info: dict[str, Any] = {} if type_ is None else {"type": type_}
        if dims and type_ is not None:
            info["dims"] = dims
            texts[name] = _array(TEXTS[type_])
        else:
            texts[name] = TEXTS[type_]
        schema[name] = info
    return schema, texts


@st.composite
def bodies(draw: st.DrawFn) -> tuple[dict[str, dict[str, Any]], bytes]:
    schema, texts = draw(schemas())

    def rows() -> st.SearchStrategy[dict[str, Any]]:
        return st.fixed_dictionaries({}, optional={n: st.none() | t for n, t in texts.items()})

    change = st.fixed_dictionaries(
        {
            "key": st.text(max_size=5),
            "value": rows(),
            "headers": st.fixed_dictionaries(
                {"operation": st.sampled_from(["insert", "update", "delete"])},
                optional={"lsn": st.just("12"), "op_position": st.integers(0, 5)},
            ),
        },
        optional={"old_value": rows()},
    )
    control = st.sampled_from(
        [{"headers": {"control": "up-to-date"}}, {"headers": {"control": "snapshot-end"}}]
    )
    messages = draw(st.lists(change | control, max_size=6))
    return schema, msgspec.json.encode(messages)


def _expected(body: bytes, schema: dict[str, dict[str, Any]]) -> Any:
    decoded = msgspec.json.decode(body)
    if isinstance(decoded, list):
        for message in decoded:
            for part in ("value", "old_value"):
                if isinstance(message, dict) and isinstance(message.get(part), dict):
                    message[part] = parse_row(message[part], schema)
    return decoded


def _same(got: Any, expected: Any, where: str = "$") -> None:
    """Equal values of the same types (NaN equal to NaN, a Decimal with the same digits)."""
    assert type(got) is type(expected), where
    if isinstance(expected, dict):
        assert list(got) == list(expected), where
        for key, value in expected.items():
            _same(got[key], value, f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(got) == len(expected), where
        for index, (item, wanted) in enumerate(zip(got, expected, strict=True)):
            _same(item, wanted, f"{where}[{index}]")
    elif isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(got), where
    elif isinstance(expected, Decimal):
        assert str(got) == str(expected), where
    else:
        assert got == expected, where


@settings(max_examples=300)
@given(bodies())
def test_typed_decoding_equals_parse_row(case: tuple[dict[str, dict[str, Any]], bytes]) -> None:
    schema, body = case
    _same(BodyDecoder(schema).decode(body), _expected(body, schema))


SCHEMA = {"id": {"type": "int8"}, "n": {"type": "numeric"}, "ok": {"type": "bool"}}


@pytest.mark.parametrize(
    "body",
    [
        b'[{"key":"k","value":{"id":"1","n":{"odd":1},"ok":"t"},"headers":{}}]',
        b'[{"key":"k","value":null,"headers":{"operation":"delete"}}]',
        b'[{"key":"k","value":["1"],"headers":{}}, {"key":"j","value":{"id":"2"}}]',
        b'[7, {"key":"k","value":{"id":"3","ok":"f"}}]',
        b'{"message":"an error body"}',
        b"[]",
    ],
)
def test_a_body_that_does_not_fit_the_types_is_converted_value_by_value(body: bytes) -> None:
    """What the types refuse is decoded again untyped: the caller sees no difference."""
    expected = msgspec.json.decode(body)
    if isinstance(expected, list):
        for message in expected:
            if isinstance(message, dict) and isinstance(message.get("value"), dict):
                message["value"] = {
                    k: v if isinstance(v, dict) else parse_row({k: v}, SCHEMA)[k]
                    for k, v in message["value"].items()
                }
    _same(BodyDecoder(SCHEMA).decode(body), expected)


def test_a_body_that_is_not_json_raises_value_error() -> None:
    with pytest.raises(ValueError):
        BodyDecoder(SCHEMA).decode(b"<html>a captive portal</html>")
