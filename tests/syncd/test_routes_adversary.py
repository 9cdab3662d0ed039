"""Shape routes as an adversary sees them: nothing a client sends widens what its scope shows.

Two tables, ``items_a`` and ``items_b``, hold the same visible rows (``id``, ``owner``,
``title``, ``n``) and different values of the hidden column ``secret`` (other nulls, other
first letters, other lengths, the reverse order). The app serves ``/a`` and ``/b``, each scoped
to ``owner = $1`` for the signed-in user with ``secret`` hidden. Postgres is the oracle for
non-interference: whatever a client sends, the answers of ``/a`` and ``/b`` must be the same
(up to the table's name and the handles), so no answer may depend on a hidden value, whether
by showing it, filtering on it or ordering by it. Every example runs against a syncd daemon
and against the in-process engine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import json
import re
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import pytest
import uvicorn
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from syncd import route_relay
from syncd.embed import EmbeddedSyncd
from syncd.routes import ShapeRoutes, ShapeScope
from tests.syncd_process import SyncdProcess, free_port

T = TypeVar("T")

USERS = ("alice", "bob")
VISIBLE = ("id", "owner", "title", "n")
ROWS = [
    (1, "alice", "apple", 10),
    (2, "alice", "apricot", 20),
    (3, "bob", "banana", 30),
    (4, "bob", "blueberry", 40),
    (5, "carol", "cherry", 50),
    (6, "alice", "avocado", 60),
]
SECRETS_A = {1: "Qx7-aardvark", 2: None, 3: "Qx7-badger", 4: None, 5: "Qx7-camel", 6: None}
SECRETS_B = {1: None, 2: "Zw9-zebra-long", 3: None, 4: "Zw9-yak-long", 5: None, 6: "Zw9-wolf"}
HIDDEN_VALUES = [v for v in (*SECRETS_A.values(), *SECRETS_B.values()) if v is not None]
TABLES = {"a": "items_a", "b": "items_b"}
LONG_POLL = 30  # seconds: a live request the routes failed to cut off would hold this long


def create_tables(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table, secrets in (("items_a", SECRETS_A), ("items_b", SECRETS_B)):
            conn.execute(
                f"CREATE TABLE {table} (id int PRIMARY KEY, owner text, title text, n int,"
                " secret text)"
            )
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO {table} VALUES (%s, %s, %s, %s, %s)",
                    [(*row, secrets[row[0]]) for row in ROWS],
                )


async def authorize(request: Request) -> ShapeScope | Response:
    scheme, _, user = request.headers.get("authorization", "").partition(" ")
    if scheme != "Bearer" or user not in USERS:
        return Response('{"message":"Unauthorized"}', status_code=401)
    return ShapeScope(where="owner = $1", params=[user], columns=VISIBLE, key=user)


def starlette_app(routes: ShapeRoutes) -> Starlette:
    return Starlette(
        routes=[
            routes.route(f"/{name}", table=table, authorize=authorize)
            for name, table in TABLES.items()
        ]
    )


class ServedApp:
    """The app (and, in process, its engine) on a loopback port, run by an event loop in a
    thread of its own, so that synchronous Hypothesis tests can send it requests."""

    def __init__(
        self, start: Callable[[contextlib.AsyncExitStack], Coroutine[Any, Any, ShapeRoutes]]
    ) -> None:
        self._start = start
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: uvicorn.Server | None = None
        self.routes: ShapeRoutes | None = None
        self.loop_errors: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._run, name="served-app", daemon=True)

    def __enter__(self) -> ServedApp:
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            self._thread.join()
            raise self._failure
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive() and self._loop is not None and self._server is not None:
            server = self._server
            self._loop.call_soon_threadsafe(setattr, server, "should_exit", True)
        self._thread.join()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the test thread
            self._failure = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(lambda _loop, context: self.loop_errors.append(context))
        async with contextlib.AsyncExitStack() as stack:
            self.routes = await self._start(stack)
            stack.push_async_callback(self.routes.aclose)
            config = uvicorn.Config(
                starlette_app(self.routes),
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                lifespan="off",
                timeout_graceful_shutdown=1,
            )
            self._server = uvicorn.Server(config)
            serving = asyncio.create_task(self._server.serve())
            while not self._server.started:
                if serving.done():
                    await serving
                    raise RuntimeError("uvicorn did not start")
                await asyncio.sleep(0.02)
            self._ready.set()
            await serving
        gc.collect()  # a task that failed unseen is reported when it is collected
        await asyncio.sleep(0)

    def call(self, work: Callable[[ShapeRoutes], T]) -> T:
        """``work(routes)`` run on the app's event loop."""
        assert self._loop is not None and self.routes is not None
        routes = self.routes

        async def run() -> T:
            return work(routes)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=30)


