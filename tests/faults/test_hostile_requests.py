"""Hostile requests against a live syncd: every one gets a 4xx with a JSON body, never a 5xx.

One daemon (a child process, long-polls held 1 s) and one database serve the module. First the
requests that once broke syncd, one test each: numbers with thousands of digits, bodies and
clauses nested thousands deep, unknown paths and methods, where clauses that fail on a row's
value (the error must not quote it). Then a fuzz test: a seeded generator throws thousands of
requests (every parameter, every method, bodies of every shape, odd headers, big sizes) at it
and checks every answer, the daemon's health and memory, and that the tables are untouched.

``SYNCD_HOSTILE_REQUESTS`` sets how many requests the fuzz test sends (default 2000) and
``SYNCD_HOSTILE_SEED`` its seed.

Requests are well-formed HTTP (httpx sends them), with one exception: methods uvicorn's HTTP
parser does not know, which it refuses itself with a plain-text 400 before any of syncd's code
runs; those must still be a 4xx and leave syncd serving. A live SSE request is answered when its
headers arrive (its body may stream for a minute); long-polls are held for 1 s.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import psycopg
import pytest

from syncd.pgprovider import PostgresServer
from tests.faults.daemon import assert_json_error, scratch_database
from tests.syncd_process import SyncdProcess

SECRETS = ("hunter2-8c1f", "xyzzy-77d0", "swordfish-31aa")
"""Values of the ``secret`` column that no error body may ever contain."""

SETUP = f"""
CREATE TABLE items (id int PRIMARY KEY, title text NOT NULL, n int, secret text, tags text[]);
INSERT INTO items
    SELECT g, 'title ' || g, g % 3,
           (ARRAY['{SECRETS[0]}', '{SECRETS[1]}', '{SECRETS[2]}'])[g % 3 + 1], ARRAY['t' || g]
    FROM generate_series(1, 12) g;
