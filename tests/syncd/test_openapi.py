"""The OpenAPI description of the API (``syncd/openapi.json``), and schemathesis against it.

The document must be valid OpenAPI 3.1, and ``GET /v1/openapi.json`` must serve it. A
schemathesis run then sends generated requests for every documented operation to a live syncd
and checks that each answer is one the document describes: no 5xx, a documented status,
content-type, headers and body.

To get past the 400 path, the generator gets hints that the served document does not carry:
for the parameters whose useful values random text rarely hits, half the values come from a
list of realistic (and some known-bad) ones, the other half from the documented schema. The
same goes for the subset fields of a ``POST`` body, and half the bodies are whole realistic
subsets. Every parameter that may be wrong on its own makes subset requests rarely get past
the shape's checks, so the generator also gets focused copies of ``GET`` and ``POST`` at
``/v1/shape/`` (which the server serves as ``/v1/shape``): a valid table and offset, a handle,
and the subset. A placeholder handle stands for the plain ``items`` shape: the test swaps in its
real handle and its definition, so live and SSE requests reach the server's live paths. That
shape's log has a change after the snapshot, so they are answered at once (an SSE request at
the very tail would stay open for a minute).
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from psycopg import sql
from psycopg.conninfo import make_conninfo
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from syncd.pgprovider import PostgresServer, drop_database
from tests.syncd_process import SyncdProcess

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
DEFINITION_PARAMS = {"where", "params", "columns", "replica", "log"}
REAL_HANDLE = "<the handle of the items shape>"
"""Stands for the handle of the plain ``items`` shape; the test swaps it in before sending."""

HINTS: dict[str, list[Any]] = {
    "table": [
        "items",
        "public.items",
        '"items"',
        "nonexistent",
        "items.too.many",
        '"it\x00ems"',
        "unlogged_items",
        "pg_catalog.pg_class",
    ],
    "offset": ["-1", "now", "0_0", "0_inf", "0_3", "1_0"],
    "handle": [REAL_HANDLE],
    "live": ["true", "false"],
    "live_sse": ["true", "false"],
    "experimental_live_sse": ["true", "false"],
    "where": [
        "id > 1",
        "id = $1",
        "title = $1 AND n > $2",
        "title LIKE 'title%'",
        "title ILIKE $1",
        "n IS NULL",
        "n IS NOT NULL OR id < 3",
        "id IN (1, 2, 3)",
        "n BETWEEN 1 AND 4",
        "lower(title) <> 'x'",
        "n / 0 > 1",
        "n::text = '2'",
        "nope = 1",
        "id >",
        "title",
        "NOT " * 1000 + "true",
        "id = " + "lower(" * 500 + "'1'" + ")" * 500 + "::int4",
    ],
    "params": [{"1": "2"}, {"1": "title 2", "2": "1"}, {"1": "x"}, {"2": "1"}, {"a": "1"}],
    "columns": ["id", "id,title", '"id","n"', "title", "id,missing", ""],
    "subset__where": [
        "id > 2",
        "id = $1",
        "title = $1 OR n > $2",
        "n IS NULL",
        "title ILIKE 'TITLE%'",
        "id IN (SELECT 1)",
        "n / 0 > 1",
        "title::int > 1",
        "n + 2147483647 > 1",
        "NOT " * 1000 + "true",
        "nope = 1",
        "id >",
        "",
    ],
    "subset__params": [
        '{"1":"2"}',
        '{"1":"title 2","2":1}',
        '{"1":null}',
        '{"1":true}',
        '{"2":"1"}',
        "[1]",
        "not json",
    ],
    "subset__limit": ["1", "3", "100", "0", "-1", "x", "99999999999999999999"],
    "subset__offset": ["0", "2", "-1", "x"],
    "subset__order_by": [
        "id",
        "id DESC",
        "n DESC NULLS LAST, id",
        "title ASC NULLS FIRST",
        '"id"',
        "lower(title)",
        "$1",
        "nope",
        "id; SELECT 1",
        "id LIMIT 1",
        "*",
        "",
    ],
}
BODY_FIELDS = {"where", "params", "limit", "offset", "order_by"}
"""Subset fields of a ``POST`` body; their hints are those of the ``subset__*`` parameters."""
BODIES: list[Any] = [
    {"where": "id > 2"},
    {"where": "id = $1", "params": {"1": 3}},
    {"where": "title = $1", "params": {"1": "title 2"}, "where_expr": {"ignored": True}},
    {"order_by": "id DESC", "limit": 2},
    {"order_by": "n NULLS FIRST", "limit": 2, "offset": 1},
    {"subset": {"where": "n IS NOT NULL", "order_by": "id", "limit": "2", "offset": 0}},
    {"subset": {"where": "id = $1", "params": {"1": "1"}}},
    {"subset": {}},
    {},
    {"limit": 2},
    {"subset": {"where": "id IN (SELECT 1)"}},
    {"subset": None},
    {"params": [1]},
    {"where": 1},
    {"limit": True},
    {"order_by": "id", "limit": 2.5},
    [],
    "not an object",
]
"""Whole bodies, realistic and known-bad."""
RAW_BODIES = [
    b'{"order_by": "id", "limit": Infinity}',
    b'{"order_by": "id", "offset": NaN}',
    b'{"order_by": "id", "limit": 1e400}',
    b'{"order_by": "id", "limit": 99999999999999999999}',
    b'{"where": ',
    b"\xff",
    b"[]",
    b"   ",
]
"""Bodies schemathesis does not send: Python's JSON parser takes ``Infinity`` and ``NaN``."""


