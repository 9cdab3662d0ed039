"""Bad requests against a live syncd: each gets the protocol's 400 (or 409), never a 5xx.

One daemon (``long_poll_timeout=2``) and one database serve the whole module. The last test
checks that the daemon still serves shapes and that no ``where`` injection reached Postgres.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.conninfo import make_conninfo

from shapes.offset import INVALID_FORMAT
from shapes.request import OFFSET_BLANK
from syncd.engine import Engine
from syncd.http import DELETE_REFUSED, ApiSettings, ShapeApi, create_app
from syncd.pgprovider import PostgresServer, drop_database
from tests.syncd_process import SyncdProcess

ROWS = 5
MISSING_TABLE = (
    'Table "public"."nonexistent" does not exist. If the table name contains capitals or '
    "special characters you must quote it."
)

Query = dict[str, str]


@pytest.fixture(scope="module")
def module_dsn(pg_server: PostgresServer) -> Iterator[str]:
    """Like ``pg_dsn``, but one database for the whole module (the daemon is shared)."""
    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(pg_server.dsn, dbname=name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, title text NOT NULL, n int)")
        conn.execute(
            "INSERT INTO items SELECT g, 'title ' || g, g FROM generate_series(1, %s) g", (ROWS,)
        )
    yield dsn
    drop_database(pg_server.dsn, name)


@pytest.fixture(scope="module")
def syncd(module_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncdProcess]:
    base: Path = tmp_path_factory.mktemp("bad_input")
    daemon = SyncdProcess(
        module_dsn,
        base / "storage",
        long_poll_timeout=2,
        chunk_bytes=4096,
        slot="syncd_bad_input",  # slot names are cluster-wide: one per concurrent daemon
    )
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=15.0) as http:
        yield http


@pytest.fixture(scope="module")
def shape(syncd: SyncdProcess, client: httpx.Client) -> tuple[str, str]:
    """A valid, fully read ``items`` shape: ``(handle, latest offset)``."""
    answer = client.get(syncd.shape_url, params={"table": "items", "offset": "-1"})
    assert answer.status_code == 200, answer.text
    handle = answer.headers["electric-handle"]
    offset = answer.headers["electric-offset"]
    while True:
        answer = client.get(
            syncd.shape_url, params={"table": "items", "offset": offset, "handle": handle}
        )
        assert answer.status_code == 200, answer.text
        offset = answer.headers["electric-offset"]
        if "electric-up-to-date" in answer.headers:
            return handle, offset


def assert_invalid(answer: httpx.Response, field: str, message: str | None = None) -> list[str]:
    """A protocol 400 whose ``errors`` name ``field`` (and ``message`` when given)."""
    assert answer.status_code == 400, (answer.status_code, answer.text)
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["content-type"].startswith("application/json")
    assert "electric-handle" not in answer.headers
    assert "etag" not in answer.headers
    body = answer.json()
    assert body["message"] == "Invalid request", body
    errors = body["errors"]
    assert isinstance(errors, dict)
    assert field in errors, body
    assert isinstance(errors[field], list) and errors[field], body
    assert all(isinstance(text, str) for text in errors[field])
    if message is not None:
        assert errors[field] == [message], body
    messages: list[str] = errors[field]
    return messages


# -- offset ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "offset", ["abc", "1_2_3", "0_-1", " 0_0", "0_0 ", "99999999999999999999999_0", "10", "_"]
)
def test_malformed_offset(
    syncd: SyncdProcess, client: httpx.Client, shape: tuple[str, str], offset: str
) -> None:
    handle, _ = shape
    for query in (
        {"table": "items", "offset": offset},
        {"table": "items", "offset": offset, "handle": handle},
    ):
        answer = client.get(syncd.shape_url, params=query)
        assert_invalid(answer, "offset", INVALID_FORMAT)


def test_blank_offset(syncd: SyncdProcess, client: httpx.Client) -> None:
    answer = client.get(syncd.shape_url, params={"table": "items"})
    assert_invalid(answer, "offset", OFFSET_BLANK)
    answer = client.get(syncd.shape_url, params={"table": "items", "offset": ""})
    assert_invalid(answer, "offset", OFFSET_BLANK)
    assert OFFSET_BLANK.startswith("can't be blank; use -1 ")


def test_offset_beyond_the_shape_end(
    syncd: SyncdProcess, client: httpx.Client, shape: tuple[str, str]
) -> None:
    handle, latest = shape
    assert latest == "0_inf"
    started = time.monotonic()
    answer = client.get(
        syncd.shape_url,
        params={"table": "items", "offset": "999999999999_0", "handle": handle},
    )
    waited = time.monotonic() - started
    assert_invalid(answer, "offset", "out of bounds for this shape")
    assert waited >= 0.8, waited  # held about half of long_poll_timeout=2 before answering


# -- handle ------------------------------------------------------------------------------------


def test_missing_handle_with_a_real_offset(syncd: SyncdProcess, client: httpx.Client) -> None:
    for offset in ("0_0", "0_inf", "12345_0"):
        answer = client.get(syncd.shape_url, params={"table": "items", "offset": offset})
        assert_invalid(answer, "handle", "can't be blank when offset != -1")
        answer = client.get(
            syncd.shape_url, params={"table": "items", "offset": offset, "handle": ""}
        )
        assert_invalid(answer, "handle", "can't be blank when offset != -1")


@pytest.mark.parametrize("handle", ["garbage", "123-456", "x" * 300, "../../etc/passwd", "%00"])
def test_garbage_handle_is_a_must_refetch(
    syncd: SyncdProcess, client: httpx.Client, shape: tuple[str, str], handle: str
) -> None:
    real, _ = shape
    answer = client.get(
        syncd.shape_url, params={"table": "items", "offset": "0_inf", "handle": handle}
    )
    assert answer.status_code == 409, answer.text
    assert answer.json() == [{"headers": {"control": "must-refetch"}}]
    assert answer.headers["electric-handle"] == real
    assert answer.headers["cache-control"] == "public, max-age=60, must-revalidate"
    assert answer.headers["etag"] == f'"{real}::"'
    assert "electric-offset" not in answer.headers
    assert "electric-schema" not in answer.headers


def test_handle_of_another_definition_is_a_must_refetch(
    syncd: SyncdProcess, client: httpx.Client, shape: tuple[str, str]
) -> None:
    real, _ = shape
    query = {"table": "items", "offset": "0_inf", "handle": real, "where": "id = 1"}
    answer = client.get(syncd.shape_url, params=query)
    assert answer.status_code == 409, answer.text
    other = answer.headers["electric-handle"]
    assert other != real
    answer = client.get(
        syncd.shape_url, params={"table": "items", "offset": "-1", "where": "id = 1"}
    )
    assert answer.status_code == 200
    assert answer.headers["electric-handle"] == other


# -- table -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("a.b.c", "Invalid relation identifier, too many delimiters: a.b.c"),
        ('""', "Invalid zero-length delimited identifier"),
        ("bad-name", "Invalid unquoted identifier contains special characters: bad-name"),
        ("nonexistent", MISSING_TABLE),
        ("public.nonexistent", MISSING_TABLE),
        ("NonExistent", MISSING_TABLE),
        ("x" * 64, None),
        ("x" * 10_000, None),
        ('"' + "y" * 64 + '"', None),
        ("public." + "z" * 200, None),
        ('"unterminated', None),
        ("items.", None),
        (".items", None),
        ("public..items", None),
        ("items; DROP TABLE items", None),
        ('"items"; DROP TABLE items', None),
        ("pg_catalog.nope", None),
    ],
)
def test_bad_table(
    syncd: SyncdProcess, client: httpx.Client, table: str, message: str | None
) -> None:
    answer = client.get(syncd.shape_url, params={"table": table, "offset": "-1"})
    assert_invalid(answer, "table", message)


def test_blank_table(syncd: SyncdProcess, client: httpx.Client) -> None:
    assert_invalid(client.get(syncd.shape_url, params={"offset": "-1"}), "table", "can't be blank")
    answer = client.get(syncd.shape_url, params={"offset": "-1", "table": ""})
    assert_invalid(answer, "table", "can't be blank")


def test_an_unknown_column_in_where_lists_the_tables_columns(
    syncd: SyncdProcess, client: httpx.Client
) -> None:
    query = {"table": "items", "offset": "-1", "where": "nope = 1"}
    [message] = assert_invalid(client.get(syncd.shape_url, params=query), "where")
    assert message == "At location 0: unknown reference nope; the table's columns are: id, title, n"


async def test_a_refused_delete_names_the_flag_that_allows_it() -> None:
    api = ShapeApi(cast(Engine, None), ApiSettings(), lambda: "active")  # never reaches the engine
    transport = httpx.ASGITransport(create_app(api))
    async with httpx.AsyncClient(transport=transport, base_url="http://syncd") as client:
        answer = await client.delete("/v1/shape", params={"table": "items"})
    assert answer.status_code == 405
    assert answer.json() == {"message": DELETE_REFUSED}
    assert "--allow-shape-deletion" in DELETE_REFUSED


# -- columns -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ("id,invalid", "The following columns are not found on the table: invalid"),
        ("title", "The list of columns must include all primary key columns, missing: id"),
        ("title,n", "The list of columns must include all primary key columns, missing: id"),
        ("", "The list of columns must not be empty"),
        ("id,", "Invalid zero-length delimited identifier"),
        ('"id",', "Invalid zero-length delimited identifier"),
        ("id,,title", "Invalid zero-length delimited identifier"),
        ('"ID"', None),
        ('"id","', None),
        ("id;drop", None),
        ("id title", None),
        ("x" * 1000, None),
    ],
)
def test_bad_columns(
    syncd: SyncdProcess, client: httpx.Client, columns: str, message: str | None
) -> None:
    query = {"table": "items", "offset": "-1", "columns": columns}
    assert_invalid(client.get(syncd.shape_url, params=query), "columns", message)


# -- where -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("1 x 1", 'At location 17: syntax error at or near "x"'),
        ("nope = 1", None),
        ("id IN (SELECT 1)", None),
        ("EXISTS (SELECT 1 FROM items)", None),
        ("pg_sleep(1) IS NOT NULL", None),
        ("now() > '2020-01-01'", None),
        ("id = (SELECT max(id) FROM items)", None),
        ("count(*) > 0", None),
        ("1=1; DROP TABLE items", None),
        ("true; DROP TABLE items; --", None),
        ("true) OR (1=1", None),
        ("id = 1)", None),
        ("'", None),
        ("id = $1", "At location 5: parameter $1 was not provided"),
        ("id = $2", None),
        ("title = 1", None),
        ("id", None),
        ("pg_read_file('/etc/passwd') = ''", None),
        ("id = 1 UNION SELECT 1", None),
        ("id = 1 ORDER BY 1", None),
        ("id = 1 LIMIT 1", None),
        ("lower(title) = 'x' AND set_config('a.b', 'c', false) = 'c'", None),
        ("id::regclass IS NOT NULL", None),
        ("x" * 20_000 + " = 1", None),
    ],
)
def test_bad_where(
    syncd: SyncdProcess, client: httpx.Client, where: str, message: str | None
) -> None:
    query = {"table": "items", "offset": "-1", "where": where}
    assert_invalid(client.get(syncd.shape_url, params=query), "where", message)


def test_where_comment_cannot_inject(syncd: SyncdProcess, client: httpx.Client) -> None:
    """A trailing ``--`` comment parses as a comment; the shape is just ``id = 1``."""
    query = {"table": "items", "offset": "-1", "where": "id = 1 --"}
    answer = client.get(syncd.shape_url, params=query)
    if answer.status_code == 400:
        assert_invalid(answer, "where")
        return
    assert answer.status_code == 200, answer.text
    rows = [m for m in answer.json() if "key" in m]
    assert [row["value"]["id"] for row in rows] == ["1"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"params[a]": "1"}, "Parameters can only use numbers as keys"),
        ({"params[1]": "1", "params[x]": "2"}, "Parameters can only use numbers as keys"),
        ({"params[]": "1"}, "Parameters can only use numbers as keys"),
        ({"params[2]": "1"}, "Parameters must be numbered sequentially, starting from 1"),
        ({"params[0]": "1"}, "Parameters must be numbered sequentially, starting from 1"),
        (
            {"params[1]": "1", "params[3]": "1"},
            "Parameters must be numbered sequentially, starting from 1",
        ),
    ],
)
def test_bad_params(syncd: SyncdProcess, client: httpx.Client, params: Query, message: str) -> None:
    query = {"table": "items", "offset": "-1", "where": "id = $1", **params}
    assert_invalid(client.get(syncd.shape_url, params=query), "params", message)


@pytest.mark.parametrize("number", ["\u00b2", "\u0661", "\uff11", "1.0", "-1", " 1"])
def test_params_keys_must_be_ascii_numbers(
    syncd: SyncdProcess, client: httpx.Client, number: str
) -> None:
    query = {"table": "items", "offset": "-1", "where": "id = $1", f"params[{number}]": "1"}
    answer = client.get(syncd.shape_url, params=query)
    assert_invalid(answer, "params", "Parameters can only use numbers as keys")


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("1 / (id - 1) > 0", "division_by_zero (SQLSTATE 22012)"),
        ("title::int > 0", "invalid_text_representation (SQLSTATE 22P02)"),
    ],
)
def test_where_failing_on_the_snapshot_data(
    syncd: SyncdProcess, client: httpx.Client, where: str, message: str
) -> None:
    """Postgres rejects the clause on the table's rows: a client error, retrying cannot help.
    The message names the condition, never the row's value."""
    message = "evaluating it on the table's rows failed with " + message
    query = {"table": "items", "offset": "-1", "where": where}
    assert_invalid(client.get(syncd.shape_url, params=query), "where", message)