CREATE TABLE "Odd Name" (k text PRIMARY KEY, v jsonb);
INSERT INTO "Odd Name" VALUES ('a', '{{"x": 1}}'), ('ü', '[1, 2]');
"""
TABLE_CHECK = (
    "SELECT (SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM items t),"
    " (SELECT md5(string_agg(t::text, ',' ORDER BY k)) FROM \"Odd Name\" t),"
    " (SELECT count(*) FROM pg_tables WHERE schemaname = 'public')"
)
_log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 60_000
MAX_ANSWER_SECONDS = 5.0
RSS_GROWTH_LIMIT_MB = 250


@pytest.fixture(scope="module")
def module_dsn(pg_server: PostgresServer) -> Iterator[str]:
    with scratch_database(pg_server, SETUP) as dsn:
        yield dsn


@pytest.fixture(scope="module")
def syncd(module_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncdProcess]:
    base: Path = tmp_path_factory.mktemp("hostile")
    daemon = SyncdProcess(
        module_dsn,
        base / "storage",
        long_poll_timeout=1,
        cache_max_age=17,
        cache_stale_age=33,
        slot="syncd_hostile",  # slot names are cluster-wide: one per concurrent daemon
    )
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30.0) as http:
        yield http


@pytest.fixture(scope="module")
def items(syncd: SyncdProcess, client: httpx.Client) -> tuple[str, str]:
    """The plain ``items`` shape, read to its end: ``(handle, offset)``."""
    answer = client.get(syncd.shape_url, params={"table": "items", "offset": "-1"})
    assert answer.status_code == 200, answer.text
    handle, offset = answer.headers["electric-handle"], answer.headers["electric-offset"]
    while "electric-up-to-date" not in answer.headers:
        query = {"table": "items", "offset": offset, "handle": handle}
        answer = client.get(syncd.shape_url, params=query)
        assert answer.status_code == 200, answer.text
        offset = answer.headers["electric-offset"]
    return handle, offset


DIGITS = "7" * 5000


# -- the requests that once broke syncd --------------------------------------------------------


def test_numbers_with_thousands_of_digits_are_refused(
    syncd: SyncdProcess, client: httpx.Client, items: tuple[str, str]
) -> None:
    handle, _ = items
    at_handle = {"table": "items", "handle": handle}
    queries: list[dict[str, str]] = [
        {**at_handle, "offset": f"{DIGITS}_0"},
        {**at_handle, "offset": f"0_{DIGITS}"},
        {**at_handle, "offset": f"{'0' * 5000}1_0"},
        {"table": "items", "offset": "0_0", "handle": DIGITS},
        {"table": "items", "offset": "-1", f"params[{DIGITS}]": "1", "where": "id = $1"},
        {"table": "items", "offset": "-1", "params[1]": DIGITS, "where": "id = $1"},
        {"table": "items", "offset": "-1", "where": f"id = {DIGITS}"},
        {"table": "items", "offset": "-1", "where": f"n::numeric < {DIGITS}"},
        {"table": "items", "offset": "-1", "subset__limit": DIGITS, "subset__order_by": "id"},
        {"table": "items", "offset": "-1", "subset__where": f"id = {DIGITS}"},
    ]
    for query in queries:
        answer = client.get(syncd.shape_url, params=query)
        assert answer.status_code < 500, (query, answer.status_code, answer.text[:300])
        if answer.status_code >= 400:
            assert_json_error(answer)
    live = client.get(
        syncd.shape_url, params={**at_handle, "offset": items[1], "live": "true", "cursor": DIGITS}
    )
    assert live.status_code == 200
    assert int(live.headers["electric-cursor"]) > 0


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deeply_nested_bodies_and_clauses_are_refused(
    syncd: SyncdProcess, client: httpx.Client, depth: int
) -> None:
    query = {"table": "items", "offset": "-1"}
    bodies = [
        "[" * depth + "]" * depth,
        '{"a":' * depth + "1" + "}" * depth,
        '{"where": "id > 0", "extra": ' + "[" * depth + "]" * depth + "}",
        '{"subset": {"where": "id > 0", "params": ' + '{"1":' * depth + "1" + "}" * depth + "}}",
        '{"where": "id = $1", "params": {"1": ' + "[" * depth + "]" * depth + "}}",
    ]
    for body in bodies:
        answer = client.post(
            syncd.shape_url,
            params=query,
            content=body.encode(),
            headers={"content-type": "application/json"},
        )
        assert answer.status_code < 500, (body[:40], answer.status_code, answer.text[:300])
        assert_json_error(answer)
    clauses = [
        ("where", "(" * depth + "id = 1" + ")" * depth),
        ("where", "NOT " * depth + "true"),
        ("where", " AND ".join(["id = 1"] * (depth // 10))),
        ("subset__where", "(" * depth + "id = 1" + ")" * depth),
        ("subset__order_by", "(" * depth + "id" + ")" * depth),
    ]
    for name, clause in clauses:
        answer = client.post(
            syncd.shape_url, params=query, json={name.removeprefix("subset__"): clause}
        )
        assert answer.status_code < 500, (name, answer.status_code, answer.text[:300])
        if answer.status_code >= 400:
            assert_json_error(answer)
    in_url = min(depth, 5000)  # what fits in a URL
    for name, value in [
        ("subset__params", "[" * in_url + "]" * in_url),
        ("subset__where", "(" * in_url + "id = 1" + ")" * in_url),
        ("where", "(" * in_url + "id = 1" + ")" * in_url),
    ]:
        answer = client.get(syncd.shape_url, params={**query, name: value})
        assert answer.status_code < 500, (name, answer.status_code, answer.text[:300])
        if answer.status_code >= 400 or name == "subset__params":
            assert_json_error(answer, 400)


def test_a_body_with_a_lone_surrogate_is_refused(syncd: SyncdProcess, client: httpx.Client) -> None:
    for body in (
        b'{"where": "\\ud800"}',
        b'{"subset": {"where": "id > 0", "params": {"1": "\\udfff"}}}',
    ):
        answer = client.post(
            syncd.shape_url, params={"table": "items", "offset": "-1"}, content=body
        )
        assert_json_error(answer, 400)


def test_a_body_larger_than_the_limit_is_refused_unread(
    syncd: SyncdProcess, client: httpx.Client
) -> None:
    body = b'{"where": "' + b"x" * (9 << 20) + b'"}'
    answer = client.post(syncd.shape_url, params={"table": "items", "offset": "-1"}, content=body)
    assert_json_error(answer, 413)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nope", 404),
        ("GET", "/v1/shape/x/y", 404),
        ("POST", "/v2/shape", 404),
        ("PATCH", "/v1/shape", 405),
        ("PUT", "/v1/shape", 405),
        ("POST", "/v1/health", 405),
        ("DELETE", "/", 405),
        ("PROPFIND", "/v1/shape", 405),
        ("OPTIONS", "/v1/health", 405),
    ],
)
def test_unknown_paths_and_methods_answer_json(
    syncd: SyncdProcess, client: httpx.Client, method: str, path: str, status: int
) -> None:
    answer = client.request(method, syncd.url + path, params={"table": "items", "offset": "-1"})
    body = assert_json_error(answer, status)
    assert isinstance(body, dict) and isinstance(body.get("message"), str), body
    if status == 405:
        assert "allow" in answer.headers


def _assert_no_row_data(answer: httpx.Response) -> None:
    for value in SECRETS:
        assert value not in answer.text, answer.text
        assert value not in str(answer.headers), answer.headers


@pytest.mark.parametrize(
    ("where", "condition"),
    [
        ("secret::int = 1", "invalid_text_representation"),
        ("n::int / (n - n) = 1", "division_by_zero"),
        ("(secret || 'x')::date IS NULL", "invalid_datetime_format"),
    ],
)
def test_error_bodies_quote_no_row_data(
    syncd: SyncdProcess,
    client: httpx.Client,
    items: tuple[str, str],
    where: str,
    condition: str,
) -> None:
    handle, offset = items
    shape = client.get(syncd.shape_url, params={"table": "items", "offset": "-1", "where": where})
    subset_get = client.get(
        syncd.shape_url,
        params={"table": "items", "offset": offset, "handle": handle, "subset__where": where},
    )
    subset_post = client.post(
        syncd.shape_url,
        params={"table": "items", "offset": offset, "handle": handle},
        json={"where": where},
    )
    for answer, errors_of in ((shape, None), (subset_get, "subset"), (subset_post, "subset")):
        _assert_no_row_data(answer)
        body = assert_json_error(answer, 400)
        assert isinstance(body, dict)
        errors = body["errors"] if errors_of is None else body["errors"][errors_of]
        assert condition in errors["where"][0], body


def test_catch_up_cache_headers_follow_the_settings(
    syncd: SyncdProcess, client: httpx.Client, items: tuple[str, str]
) -> None:
    handle, offset = items
    catch_up = client.get(
        syncd.shape_url, params={"table": "items", "offset": offset, "handle": handle}
    )
    assert catch_up.status_code == 200
    assert catch_up.headers["cache-control"] == "public, max-age=17, stale-while-revalidate=33"
    now = client.get(syncd.shape_url, params={"table": "items", "offset": "now"})
    assert now.headers["cache-control"] == "public, max-age=17, stale-while-revalidate=33"
    initial = client.get(syncd.shape_url, params={"table": "items", "offset": "-1"})
    assert "max-age=604800" in initial.headers["cache-control"]


# -- the fuzz test -----------------------------------------------------------------------------


@dataclass
class Hostile:
    """One generated request."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes | None = None

    def describe(self) -> str:
        query = [(k[:40], v[:60]) for k, v in self.query]
        return f"{self.method} {self.path} {query} {self.headers} {(self.body or b'')[:80]!r}"