@pytest.fixture(params=["daemon", "in-process"])
def served(request: pytest.FixtureRequest, pg_dsn: str, tmp_path: Path) -> Iterator[ServedApp]:
    """The app, backed by a syncd daemon or by the engine embedded in the app's process."""
    create_tables(pg_dsn)
    if request.param == "daemon":
        daemon = SyncdProcess(pg_dsn, tmp_path / "storage", long_poll_timeout=LONG_POLL)
        daemon.start()

        async def start_remote(stack: contextlib.AsyncExitStack) -> ShapeRoutes:
            return ShapeRoutes(daemon.url)

        try:
            with ServedApp(start_remote) as app:
                yield app
        finally:
            daemon.stop()
        return

    async def start_embedded(stack: contextlib.AsyncExitStack) -> ShapeRoutes:
        slot = f"embedded_{conninfo_to_dict(pg_dsn)['dbname']}"
        embedded = EmbeddedSyncd(
            pg_dsn, tmp_path / "storage", slot=slot, long_poll_timeout=LONG_POLL
        )
        await stack.enter_async_context(embedded)
        return ShapeRoutes.in_process(embedded)

    with ServedApp(start_embedded) as app:
        yield app


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {user}"}


# -- observations --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    headers: httpx.Headers
    body: bytes


def send(
    client: httpx.Client,
    app: ServedApp,
    path: str,
    user: str,
    query: list[tuple[str, str]],
    body: Any = None,
) -> Answer:
    """``query`` (and ``body``, a POST's) to the route on ``path``, ``TABLE`` standing for its
    table's name."""
    table = TABLES[path.strip("/")]
    named = [(name, value.replace("TABLE", table)) for name, value in query]
    url = httpx.URL(app.url + path, params=named)
    if body is None:
        answer = client.get(url, headers=bearer(user))
    else:
        content = json.dumps(body).replace("TABLE", table)
        answer = client.post(url, headers=bearer(user), content=content)
    return Answer(answer.status_code, answer.headers, answer.content)


_HANDLE = re.compile(r'"handle":"[^"]*"|"snapshot_mark":\d+|"database_lsn":"\d+"')
_TXN = re.compile(
    r'"(xmin|xmax)":"\d+"|"xip_list":\[[^]]*\]|"(lsn|txids|global_last_seen_lsn)":[^,}]*'
)


def observation(answer: Answer, table: str) -> tuple[int, Any]:
    """What a client learns from ``answer``, without the table's name and per-shape handles."""
    text = answer.body.decode("utf-8", "replace").replace(table, "TABLE")
    text = _TXN.sub("", _HANDLE.sub("", text))
    try:
        body: Any = json.loads(text) if text else None
    except ValueError:
        body = text
    return answer.status, body


def rows_of(answer: Answer) -> list[dict[str, Any]]:
    """The row values a 200 carries (a log array or a subset's ``data``)."""
    data = json.loads(answer.body)
    messages = data["data"] if isinstance(data, dict) else data
    return [m["value"] for m in messages if "value" in m]


def check_answer(answer: Answer, user: str) -> None:
    """What must hold for every answer: no 5xx; no hidden value and no other user's row; an
    error is a JSON object; per-user responses are private."""
    assert answer.status < 500, (answer.status, answer.body)
    text = answer.body.decode("utf-8", "replace")
    for hidden in HIDDEN_VALUES:
        assert hidden not in text, (hidden, text)
    others = [row for row in ROWS if row[1] != user]
    for _id, _owner, title, _n in others:
        assert title not in text, (title, text)
    cache = answer.headers.get("cache-control", "")
    assert "private" in cache and "public" not in cache and "s-maxage" not in cache, cache
    if answer.status == 200 and answer.body:
        for row in rows_of(answer):
            assert "secret" not in row
            assert row.get("owner", user) == user
            assert int(row["id"]) in {r[0] for r in ROWS if r[1] == user}, row
    elif answer.status >= 400:
        assert isinstance(json.loads(answer.body), (dict, list)), answer.body