def test_param_value_of_the_wrong_type(syncd: SyncdProcess, client: httpx.Client) -> None:
    query = {"table": "items", "offset": "-1", "where": "id = $1", "params[1]": "1; DROP"}
    answer = client.get(syncd.shape_url, params=query)
    assert answer.status_code == 400, answer.text
    assert_invalid(answer, next(iter(answer.json()["errors"])))


# -- flags -------------------------------------------------------------------------------------


def test_bad_enums(syncd: SyncdProcess, client: httpx.Client) -> None:
    answer = client.get(syncd.shape_url, params={"table": "items", "offset": "-1", "replica": "x"})
    assert_invalid(answer, "replica", "is invalid")
    answer = client.get(syncd.shape_url, params={"table": "items", "offset": "-1", "log": "bogus"})
    assert_invalid(answer, "log", "is invalid")
    answer = client.get(syncd.shape_url, params={"table": "items", "replica": "bogus"})
    assert answer.status_code == 400
    assert answer.json()["errors"] == {"replica": ["is invalid"], "offset": [OFFSET_BLANK]}


def test_live_flags(syncd: SyncdProcess, client: httpx.Client, shape: tuple[str, str]) -> None:
    handle, latest = shape
    base = {"table": "items"}
    answer = client.get(syncd.shape_url, params={**base, "offset": "-1", "live": "true"})
    assert_invalid(answer, "live", "can't be true when offset == -1")
    answer = client.get(syncd.shape_url, params={**base, "offset": "now", "live": "true"})
    assert_invalid(answer, "live", "can't be true when offset is 'now'")
    query = {**base, "offset": latest, "handle": handle, "live_sse": "true"}
    assert_invalid(
        client.get(syncd.shape_url, params=query),
        "live_sse",
        "can't be true unless live is also true",
    )
    query = {**base, "offset": latest, "handle": handle, "experimental_live_sse": "true"}
    assert_invalid(client.get(syncd.shape_url, params=query), "live_sse")
    query = {**base, "offset": "-1", "live_sse": "true"}
    assert_invalid(client.get(syncd.shape_url, params=query), "live_sse")