def document() -> dict[str, Any]:
    """The packaged document."""
    text = importlib.resources.files("syncd").joinpath("openapi.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _hinted_schema(name: str, original: dict[str, Any]) -> dict[str, Any]:
    """``original`` (a schema), generating the hints of ``name`` half the time."""
    values = HINTS[name]
    if original.get("type") != "string":  # ``params``: hypothesis keeps object enums apart
        return {"anyOf": [{"enum": values}, original]}
    # Hypothesis would merge ``anyOf`` string enums into the plain string schema: a format
    # with a strategy of its own keeps them apart.
    pattern = original.get("pattern")
    other = st.text() if pattern is None else st.from_regex(pattern, fullmatch=True)
    schemathesis.openapi.format(f"syncd-hint-{name}", st.sampled_from(values) | other)
    return {**original, "format": f"syncd-hint-{name}"}


def _hinted(parameter: dict[str, Any]) -> None:
    name = parameter.get("name", "")
    if name in HINTS and parameter.get("in") == "query":
        parameter["schema"] = _hinted_schema(name, parameter["schema"])


def _hinted_body_fields(schema: dict[str, Any]) -> None:
    """Hints for the subset fields of a body schema; the documented types stay possible."""
    properties = schema["properties"]
    for name in BODY_FIELDS:
        values = HINTS[f"subset__{name}"]
        if name in ("where", "order_by"):
            hinted = _hinted_schema(f"subset__{name}", {"type": "string"})
            properties[name] = {"anyOf": [hinted, properties[name]]}
        elif name == "params":
            hints = [json.loads(v) for v in values if v.startswith("{")]
            properties[name] = {"anyOf": [{"enum": hints}, properties[name]]}
        else:
            numbers = [int(v) for v in values if v.lstrip("-").isdigit()]
            properties[name] = {"anyOf": [{"enum": [*numbers, *values]}, properties[name]]}


def with_hints(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with generation hints for some query parameters and the ``POST`` body (see the
    module docstring)."""
    hinted = copy.deepcopy(doc)
    for parameter in hinted["components"]["parameters"].values():
        _hinted(parameter)
    for path in hinted["paths"].values():
        for operation in path.values():
            for parameter in operation.get("parameters", []):
                _hinted(parameter)
    schemas = hinted["components"]["schemas"]
    _hinted_body_fields(schemas["SubsetBody"])
    _hinted_body_fields(schemas["SubsetFields"])
    body = hinted["paths"]["/v1/shape"]["post"]["requestBody"]["content"]["application/json"]
    body["schema"] = {"anyOf": [{"enum": BODIES}, body["schema"]]}
    hinted["paths"][FOCUSED_PATH] = _focused(hinted["paths"]["/v1/shape"])
    return hinted


FOCUSED_PATH = "/v1/shape/"
"""Where the focused copies of the subset operations go (the server drops the trailing slash)."""
FOCUSED_PARAMETERS = [
    {"name": "table", "in": "query", "required": True, "schema": {"enum": ["items"]}},
    {
        "name": "offset",
        "in": "query",
        "required": True,
        "schema": {"enum": ["-1", "now", "0_0", "0_inf"]},
    },
    {"name": "handle", "in": "query", "required": False, "schema": {"const": REAL_HANDLE}},
]


def _focused(operations: dict[str, Any]) -> dict[str, Any]:
    """``GET`` and ``POST`` cut down to a valid shape request and a subset."""
    focused = {}
    for method in ("get", "post"):
        operation = copy.deepcopy(operations[method])
        operation["operationId"] += "Focused"
        subset = [p for p in operation["parameters"] if "/Subset" in p.get("$ref", "")]
        operation["parameters"] = [*copy.deepcopy(FOCUSED_PARAMETERS), *subset]
        focused[method] = operation
    return focused


def test_document_is_valid_openapi_3_1() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1.")
    validate(doc)
    validate(with_hints(doc))


def test_every_route_is_described() -> None:
    paths = document()["paths"]
    assert set(paths) == {"/v1/shape", "/v1/health", "/metrics", "/v1/openapi.json", "/"}
    assert set(paths["/v1/shape"]) == {"get", "head", "post", "delete", "options"}


# -- schemathesis against a live daemon ---------------------------------------------------------
# One database and one daemon for the module: schemathesis makes one test per operation.


@pytest.fixture(scope="module")
def module_dsn(pg_server: PostgresServer) -> Iterator[str]:
    """Like ``pg_dsn`` (a fresh database), but shared by the module, with an ``items`` table."""
    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(pg_server.dsn, dbname=name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, title text NOT NULL, n int)")
        conn.execute("INSERT INTO items SELECT g, 'title ' || g, g FROM generate_series(1, 5) g")
        conn.execute("CREATE UNLOGGED TABLE unlogged_items (id int PRIMARY KEY)")
    yield dsn
    drop_database(pg_server.dsn, name)


@pytest.fixture(scope="module")
def syncd(module_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncdProcess]:
    base = tmp_path_factory.mktemp("openapi")
    daemon = SyncdProcess(
        module_dsn, base / "storage", long_poll_timeout=1, allow_shape_deletion="true"
    )
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def real_handle(syncd: SyncdProcess, module_dsn: str) -> str:
    """The handle of the plain ``items`` shape, once its log holds a change after the snapshot."""
    with httpx.Client(timeout=10.0) as client:
        query = {"table": "items", "offset": "-1"}
        answer = client.get(syncd.shape_url, params=query)
        assert answer.status_code == 200, answer.text
        handle = answer.headers["electric-handle"]
        with psycopg.connect(module_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO items VALUES (6, 'title 6', NULL)")
        deadline = time.monotonic() + 15
        query = {"table": "items", "offset": "0_inf", "handle": handle}
        while time.monotonic() < deadline:
            answer = client.get(syncd.shape_url, params=query)
            assert answer.status_code == 200, answer.text
            if any("key" in message for message in answer.json()):
                return handle
            time.sleep(0.05)
    raise AssertionError("the insert never reached the shape log")


def test_the_document_is_served(syncd: SyncdProcess) -> None:
    answer = httpx.get(syncd.url + "/v1/openapi.json", timeout=10.0)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["cache-control"] == "public, max-age=3600"
    assert answer.json() == document()


schema = schemathesis.openapi.from_dict(with_hints(document()))


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_conforms_to_its_description(
    case: schemathesis.Case[Any], syncd: SyncdProcess, real_handle: str
) -> None:
    query = case.query
    if query and query.get("handle") == REAL_HANDLE:
        # a request about the plain ``items`` shape: its handle, and its definition
        query["handle"] = real_handle
        query["table"] = "items"
        for name in list(query):
            if name in DEFINITION_PARAMS or name.startswith("params["):
                del query[name]
    case.call_and_validate(base_url=syncd.url, checks=CHECKS, timeout=15)


@pytest.mark.parametrize("body", RAW_BODIES)
@pytest.mark.parametrize("path", ["/v1/shape", "/v1//shape/"])
def test_raw_post_bodies_are_described(syncd: SyncdProcess, body: bytes, path: str) -> None:
    query = {"table": "items", "offset": "-1"}
    answer = httpx.post(syncd.url + path, params=query, content=body, timeout=15.0)
    assert answer.status_code in (200, 400), answer.text
    case = schema["/v1/shape"]["POST"].Case(query=query, media_type="application/json")
    case.validate_response(answer, checks=CHECKS)
