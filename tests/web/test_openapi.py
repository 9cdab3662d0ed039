"""The write API's OpenAPI document, and a schemathesis run against ``python -m web serve``.

The document is valid OpenAPI 3.1 and served at ``GET /api/openapi.json``. Schemathesis then
sends generated requests for every operation, signed in as a user who owns a thread with a
known id (half the generated thread ids are that one, so requests get past the 404s), and
checks that no answer is a 5xx and that each is one the document describes.
"""

from __future__ import annotations

import copy
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from psycopg import sql
from psycopg.conninfo import make_conninfo
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from syncd.pgprovider import PostgresServer, drop_database
from web.config import Settings
from web.migrate import migrate
from web.openapi import document

from .conftest import SECRET
from .web_process import WebProcess

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
THREAD = uuid.UUID("6f1f7c52-2a36-4b8e-9d4c-0d3f3f4c2a11")
"""The thread the signed-in user owns; generated thread ids are this one half the time."""


def with_hints(doc: dict[str, Any]) -> dict[str, Any]:
    hinted = copy.deepcopy(doc)
    for path in hinted["paths"].values():
        for operation in path.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "thread_id":
                    parameter["schema"] = {"anyOf": [{"enum": [str(THREAD)]}, parameter["schema"]]}
    return hinted


def test_document_is_valid_openapi_3_1() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1.")
    validate(doc)
    validate(with_hints(doc))


@pytest.fixture(scope="module")
def module_dsn(pg_server: PostgresServer) -> Iterator[str]:
    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(pg_server.dsn, dbname=name)
    migrate(dsn, Settings().migrations_dir)
    yield dsn
    drop_database(pg_server.dsn, name)


@pytest.fixture(scope="module")
def web(module_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebProcess]:
    process = WebProcess(
        module_dsn, tmp_path_factory.mktemp("web"), SECRET, sign_up_client_limit=1000
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def token(web: WebProcess) -> str:
    with httpx.Client(base_url=web.url, timeout=30.0) as client:
        answer = client.post(
            "/api/auth/sign-up", json={"name": "schemathesis", "password": "correct horse"}
        )
        assert answer.status_code == 201, answer.text
        token: str = answer.json()["token"]
        headers = {"authorization": f"Bearer {token}"}
        created = client.post("/api/threads", json={"id": str(THREAD)}, headers=headers)
        assert created.status_code == 200, created.text
    return token


def test_the_document_is_served(web: WebProcess) -> None:
    answer = httpx.get(web.url + "/api/openapi.json", timeout=10.0)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == document()


schema = schemathesis.openapi.from_dict(with_hints(document()))


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_conforms_to_its_description(
    case: schemathesis.Case[Any], web: WebProcess, token: str
) -> None:
    headers = (
        {} if case.operation.path.endswith("sign-out") else {"authorization": f"Bearer {token}"}
    )
    case.call_and_validate(base_url=web.url, headers=headers, checks=CHECKS, timeout=30)


def test_serve_needs_a_secret(module_dsn: str, tmp_path: Path) -> None:
    process = WebProcess(module_dsn, tmp_path, secret="")
    process.settings.pop("secret")
    with pytest.raises(AssertionError, match="WEB_SECRET"):
        process.start(timeout=30)