# -- generated requests --------------------------------------------------------------------------

COLUMN_SPELLINGS = [
    "id",
    "owner",
    "title",
    "n",
    "secret",
    '"secret"',
    "SECRET",
    "Secret",
    'U&"\\0073ecret"',
    "TABLE.secret",
    "public.TABLE.secret",
    "TABLE",
    "TABLE.*",
    "sécret",
    "ｓｅｃｒｅｔ",  # fullwidth letters
    "xmin",
    "ctid",
]
ATOMS = [
    "{c} = 'Qx7-guess'",
    "{c} LIKE 'Q%'",
    "{c} IS NULL",
    "{c} IS NOT NULL",
    "{c}::int = 1",
    "length({c}) > 9",
    "{c} > 'M'",
    "{c} = $1",
    "{c} = $2",
    "{c} IN ('a', 'b')",
    "upper({c}) = 'X'",
    "{c}::text <> ''",
    "coalesce({c}, 'x') = 'x'",
    "id > 1",
    "n BETWEEN 10 AND 45",
    "title LIKE 'a%'",
    "true",
    "1=1) OR (1=1",
    "1=1 -- ",
    "1=1 /* ",
    "'unterminated",
    '"unterminated',
    "$1",
    "$9",
    "$0",
    "$01",
    "id = $1::int",
    "1=1; SELECT 1",
    "owner = 'bob' OR true",
    "(SELECT true)",
    "id IN (SELECT id FROM TABLE)",
    "EXISTS (SELECT 1)",
    "U&'\\0041' = 'A'",
    "E'\\x41' = 'A'",
    "$$x$$ = 'x'",
]
SPACING = st.sampled_from([" ", "\n", "\t", "/**/", " -- x\n", "\u00a0"])


CLEAN_ATOMS = ATOMS[ATOMS.index("id > 1") : ATOMS.index("true") + 1]
COLUMN_CHOICES = [*VISIBLE, *VISIBLE, *VISIBLE, *COLUMN_SPELLINGS]
"""Visible columns are drawn more often, so that many requests are answered (and compared)."""


@st.composite
def where_clauses(draw: st.DrawFn) -> str:
    clean = draw(st.integers(0, 2)) > 0  # two in three: a clause that may well be answered
    atoms = [
        draw(st.sampled_from(CLEAN_ATOMS if clean else ATOMS)).replace(
            "{c}", draw(st.sampled_from(COLUMN_CHOICES))
        )
        for _ in range(draw(st.integers(1, 3)))
    ]
    joined = draw(SPACING).join(
        f"{atom}{draw(SPACING)}{draw(st.sampled_from(['AND', 'OR', 'AND NOT']))}"
        for atom in atoms[:-1]
    )
    text = (joined + draw(SPACING) if joined else "") + atoms[-1]
    if not clean and draw(st.booleans()):
        text = draw(st.sampled_from(["(", ")", "((", "'", '"', "/*"])) + text
    return text


def order_bys() -> st.SearchStrategy[str]:
    one = st.builds(
        lambda c, d: c + d,
        st.sampled_from(COLUMN_SPELLINGS),
        st.sampled_from(["", " DESC", " ASC NULLS FIRST", "::text", " USING <"]),
    )
    return st.lists(one, min_size=1, max_size=2).map(", ".join) | st.sampled_from(
        ["lower(secret)", "1", "$1", "(secret)", "id; DROP TABLE x", "id LIMIT 1"]
    )


PARAM_NAMES = [
    *["params[1]"] * 6,
    "params[2]",
    "params[01]",
    "params[ 1]",
    "params[+1]",
    "params[]",
]
PARAM_VALUES = ["alice", "bob", "1", "true", "Qx7-guess", "') OR ('1'='1", "x' OR 'a'='a"]
OFFSETS = [*["-1"] * 8, "now", "0_0", "0_inf", "-1_0", "x"]