# -- fuzzing -----------------------------------------------------------------------------------

FUZZ = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
printable = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")) | st.sampled_from("\"'.,_-$ "),
    max_size=40,
)


def assert_not_server_error(answer: httpx.Response) -> None:
    assert answer.status_code < 500, (answer.status_code, answer.text)
    assert answer.status_code in (200, 400, 409), (answer.status_code, answer.text)
    if answer.status_code == 400:
        body = answer.json()
        assert body["message"] == "Invalid request"
        assert answer.headers["cache-control"] == "no-store"


@FUZZ
@given(where=printable)
def test_fuzz_where(syncd: SyncdProcess, client: httpx.Client, where: str) -> None:
    query = {"table": "items", "offset": "-1", "where": where}
    answer = client.get(syncd.shape_url, params=query)
    assert_not_server_error(answer)


@FUZZ
@given(table=printable)
def test_fuzz_table(syncd: SyncdProcess, client: httpx.Client, table: str) -> None:
    answer = client.get(syncd.shape_url, params={"table": table, "offset": "-1"})
    assert_not_server_error(answer)


@FUZZ
@given(columns=printable)
def test_fuzz_columns(syncd: SyncdProcess, client: httpx.Client, columns: str) -> None:
    query = {"table": "items", "offset": "-1", "columns": columns}
    answer = client.get(syncd.shape_url, params=query)
    assert_not_server_error(answer)