WHERES = [
    "id > 2",
    "id = $1",
    "title LIKE 'title%'",
    "n IN (1, 2)",
    "secret::int = 1",
    "n::int / (n - n) = 1",
    "tags @> ARRAY['t1']",
    "1=1) OR (1=1",
    "id = 1; DROP TABLE items",
    "id = 1 -- comment",
    "id = (SELECT 1)",
    "pg_sleep(10) IS NULL",
    "title ~ '(a+)+$'",
    "title LIKE '%a%a%a%a%a%a%a%a%b'",
    "$2 = $1",
    "id = $99999999999999999999",
    "'\x00' = title",
    "title = 'ü\u202e'",
    "id = 1e400",
    "id::text = repeat('x', 100000)",
    "",
    " ",
    "(",
    "'",
    '"',
    "id > -9223372036854775809",
    "title COLLATE \"C\" < 'z'",
    "ARRAY[1,2] = ARRAY[1,2]",
    "v->>'x' = '1'",
    "k = 'a'",
]
TABLES = [
    "items",
    "public.items",
    '"items"',
    '"Odd Name"',
    'public."Odd Name"',
    "nonexistent",
    "pg_catalog.pg_class",
    "items.too.many",
    '"it\x00ems"',
    "ITEMS",
    "information_schema.tables",
]
OFFSETS = ["-1", "now", "0_0", "0_inf", "0_3", "1_0", "-2", "0_-1", "abc", "", "_", "1_2_3"]
BOOLEANS = ["true", "false", "TRUE", "1", "", "yes", "null"]
PARAM_NAMES = [
    "table",
    "offset",
    "handle",
    "live",
    "live_sse",
    "experimental_live_sse",
    "cursor",
    "where",
    "columns",
    "replica",
    "log",
    "secret",
    "api_secret",
    "params[1]",
    "params[2]",
    "params[0]",
    "params[01]",
    "params[]",
    "params",
    "subset__where",
    "subset__params",
    "subset__limit",
    "subset__offset",
    "subset__order_by",
    "subset[where]",
    "subset[limit]",
    "subset__where_expr",
]
METHODS = ["GET"] * 10 + ["POST"] * 5 + ["HEAD", "DELETE", "OPTIONS", "PUT", "PATCH", "TRACE"]
ODD_METHODS = ["PROPFIND", "MKCOL", "PURGE", "SEARCH", "get", "X-SYNC", "CONNECTX"]
UNPARSED_METHODS = {"X-SYNC", "CONNECTX"}
"""Methods uvicorn's HTTP parser does not know: it refuses the request itself (400, plain text)
before any of syncd's code runs."""
PARSER_REFUSAL = "Invalid HTTP request received."
PATHS = ["/v1/shape"] * 12 + [
    "/v1/shape/",
    "//v1//shape",
    "/v1/%73hape",
    "/v1/health",
    "/v1/openapi.json",
    "/",
    "/v1",
    "/v1/shape/x",
    "/v1/shape/%00",
    "/v1/ü",
    "/" + "a" * 5000,
]
CONTENT_TYPES = [
    "application/json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/json; charset=latin-1",
    "",
    "\u00ff/\u00ff",
]