@st.composite
def queries(draw: st.DrawFn) -> tuple[list[tuple[str, str]], Any]:
    """A client's query (and POST body, or ``None``): shape, subset, columns, params, repeats."""
    query: list[tuple[str, str]] = [("offset", draw(st.sampled_from(OFFSETS)))]
    if query[0][1] not in ("-1", "-1_0", "now"):
        query.append(("handle", draw(st.sampled_from(["nope", "1-2"]))))
    if draw(st.booleans()):
        query.append(("where", draw(where_clauses())))
    for _ in range(draw(st.integers(0, 1))):
        query.append((draw(st.sampled_from(PARAM_NAMES)), draw(st.sampled_from(PARAM_VALUES))))
    if draw(st.integers(0, 3)) == 0:
        columns = draw(st.lists(st.sampled_from(COLUMN_CHOICES), min_size=1, max_size=3))
        query.append(("columns", ",".join(["id", *columns])))
    body: Any = None
    subset_kind = draw(st.sampled_from(["none", "none", "get", "nested", "post"]))
    if subset_kind != "none":
        subset: dict[str, Any] = {}
        if draw(st.booleans()):
            subset["where"] = draw(where_clauses())
        if draw(st.booleans()):
            subset["order_by"] = draw(order_bys())
            if draw(st.booleans()):
                subset["limit"] = draw(st.sampled_from([1, 2, "1", "0"]))
        if draw(st.booleans()):
            subset["params"] = {draw(st.sampled_from(["1", "2", "01"])): "Qx7-guess"}
        if subset_kind == "post":
            body = subset
        else:
            for key, value in subset.items():
                name = f"subset__{key}" if subset_kind == "get" else f"subset[{key}]"
                text = json.dumps(value) if key == "params" else str(value)
                query.append((name, text))
    if draw(st.integers(0, 6)) == 0:  # a repeated parameter, or a stray one
        name = draw(
            st.sampled_from(["where", "columns", "offset", "table", "live", "log", "replica"])
        )
        query.append((name, draw(st.sampled_from(["true", "false", "id > 0", "full", "x"]))))
    order = draw(st.permutations(range(len(query))))
    return [query[i] for i in order], body


ADVERSARY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@ADVERSARY
@given(request=queries(), user=st.sampled_from(USERS))
def test_no_request_widens_the_scope(
    served: ServedApp, request: tuple[list[tuple[str, str]], Any], user: str
) -> None:
    query, body = request
    with httpx.Client(timeout=60) as client:
        answers = {
            name: send(client, served, f"/{name}", user, query, body)
            for name, table in TABLES.items()
        }
    for answer in answers.values():
        check_answer(answer, user)
    event(f"status {answers['a'].status}")
    seen = {name: observation(answers[name], table) for name, table in TABLES.items()}
    assert seen["a"] == seen["b"], (query, body, seen)


# -- the cases the issue names -------------------------------------------------------------------


HIDDEN_REFERENCES: list[tuple[list[tuple[str, str]], Any, str, str]] = [
    ([("where", "secret = 'Qx7-aardvark'")], None, "where", "secret"),
    ([("where", "secret LIKE 'Q%'")], None, "where", "secret"),
    ([("where", "secret::int = 1")], None, "where", "secret"),
    ([("where", "SECRET IS NULL")], None, "where", "SECRET"),
    ([("where", 'U&"\\0073ecret" IS NULL')], None, "where", 'U&"\\0073ecret"'),
    ([("where", "TABLE.secret IS NULL")], None, "where", "TABLE.secret"),
    ([("subset__where", "secret > 'M'")], None, "subset.where", "secret"),
    (
        [("subset[where]", '"secret" > $1'), ("subset[params]", '{"1":"M"}')],
        None,
        "subset.where",
        '"secret"',
    ),
    ([("subset__order_by", "secret")], None, "subset.order_by", "secret"),
    ([("subset__order_by", "id, secret DESC NULLS LAST")], None, "subset.order_by", "secret"),
    ([], {"where": "secret IS NULL"}, "subset.where", "secret"),
    ([], {"subset": {"order_by": "secret"}}, "subset.order_by", "secret"),
]
"""Requests naming ``secret`` (query, POST body, error field, the name as written)."""