@FUZZ
@given(offset=printable | st.from_regex(r"-?[0-9]{1,25}_(inf|-?[0-9]{1,25})", fullmatch=True))
def test_fuzz_offset(
    syncd: SyncdProcess, client: httpx.Client, shape: tuple[str, str], offset: str
) -> None:
    handle, _ = shape
    query = {"table": "items", "offset": offset, "handle": handle}
    answer = client.get(syncd.shape_url, params=query)
    assert_not_server_error(answer)


@FUZZ
@given(number=printable, value=printable)
def test_fuzz_params(syncd: SyncdProcess, client: httpx.Client, number: str, value: str) -> None:
    query = {"table": "items", "offset": "-1", "where": "title = $1", f"params[{number}]": value}
    answer = client.get(syncd.shape_url, params=query)
    assert_not_server_error(answer)


# -- afterwards --------------------------------------------------------------------------------


def test_still_serving_and_no_injection(
    syncd: SyncdProcess, client: httpx.Client, module_dsn: str
) -> None:
    """Runs last in the module: the daemon is healthy and ``items`` is intact."""
    answer = client.get(syncd.url + "/v1/health")
    assert answer.status_code == 200
    assert answer.json() == {"status": "active"}
    query = {"table": "items", "offset": "-1", "columns": "id,title"}
    answer = client.get(syncd.shape_url, params=query)
    assert answer.status_code == 200, answer.text
    body: list[dict[str, Any]] = json.loads(answer.content)
    ids = sorted(int(m["value"]["id"]) for m in body if "key" in m)
    assert ids == list(range(1, ROWS + 1))
    with psycopg.connect(module_dsn) as conn:
        rows = conn.execute("SELECT id, title, n FROM items ORDER BY id").fetchall()
    assert rows == [(i, f"title {i}", i) for i in range(1, ROWS + 1)]
    assert syncd.process is not None and syncd.process.poll() is None
    log_text = syncd.log_tail(100_000)
    assert "Exception in ASGI application" not in log_text, log_text[-5000:]
    assert "CRITICAL" not in log_text, log_text[-5000:]