class Generator:
    """Seeded generator of hostile requests, aimed at one live shape."""

    def __init__(self, seed: int, handle: str, offset: str) -> None:
        self.rng = random.Random(seed)
        self.handle = handle
        self.offset = offset

    def value(self) -> str:
        """A value for any parameter: realistic, or hostile in one of many ways."""
        rng = self.rng
        kind = rng.randrange(16)
        if kind == 0:
            return rng.choice(WHERES)
        if kind == 1:
            return rng.choice(TABLES)
        if kind == 2:
            return rng.choice(OFFSETS)
        if kind == 3:
            return rng.choice(BOOLEANS)
        if kind == 4:
            return str(rng.choice([-1, 0, 1, 2, 2**31, 2**63, 2**64, -(2**63) - 1]))
        if kind == 5:
            return rng.choice(["7", "0", "-", "1"]) * rng.choice([20, 400, 5000])
        if kind == 6:
            return "".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(rng.randrange(1, 40)))
        if kind == 7:
            return rng.choice(["(", "[", "{", "NOT ", "-"]) * rng.choice([100, 3000, 20000])
        if kind == 8:
            return "x" * rng.choice([1000, 60_000])
        if kind == 9:
            return json.dumps({"1": rng.choice(WHERES), "2": [1, {"a": None}]})
        if kind == 10:
            return self.handle
        if kind == 11:
            return self.offset
        if kind == 12:
            return rng.choice(["id", "id,title", "id,secret", "title", "*", "id,id", '"id"', ","])
        if kind == 13:
            return rng.choice(
                ["%00", "\x00", "\r\n", "\ud800".encode("utf-8", "surrogatepass").decode("latin-1")]
            )
        if kind == 14:
            return rng.choice(["default", "full", "changes_only", "partial"])
        return ""

    def query(self) -> list[tuple[str, str]]:
        rng = self.rng
        query: list[tuple[str, str]] = []
        if rng.random() < 0.8:  # most requests name a real shape, so they get past the basics
            query += [("table", rng.choice(["items", "items", '"Odd Name"']))]
            if rng.random() < 0.5:
                query += [("offset", self.offset), ("handle", self.handle)]
            else:
                query += [("offset", rng.choice(["-1", "now", "-1"]))]
        for _ in range(rng.randrange(0, 6)):
            name = rng.choice(PARAM_NAMES)
            if rng.random() < 0.05:
                name = rng.choice(["", "\x00", "ü" * 10, "subset__" + "x" * 300, "a" * 5000])
            query.append((name, self.value()))
        if rng.random() < 0.1 and query:  # repeat one parameter
            query.append((rng.choice(query)[0], self.value()))
        rng.shuffle(query)
        if rng.random() < 0.05:  # live, which the 1 s long-poll timeout answers in time
            query += [("live", "true"), ("handle", self.handle), ("offset", self.offset)]
        while len(urlencode(query)) > MAX_QUERY_CHARS:  # what an HTTP client will send
            query.remove(max(query, key=lambda item: len(item[0]) + len(item[1])))
        return query

    def body(self) -> bytes:
        rng = self.rng
        kind = rng.randrange(12)
        depth = rng.choice([10, 900, 5000, 100_000])
        if kind == 0:
            return ("[" * depth + "]" * depth).encode()
        if kind == 1:
            return ('{"where": ' * depth + '"id > 1"' + "}" * depth).encode()
        if kind == 2:
            subset = {
                "where": rng.choice(WHERES),
                "params": {"1": self.value()},
                "limit": rng.choice([1, 0, -1, 10**30, "x", None, 2.5]),
                "offset": rng.choice([0, -5, 10**30, None]),
                "order_by": rng.choice(["id", "id DESC NULLS LAST", "secret", "1", "(id)", ""]),
            }
            return json.dumps(rng.choice([subset, {"subset": subset}])).encode()
        if kind == 3:
            return json.dumps({rng.choice(PARAM_NAMES): self.value() for _ in range(4)}).encode()
        if kind == 4:
            return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        if kind == 5:
            return rng.choice([b"NaN", b"Infinity", b'{"limit": NaN}', b"null", b"1", b'"x"'])
        if kind == 6:
            return b"{" + b'"a":1,' * 20000 + b'"b":2}'
        if kind == 7:
            return ("[" + ",".join(["1"] * 50000) + "]").encode()
        if kind == 8:
            return b'{"where": "id = ' + DIGITS.encode() + b'"}'
        if kind == 9:
            return b'{"limit": ' + DIGITS.encode() + b', "order_by": "id"}'
        if kind == 10:
            return b'{"where": "\\ud800"}'
        if kind == 11 and rng.random() < 0.05:  # over the 8 MiB limit
            return b'{"where": "' + b"x" * (9 << 20) + b'"}'
        return b""

    def headers(self) -> dict[bytes, bytes]:
        """Odd headers; values as raw bytes (UTF-8), as a hostile client may send them."""
        return {name.encode(): value.encode() for name, value in self._headers().items()}

    def _headers(self) -> dict[str, str]:
        rng = self.rng
        headers: dict[str, str] = {}
        if rng.random() < 0.3:
            headers["content-type"] = rng.choice(CONTENT_TYPES)
        if rng.random() < 0.1:
            headers["if-none-match"] = rng.choice(['"x"', "*", ",,,", '"' + "a" * 8000 + '"'])
        if rng.random() < 0.05:
            headers["origin"] = rng.choice(["http://evil.example", "null", "ü"])
            headers["access-control-request-headers"] = ",".join(["x-a"] * 500)
        if rng.random() < 0.05:
            headers["accept"] = "text/event-stream"
        if rng.random() < 0.05:
            headers["range"] = "bytes=0-1"
        if rng.random() < 0.03:
            headers["x-forwarded-for"] = rng.choice(
                ["::1", "not an address", ", ".join(["1.2.3.4"] * 300)]
            )
        return headers

    def request(self) -> Hostile:
        rng = self.rng
        method = rng.choice(ODD_METHODS) if rng.random() < 0.03 else rng.choice(METHODS)
        path = rng.choice(PATHS)
        body = self.body() if method != "GET" or rng.random() < 0.05 else None
        if method in UNPARSED_METHODS:  # refused before the body is read: it would meet a reset
            body = None
        return Hostile(method, path, self.query(), self.headers(), body)