def test_a_hidden_column_is_refused_wherever_it_is_named(served: ServedApp) -> None:
    with httpx.Client(timeout=60) as client:
        for query, body, field, written in HIDDEN_REFERENCES:
            answer = send(client, served, "/a", "alice", [("offset", "-1"), *query], body)
            assert answer.status == 400, (query, body, answer.body)
            errors = json.loads(answer.body)["errors"]
            for part in field.split("."):
                errors = errors[part]
            expected = written.replace("TABLE", "items_a")
            assert errors == [f"The following columns are not allowed: {expected}"]
            check_answer(answer, "alice")


def test_errors_from_evaluating_rows_carry_no_other_users_data(served: ServedApp) -> None:
    """A clause that fails on the table's values: the error reaches the caller, but never a
    hidden value or a row of another user."""
    with httpx.Client(timeout=60) as client:
        for query in (
            [("where", "title::int = 1")],
            [("where", "n / (n - 30) > 0")],
            [("subset__where", "title::int = 1")],
            [("subset__where", "title::date IS NULL"), ("subset__order_by", "title")],
        ):
            answer = send(client, served, "/a", "alice", [("offset", "-1"), *query])
            check_answer(answer, "alice")


def test_a_bare_parameter_as_the_whole_subset_where_is_substituted(served: ServedApp) -> None:
    with httpx.Client(timeout=60) as client:
        query = [("offset", "-1"), ("subset__where", "$1"), ("subset__params", '{"1":"true"}')]
        answer = send(client, served, "/a", "alice", query)
        assert answer.status == 200, answer.body
        assert sorted(int(r["id"]) for r in rows_of(answer)) == [1, 2, 6]
        query = [("offset", "-1"), ("where", "$1"), ("params[1]", "false")]
        answer = send(client, served, "/a", "alice", query)
        assert answer.status == 200, answer.body
        assert rows_of(answer) == []


REFUSED_SPELLINGS = [
    [("where", "id = $1"), ("params[01]", "1")],
    [("where", "id = $1"), ("params[1]", "1"), ("params[1]", "2")],
    [("where", "id = $1"), ("params[ 1]", "1")],
    [("where", "id > 0"), ("where", "true")],
    [("columns", "id"), ("columns", "id,title")],
    [("subset__where", "id > 1"), ("subset[where]", "true")],
    [("log", "full"), ("log", "changes_only")],
]


def test_repeated_or_oddly_spelled_parameters_are_refused(served: ServedApp) -> None:
    with httpx.Client(timeout=60) as client:
        for query in REFUSED_SPELLINGS:
            answer = send(client, served, "/a", "alice", [("offset", "-1"), *query])
            assert answer.status == 400, (query, answer.body)
            assert json.loads(answer.body)["message"] == "Invalid request"


def catch_up(client: httpx.Client, app: ServedApp, user: str) -> tuple[str, str]:
    """Handle and offset of ``user``'s shape on ``/a`` once up to date."""
    answer = send(client, app, "/a", user, [("offset", "-1")])
    while "electric-up-to-date" not in answer.headers:
        assert answer.status == 200, answer.body
        position = [("handle", answer.headers["electric-handle"])]
        position.append(("offset", answer.headers["electric-offset"]))
        answer = send(client, app, "/a", user, position)
    return answer.headers["electric-handle"], answer.headers["electric-offset"]


LIVE_SPELLINGS = [
    [("live", "true")],
    [("live", "1")],
    [("live", "")],
    [("live", "True")],
    [("live", "true"), ("live_sse", "true")],
    [("live", "true"), ("experimental_live_sse", "true")],
    [("live", "true"), ("live_sse", "true"), ("experimental_live_sse", "true")],
    [("live", "true"), ("live_sse", "false"), ("experimental_live_sse", "true")],
    [("live", "true"), ("live_sse", "true"), ("live", "false")],
    [("live", "false"), ("live_sse", "true"), ("live", "true")],
    [("live", "true"), ("live_sse", "yes"), ("cursor", "1"), ("cursor", "2")],
]


