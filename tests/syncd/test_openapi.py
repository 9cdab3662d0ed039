"""The OpenAPI description of the API (``syncd/openapi.json``), and schemathesis against it.

The document must be valid OpenAPI 3.1, and ``GET /v1/openapi.json`` must serve it. A
schemathesis run then sends generated requests for every documented operation to a live syncd
and checks that each answer is one the document describes: no 5xx, a documented status,
content-type, headers and body.

To get past the 400 path, the generator gets hints that the served document does not carry:
for the parameters whose useful values random text rarely hits, half the values come from a
list of realistic (and some known-bad) ones, the other half from the documented schema. A
placeholder handle stands for the plain ``items`` shape: the test swaps in its real handle and
its definition, so live and SSE requests reach the server's live paths. That shape's log has a
change after the snapshot, so they are answered at once (an SSE request at the very tail would
stay open for a minute).
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

from syncd.pgprovider import PostgresServer
from tests.conftest import drop_database
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
}


def document() -> dict[str, Any]:
    """The packaged document."""
    text = importlib.resources.files("syncd").joinpath("openapi.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _hinted(parameter: dict[str, Any]) -> None:
    name = parameter.get("name", "")
    values = HINTS.get(name)
    if values is None or parameter.get("in") != "query":
        return
    original = parameter["schema"]
    if original.get("type") != "string":  # ``params``: hypothesis keeps object enums apart
        parameter["schema"] = {"anyOf": [{"enum": values}, original]}
        return
    # Hypothesis would merge ``anyOf`` string enums into the plain string schema: a format
    # with a strategy of its own keeps them apart.
    pattern = original.get("pattern")
    other = st.text() if pattern is None else st.from_regex(pattern, fullmatch=True)
    schemathesis.openapi.format(f"syncd-hint-{name}", st.sampled_from(values) | other)
    parameter["schema"] = {**original, "format": f"syncd-hint-{name}"}


def with_hints(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with generation hints for some query parameters (see the module docstring)."""
    hinted = copy.deepcopy(doc)
    for parameter in hinted["components"]["parameters"].values():
        _hinted(parameter)
    for path in hinted["paths"].values():
        for operation in path.values():
            for parameter in operation.get("parameters", []):
                _hinted(parameter)
    return hinted


def test_document_is_valid_openapi_3_1() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1.")
    validate(doc)
    validate(with_hints(doc))


def test_every_route_is_described() -> None:
    paths = document()["paths"]
    assert set(paths) == {"/v1/shape", "/v1/health", "/v1/openapi.json", "/"}
    assert set(paths["/v1/shape"]) == {"get", "head", "delete", "options"}


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