@dataclass
class Verdict:
    request: Hostile
    status: int
    seconds: float
    problem: str | None


async def _send(http: httpx.AsyncClient, base: str, hostile: Hostile) -> Verdict:
    started = time.monotonic()
    problem: str | None = None
    url = httpx.URL(base + hostile.path, params=hostile.query)
    request = http.build_request(hostile.method, url, headers=hostile.headers, content=hostile.body)
    try:
        response = await http.send(request, stream=True)
    except httpx.TransportError as exc:
        return Verdict(hostile, 0, time.monotonic() - started, f"no answer: {exc!r}")
    try:
        seconds = time.monotonic() - started
        status = response.status_code
        text = ""  # a live SSE stream: its headers are the answer; the body may last a minute
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            await response.aread()
            text = response.text
            refused_by_parser = hostile.method in UNPARSED_METHODS and text == PARSER_REFUSAL
            if 400 <= status < 500 and hostile.method != "HEAD" and not refused_by_parser:
                try:
                    assert response.headers.get("content-type", "").startswith("application/json")
                    json.loads(response.content)
                except (AssertionError, ValueError):
                    problem = f"non-JSON {status}: {text[:200]!r}"
        if status >= 500:
            problem = f"{status}: {text[:300]!r}"
        if status >= 400 and any(value in text for value in SECRETS):
            problem = f"row data in an error body: {text[:300]!r}"
    finally:
        await response.aclose()
    if seconds > MAX_ANSWER_SECONDS:
        problem = f"answered after {seconds:.1f}s"
    return Verdict(hostile, status, seconds, problem)