def test_cut_off_ends_every_live_request_however_it_is_spelled(served: ServedApp) -> None:
    """A live request is either refused or tracked, and cutting its key off ends it at once
    (the upstream would hold it for half a minute)."""
    with httpx.Client(timeout=120) as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        handle, offset = catch_up(client, served, "alice")
        for spelling in LIVE_SPELLINGS:
            query = [("handle", handle), ("offset", offset), *spelling]
            pending = pool.submit(send, client, served, "/a", "alice", query)
            while not pending.done() and served.call(lambda r: r.live_requests("alice")) == 0:
                with contextlib.suppress(concurrent.futures.TimeoutError):
                    pending.result(timeout=0.02)
            if pending.done():
                answer = pending.result()
                assert answer.status == 400, (spelling, answer.status, answer.body)
                continue
            assert served.call(lambda r: r.cut_off("alice")) == 1
            answer = pending.result(timeout=LONG_POLL / 2)
            assert answer.status in (200, 409), spelling
            assert answer.status == 409 or answer.body == b"", spelling  # SSE: ends, no event


# -- caching -------------------------------------------------------------------------------------


def test_per_user_answers_are_private_and_vary_on_credentials(
    served: ServedApp, pg_dsn: str, tmp_path: Path
) -> None:
    with httpx.Client(timeout=60) as client:
        first = send(client, served, "/a", "alice", [("offset", "-1")])
        handle, offset = catch_up(client, served, "alice")
        later = send(client, served, "/a", "alice", [("handle", handle), ("offset", "0_0")])
    for answer in (first, later):
        assert answer.status == 200
        cache = answer.headers["cache-control"]
        assert cache.startswith("private, max-age="), cache
        assert "public" not in cache and "s-maxage" not in cache
        assert answer.headers["vary"] == "authorization, cookie"
    assert "max-age=604800" in first.headers["cache-control"]  # the protocol's lifetime, kept


def test_an_etag_revalidates_only_for_the_scope_it_was_given_to(served: ServedApp) -> None:
    with httpx.Client(timeout=60) as client:
        first = send(client, served, "/a", "alice", [("offset", "-1")])
        etag = first.headers["etag"]
        url = httpx.URL(served.url + "/a", params={"offset": "-1"})
        again = client.get(url, headers={**bearer("alice"), "if-none-match": etag})
        assert again.status_code == 304
        assert again.headers["etag"] == etag
        other = client.get(url, headers={**bearer("bob"), "if-none-match": etag})
        assert other.status_code == 200
        assert {r["owner"] for r in rows_of(Answer(200, other.headers, other.content))} == {"bob"}
        upstream_form = etag.rsplit("~", 1)[0] + '"'
        forged = client.get(url, headers={**bearer("bob"), "if-none-match": upstream_form})
        assert forged.status_code == 200


# -- CORS ----------------------------------------------------------------------------------------


def test_cors_allows_only_the_origins_the_app_names(served: ServedApp) -> None:
    asked = {
        "origin": "https://evil.example",
        "access-control-request-method": "GET",
        "access-control-request-headers": "x-evil, authorization",
    }
    with httpx.Client(timeout=60) as client:
        preflight = client.options(served.url + "/a", headers=asked)
        assert preflight.status_code == 204
        assert "access-control-allow-origin" not in preflight.headers
        assert "access-control-allow-headers" not in preflight.headers
        answer = client.get(
            served.url + "/a",
            params={"offset": "-1"},
            headers={**bearer("alice"), "origin": "https://evil.example"},
        )
        assert answer.status_code == 200
        assert not [h for h in answer.headers if h.startswith("access-control-")]


async def test_cors_preflight_of_an_allowed_origin() -> None:
    routes = ShapeRoutes(
        "http://127.0.0.1:9", allowed_origins=["https://app.example"], allow_credentials=True
    )
    asked = {
        "origin": "https://app.example",
        "access-control-request-method": "GET",
        "access-control-request-headers": "x-evil",
    }
    transport = httpx.ASGITransport(starlette_app(routes))
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        preflight = await client.options("/a", headers=asked)
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert preflight.headers["access-control-allow-headers"] == "authorization, content-type"
        assert preflight.headers["access-control-allow-credentials"] == "true"
        refused = await client.get(
            "/a",
            params={"offset": "-1", "columns": "secret"},
            headers={**bearer("alice"), "origin": "https://app.example"},
        )
        assert refused.status_code == 400
        assert refused.headers["access-control-allow-origin"] == "https://app.example"
        assert "origin" in refused.headers["vary"]
    await routes.aclose()


# -- the daemon ----------------------------------------------------------------------------------