# -- a clause that fails on a replicated row ---------------------------------------------------


@pytest.mark.parametrize(
    ("where", "bad_n"),
    [
        ("100 / (n - 10) < 0", 10),
        ("n::int2 > 0", 40_000),
        ("n::int2 * 2::int2 > 0", 32_000),
    ],
)
def test_where_failing_on_a_replicated_row(
    pg_dsn: str, tmp_path: Path, where: str, bad_n: int
) -> None:
    """Postgres would raise evaluating the clause on a new row: that shape alone is retired.

    Its clients get a 409, and the shape asked for again fails as its snapshot query fails in
    Postgres (a 400), so live stream and snapshot agree; the daemon keeps replicating and serving.
    """
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, title text NOT NULL, n int)")
        conn.execute("INSERT INTO items VALUES (1, '1', 1)")
    daemon = SyncdProcess(pg_dsn, tmp_path / "storage", long_poll_timeout=2, slot="syncd_eval")
    try:
        daemon.start()
        with httpx.Client(timeout=15.0) as http:
            query = {"table": "items", "where": where}
            answer = http.get(daemon.shape_url, params={**query, "offset": "-1"})
            assert answer.status_code == 200, answer.text
            handle = answer.headers["electric-handle"]
            offset = answer.headers["electric-offset"]
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                conn.execute("INSERT INTO items VALUES (2, '2', %s)", (bad_n,))
                conn.execute("INSERT INTO items VALUES (3, '3', 3)")
            keys: list[str] = []
            deadline = time.monotonic() + 20
            while True:
                assert time.monotonic() < deadline, keys
                live = {"live": "true", "cursor": ""} if offset != "0_0" else {}
                answer = http.get(
                    daemon.shape_url,
                    params={**query, "offset": offset, "handle": handle, **live},
                )
                if answer.status_code == 409:
                    break
                assert answer.status_code == 200, answer.text
                offset = answer.headers["electric-offset"]
                keys.extend(m["key"] for m in answer.json() if "key" in m)
            assert keys == []
            answer = http.get(daemon.shape_url, params={**query, "offset": "-1"})
            assert_invalid(answer, "where")
        assert daemon.process is not None and daemon.process.poll() is None
    finally:
        log_text = daemon.log_tail(100_000)
        daemon.stop()
    assert "CRITICAL" not in log_text, log_text[-3000:]
