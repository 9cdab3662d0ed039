"""Validation of ``GET /v1/shape`` parameters, with the reference server's messages."""

from __future__ import annotations

import pytest

from shapes.errors import InvalidRequest
from shapes.offset import BEFORE_ALL, INF, INVALID_FORMAT, SNAPSHOT_END, LogOffset, parse_offset
from shapes.request import OFFSET_BLANK, parse_shape_request, read_query
from shapes.shape import parse_columns, parse_table


def errors_of(query: list[tuple[str, str]]) -> dict[str, list[str]]:
    with pytest.raises(InvalidRequest) as info:
        parse_shape_request(query)
    return info.value.errors()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-1", BEFORE_ALL),
        ("-1_0", BEFORE_ALL),
        ("0_0", LogOffset(0, 0)),
        ("0_02", LogOffset(0, 2)),
        ("0_inf", SNAPSHOT_END),
        ("24633000_4", LogOffset(24633000, 4)),
        ("24633000_inf", LogOffset(24633000, INF)),
    ],
)
def test_offsets_parse(text: str, expected: LogOffset) -> None:
    assert parse_offset(text) == expected


@pytest.mark.parametrize("text", ["0_-1", "10", "1_2_3", "0_0 ", "", "abc", "-2", "1_x"])
def test_malformed_offsets_are_rejected(text: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_offset(text)
    assert info.value.errors() == {"offset": [INVALID_FORMAT]}


def test_offsets_print_back() -> None:
    assert [str(o) for o in (BEFORE_ALL, LogOffset(0, 3), SNAPSHOT_END)] == ["-1", "0_3", "0_inf"]
    assert BEFORE_ALL < LogOffset(0, 0) < SNAPSHOT_END < LogOffset(1, 0)


@pytest.mark.parametrize(
    ("query", "errors"),
    [
        ([("table", "t")], {"offset": [OFFSET_BLANK]}),
        ([("table", "t"), ("offset", "x")], {"offset": [INVALID_FORMAT]}),
        ([("table", "t"), ("offset", "0_0")], {"handle": ["can't be blank when offset != -1"]}),
        (
            [("table", "t"), ("offset", "-1"), ("live", "true")],
            {"live": ["can't be true when offset == -1"]},
        ),
        (
            [("table", "t"), ("offset", "now"), ("live", "")],
            {"live": ["can't be true when offset is 'now'"]},
        ),
        (
            [("table", "t"), ("offset", "0_0"), ("handle", "h"), ("live_sse", "true")],
            {"live_sse": ["can't be true unless live is also true"]},
        ),
        ([("offset", "-1")], {"table": ["can't be blank"]}),
        (
            [("table", '""'), ("offset", "-1")],
            {"table": ["Invalid zero-length delimited identifier"]},
        ),
        (
            [("table", "t"), ("offset", "-1"), ("replica", "x")],
            {"replica": ["is invalid"]},
        ),
        (
            [("table", "t"), ("replica", "x"), ("log", "y")],
            {"replica": ["is invalid"], "log": ["is invalid"], "offset": [OFFSET_BLANK]},
        ),
        (
            [("table", "t"), ("offset", "-1"), ("where", "a = $1"), ("params[x]", "1")],
            {"params": ["Parameters can only use numbers as keys"]},
        ),
        (
            [("table", "t"), ("offset", "-1"), ("where", "a = $2"), ("params[2]", "1")],
            {"params": ["Parameters must be numbered sequentially, starting from 1"]},
        ),
        (
            [("table", "t"), ("offset", "-1"), ("columns", "id,")],
            {"columns": ["Invalid zero-length delimited identifier"]},
        ),
        (
            [("table", "t"), ("offset", "-1"), ("columns", "")],
            {"columns": ["The list of columns must not be empty"]},
        ),
        (
            [("table", "a.b.c"), ("offset", "-1")],
            {"table": ["Invalid relation identifier, too many delimiters: a.b.c"]},
        ),
        (
            [("table", "bad-name"), ("offset", "-1")],
            {"table": ["Invalid unquoted identifier contains special characters: bad-name"]},
        ),
    ],
)
def test_invalid_requests_report_the_reference_errors(
    query: list[tuple[str, str]], errors: dict[str, list[str]]
) -> None:
    assert errors_of(query) == errors


def test_live_is_true_for_anything_but_false() -> None:
    base = [("table", "t"), ("offset", "0_0"), ("handle", "h")]
    for value in ("true", "", "1", "True"):
        assert parse_shape_request([*base, ("live", value)]).live
    assert not parse_shape_request([*base, ("live", "false")]).live


def test_handle_is_ignored_from_the_start() -> None:
    request = parse_shape_request([("table", "t"), ("offset", "-1"), ("handle", "old")])
    assert request.handle is None


def test_unknown_parameters_are_ignored_and_definition_is_canonical() -> None:
    one = parse_shape_request(
        [
            ("table", "public.items"),
            ("offset", "-1"),
            ("cache-buster", "x"),
            ("expired_handle", "y"),
            ("columns", '"title",id'),
            ("where", "id = $1"),
            ("params[1]", "5"),
        ]
    )
    two = parse_shape_request(
        [
            ("params[1]", "5"),
            ("where", "id = $1"),
            ("columns", "id,title"),
            ("offset", "-1"),
            ("table", "items"),
            ("custom", "1"),
        ]
    )
    assert one.definition == two.definition
    assert one.definition.columns == ("id", "title")


def test_experimental_live_sse_is_an_alias() -> None:
    query = [("table", "t"), ("offset", "0_0"), ("handle", "h"), ("live", "true")]
    assert parse_shape_request([*query, ("experimental_live_sse", "true")]).live_sse


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("items", ("public", "items")),
        ("Items", ("public", "items")),
        ('"Items"', ("public", "Items")),
        ('app."My Table"', ("app", "My Table")),
        ('"a.b"."c""d"', ("a.b", 'c"d')),
        ('electric_test."issues for x_1"', ("electric_test", "issues for x_1")),
    ],
)
def test_table_identifiers(text: str, expected: tuple[str, str]) -> None:
    assert parse_table(text) == expected


def test_quoted_columns_keep_commas_and_quotes() -> None:
    assert parse_columns('"id","has,comma","has""quote",Plain') == (
        "id",
        "has,comma",
        'has"quote',
        "plain",
    )


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ([("live", "true"), ("live", "false")], "live"),
        ([("live_sse", "true"), ("live_sse", "false")], "live_sse"),
        ([("where", "a"), ("where", "b")], "where"),
        ([("subset__where", "a"), ("subset[where]", "b")], "subset[where]"),
        ([("params[1]", "a"), ("params[1]", "b")], "params[1]"),
        ([("params[01]", "a")], "params"),
        ([("params[+1]", "a")], "params"),
        ([("params[1]]", "a")], "params"),
    ],
)
def test_one_reading_refuses_repeats_and_odd_param_keys(
    query: list[tuple[str, str]], field: str
) -> None:
    errors = errors_of([("table", "t"), ("offset", "-1"), *query])
    assert list(errors) == [field]


def test_one_reading_collects_each_parameter_once() -> None:
    query = read_query(
        [
            ("table", "t"),
            ("params[2]", "b"),
            ("params[1]", "a"),
            ("subset[where]", "x > 1"),
            ("subset__limit", "2"),
            ("custom", "1"),
            ("custom", "2"),
        ]
    )
    assert query.values == {"table": "t"}
    assert query.where_params == {"1": "a", "2": "b"}
    assert query.subset == {"where": "x > 1", "limit": "2"}