def test_the_daemon_refuses_repeated_parameters_and_compares_its_secret(
    pg_dsn: str, tmp_path: Path
) -> None:
    create_tables(pg_dsn)
    daemon = SyncdProcess(pg_dsn, tmp_path / "storage", secret="s3cret")
    daemon.start()
    try:
        with httpx.Client(timeout=60) as client:
            base = [("table", "items_a"), ("offset", "-1"), ("secret", "s3cret")]

            def get(query: list[tuple[str, str]]) -> httpx.Response:
                return client.get(httpx.URL(daemon.shape_url, params=query))

            assert get(base).status_code == 200
            assert get([*base[:2], ("secret", "s3creT")]).status_code == 401
            for repeated in REFUSED_SPELLINGS:
                answer = get([*base, *repeated])
                assert answer.status_code == 400, (repeated, answer.text)
            answer = get([*base, ("subset__where", "$1"), ("subset__params", '{"1":"true"}')])
            assert answer.status_code == 200, answer.text
            assert len(answer.json()["data"]) == len(ROWS)
            assert get(base).headers["cache-control"].startswith("public, max-age=604800")
    finally:
        daemon.stop()


# -- shutdown ------------------------------------------------------------------------------------


class _ClosingUpstream(httpx.AsyncByteStream):
    """An upstream body that breaks off (as a connection closed by a stopping server does)
    once ``closed`` is set."""

    def __init__(self, closed: asyncio.Event) -> None:
        self.closed = closed

    async def __aiter__(self) -> AsyncIterator[bytes]:
        await self.closed.wait()
        raise httpx.ReadError("upstream closed")
        yield b""  # pragma: no cover - makes this an async generator


async def _idle_receive() -> Any:
    await asyncio.Event().wait()


def _unretrieved(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    gc.collect()
    return [e for e in errors if "never retrieved" in str(e.get("message"))]


async def test_a_request_cut_short_while_the_upstream_fails_leaves_no_unretrieved_error() -> None:
    """Shutdown cancels a route's request at the moment its upstream request fails (the
    upstream is stopping too): the failure is nobody's news and is not logged as an unretrieved
    task exception. Both while waiting for the answer and while relaying the body."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        closed = asyncio.Event()

        async def sending() -> route_relay.UpstreamAnswer:
            await closed.wait()
            raise route_relay.UpstreamUnavailable("upstream closed")

        request = Request({"type": "http", "method": "GET", "headers": []}, _idle_receive)
        waiting = asyncio.ensure_future(
            route_relay.first_response(sending(), asyncio.Event(), request)
        )
        await asyncio.sleep(0.01)
        closed.set()
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        await asyncio.sleep(0.01)
        assert not _unretrieved(errors)

        closed = asyncio.Event()
        breaking = httpx.MockTransport(
            lambda _r: httpx.Response(200, stream=_ClosingUpstream(closed))
        )
        upstream = route_relay.HttpxUpstream(httpx.AsyncClient(transport=breaking))
        answer = await upstream.send("http://syncd/v1/shape", "offset=-1", {}, head=False)
        relay = route_relay.relay(answer, asyncio.Event(), lambda: None)
        reading = asyncio.ensure_future(anext(relay))
        await asyncio.sleep(0.01)
        closed.set()
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        await asyncio.sleep(0.01)
        assert not _unretrieved(errors)
        await upstream.aclose()
    finally:
        loop.set_exception_handler(None)


async def test_an_unreachable_upstream_is_a_503_the_clients_retry() -> None:
    """Nothing listens on the upstream's port: every route answers 503 with ``Retry-After``
    and a JSON message, privately and never cached; live requests leave no tracked entry."""
    routes = ShapeRoutes(f"http://127.0.0.1:{free_port()}")
    transport = httpx.ASGITransport(starlette_app(routes))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            for params in ({"offset": "-1"}, {"offset": "0_0", "handle": "h", "live": "true"}):
                answer = await client.get("/a", params=params, headers=bearer("alice"))
                assert answer.status_code == 503, answer.text
                assert answer.headers["retry-after"] == "1"
                assert answer.json()["message"] == "Sync is unavailable"
                assert "private" in answer.headers["cache-control"]
                assert "no-store" in answer.headers["cache-control"]
        assert routes.live_requests("alice") == 0
    finally:
        await routes.aclose()