async def _fuzz(base: str, requests: list[Hostile], concurrency: int) -> list[Verdict]:
    queue = iter(requests)
    verdicts: list[Verdict] = []
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as http:

        async def worker() -> None:
            for hostile in queue:
                verdicts.append(await _send(http, base, hostile))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return verdicts


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _table_check(dsn: str) -> tuple[Any, ...]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(TABLE_CHECK).fetchone()
    assert row is not None
    return tuple(row)


def test_hostile_request_fuzz(
    syncd: SyncdProcess, client: httpx.Client, items: tuple[str, str], module_dsn: str
) -> None:
    count = int(os.environ.get("SYNCD_HOSTILE_REQUESTS", "2000"))
    seed = int(os.environ.get("SYNCD_HOSTILE_SEED", "20261204"))
    assert syncd.process is not None
    pid = syncd.process.pid
    tables_before = _table_check(module_dsn)
    generator = Generator(seed, *items)
    requests = [generator.request() for _ in range(count)]
    warm_up = asyncio.run(_fuzz(syncd.url, requests[:200], concurrency=8))
    rss_before = _rss_mb(pid)
    verdicts = warm_up + asyncio.run(_fuzz(syncd.url, requests[200:], concurrency=8))
    rss_after = _rss_mb(pid)

    statuses = collections.Counter(v.status for v in verdicts)
    _log.info(
        "%d hostile requests (seed %d): statuses %s, slowest answer %.2fs, RSS %.0f -> %.0f MB",
        len(verdicts),
        seed,
        dict(sorted(statuses.items())),
        max(v.seconds for v in verdicts),
        rss_before,
        rss_after,
    )
    problems = [f"{v.problem}\n    {v.request.describe()}" for v in verdicts if v.problem]
    assert not problems, f"{len(problems)} bad answers (seed {seed}):\n" + "\n".join(problems[:20])
    assert len(verdicts) == count
    if count >= 1000:  # the generator reaches every path
        assert {200, 400, 404, 405, 409}.issubset(statuses), statuses
    assert syncd.process.poll() is None, syncd.log_tail()
    health = client.get(syncd.url + "/v1/health")
    assert health.status_code == 200 and health.json() == {"status": "active"}
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_MB, (rss_before, rss_after)
    assert _table_check(module_dsn) == tables_before
    answer = client.get(syncd.shape_url, params={"table": "items", "offset": "-1"})
    assert answer.status_code == 200
