"""Electric's HTTP shape protocol, as a client sees it, against a live syncd.

One daemon (``chunk_bytes=1024``, ``long_poll_timeout=2``) and one database serve the module;
each test works on its own table. Every 200 goes through :func:`check_log_response`, which
holds the framing rules (``up-to-date`` last exactly when ``electric-up-to-date`` is sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from shapes.messages import relation_key_prefix
from syncd.pgprovider import PostgresServer, drop_database
from tests.syncd_process import SyncdProcess

CHUNK_BYTES = 1024
LONG_POLL = 2.0
CACHE_INITIAL = "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746"
CACHE_LIVE = "public, max-age=5, stale-while-revalidate=5"

Message = dict[str, Any]
_tables = itertools.count()


@pytest.fixture(scope="module")
def module_dsn(pg_server: PostgresServer) -> Iterator[str]:
    """Like ``pg_dsn``, but one database for the whole module (the daemon is shared)."""
    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield make_conninfo(pg_server.dsn, dbname=name)
    drop_database(pg_server.dsn, name)


@pytest.fixture(scope="module")
def syncd(module_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncdProcess]:
    base: Path = tmp_path_factory.mktemp("protocol")
    daemon = SyncdProcess(
        module_dsn,
        base / "storage",
        chunk_bytes=CHUNK_BYTES,
        long_poll_timeout=LONG_POLL,
        slot="syncd_protocol",  # slot names are cluster-wide
    )
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=15.0) as http:
        yield http


@pytest.fixture
def db(module_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        yield conn


def make_table(db: psycopg.Connection[Any], rows: int = 3, *, pad: int = 0) -> str:
    """A new ``(id int PK, title text NOT NULL, n int)`` table with ``rows`` rows."""
    name = f"items_{next(_tables)}"
    ident = sql.Identifier(name)
    db.execute(
        sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, title text NOT NULL, n int)").format(ident)
    )
    db.execute(
        sql.SQL(
            "INSERT INTO {} SELECT g, 'title ' || g || repeat('.', %s), g"
            " FROM generate_series(1, %s) g"
        ).format(ident),
        (pad, rows),
    )
    return name


def key(table: str, *pk: object) -> str:
    return relation_key_prefix("public", table) + "".join(f'/"{part}"' for part in pk)


def is_up_to_date(message: Message) -> bool:
    return bool(message["headers"].get("control") == "up-to-date")


def changes(body: list[Message]) -> list[Message]:
    return [message for message in body if "key" in message]


def check_log_response(answer: httpx.Response) -> list[Message]:
    """Framing rules every 200 log response follows; returns the messages."""
    assert answer.status_code == 200, (answer.status_code, answer.text)
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.headers["electric-handle"]
    assert answer.headers["electric-offset"]
    body = json.loads(answer.content)
    assert isinstance(body, list)
    for message in body:
        assert isinstance(message["headers"], dict)
    marked = "electric-up-to-date" in answer.headers
    assert [is_up_to_date(m) for m in body].count(True) == (1 if marked else 0), body
    if marked:
        assert is_up_to_date(body[-1]), body
        lsn = body[-1]["headers"]["global_last_seen_lsn"]
        assert isinstance(lsn, str) and lsn.isdigit()
        assert answer.headers["electric-up-to-date"] == ""
    return body


class Reader:
    """Follows one shape like a client does."""

    def __init__(self, syncd: SyncdProcess, client: httpx.Client, **params: str) -> None:
        self.url = syncd.shape_url
        self.client = client
        self.params = params
        self.handle: str | None = None
        self.offset = "-1"
        self.cursor = ""

    def request(self, **extra: str) -> httpx.Response:
        query = dict(self.params, offset=self.offset, **extra)
        if self.handle is not None:
            query["handle"] = self.handle
        return self.client.get(self.url, params=query)

    def step(self, *, live: bool = False) -> tuple[httpx.Response, list[Message]]:
        extra = {"live": "true", "cursor": self.cursor} if live else {}
        answer = self.request(**extra)
        body = check_log_response(answer)
        if self.handle is not None:
            assert answer.headers["electric-handle"] == self.handle
        self.handle = answer.headers["electric-handle"]
        self.offset = answer.headers["electric-offset"]
        if live:
            self.cursor = answer.headers["electric-cursor"]
        return answer, body

    def catch_up(self) -> list[Message]:
        """Non-live requests until up to date; returns every message read."""
        seen: list[Message] = []
        for _ in range(1000):
            answer, body = self.step()
            seen.extend(body)
            if "electric-up-to-date" in answer.headers:
                return seen
        raise AssertionError("never up to date")

    def wait_for_changes(self, timeout: float = 15.0) -> list[Message]:
        """Live requests until some change arrives, then catch up; returns the messages."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer, body = self.step(live=True)
            if changes(body):
                if "electric-up-to-date" not in answer.headers:
                    body = body + self.catch_up()
                return body
        raise AssertionError("no change arrived")


def split_offset(text: str) -> tuple[int, float]:
    tx, op = text.split("_")
    return int(tx), float("inf") if op == "inf" else int(op)


# -- the initial request -----------------------------------------------------------------------


def test_initial_request(syncd: SyncdProcess, client: httpx.Client, db: Any) -> None:
    table = make_table(db, rows=3)
    answer = client.get(syncd.shape_url, params={"table": table, "offset": "-1"})
    body = check_log_response(answer)
    handle = answer.headers["electric-handle"]
    assert answer.headers["electric-offset"] == "0_0"
    assert "electric-up-to-date" not in answer.headers
    assert answer.headers["cache-control"] == CACHE_INITIAL
    assert answer.headers["etag"] == f'"{handle}:-1:0_0"'
    assert answer.headers["electric-has-data"] == "true"
    assert "electric-cursor" not in answer.headers
    assert json.loads(answer.headers["electric-schema"]) == {
        "id": {"type": "int4", "pk_index": 0, "not_null": True},
        "n": {"type": "int4"},
        "title": {"type": "text", "not_null": True},
    }
    rows = changes(body)
    assert [row["key"] for row in rows] == [key(table, i) for i in (1, 2, 3)]
    assert rows[0]["value"] == {"id": "1", "title": "title 1", "n": "1"}
    for row in rows:
        assert row["headers"] == {"operation": "insert", "relation": ["public", table]}
    end = body[-1]["headers"]
    assert end["control"] == "snapshot-end"
    assert all(isinstance(end[k], str) and end[k].isdigit() for k in ("xmin", "xmax"))
    assert isinstance(end["xip_list"], list)
    # the next request reaches the end of the (empty) log
    answer = client.get(syncd.shape_url, params={"table": table, "offset": "0_0", "handle": handle})
    body = check_log_response(answer)
    assert answer.headers["electric-offset"] == "0_inf"
    assert body == [body[-1]] and is_up_to_date(body[-1])
    assert "electric-schema" in answer.headers


def test_schema_of_a_composite_key_and_selected_columns(
    syncd: SyncdProcess, client: httpx.Client, db: Any
) -> None:
    name = f"composite_{next(_tables)}"
    db.execute(
        sql.SQL(
            "CREATE TABLE {} (a int, b text, c varchar(10) NOT NULL, d int[], PRIMARY KEY (b, a))"
        ).format(sql.Identifier(name))
    )
    db.execute(
        sql.SQL("INSERT INTO {} VALUES (1, 'x/y', 'c', '{{1,2}}')").format(sql.Identifier(name))
    )
    answer = client.get(syncd.shape_url, params={"table": name, "offset": "-1"})
    body = check_log_response(answer)
    schema = json.loads(answer.headers["electric-schema"])
    assert schema == {
        "a": {"type": "int4", "pk_index": 1, "not_null": True},
        "b": {"type": "text", "pk_index": 0, "not_null": True},
        "c": {"type": "varchar", "not_null": True, "max_length": 10},
        "d": {"type": "int4", "dims": 1},
    }
    assert changes(body)[0]["key"] == relation_key_prefix("public", name) + '/"x//y"/"1"'
    answer = client.get(syncd.shape_url, params={"table": name, "offset": "-1", "columns": "a,b"})
    check_log_response(answer)
    assert set(json.loads(answer.headers["electric-schema"])) == {"a", "b"}


# -- chunking ----------------------------------------------------------------------------------


def test_snapshot_comes_in_chunks(syncd: SyncdProcess, client: httpx.Client, db: Any) -> None:
    table = make_table(db, rows=200, pad=40)
    reader = Reader(syncd, client, table=table)
    offsets: list[str] = []
    keys: list[str] = []
    ends = 0
    while True:
        before = reader.offset
        answer, body = reader.step()
        offsets.append(reader.offset)
        keys.extend(row["key"] for row in changes(body))
        ends += sum(1 for m in body if m["headers"].get("control") == "snapshot-end")
        if "electric-up-to-date" in answer.headers:
            break
        assert reader.offset != before
        assert before == "-1" or split_offset(reader.offset) > split_offset(before)
        size = len(answer.content)
        if any(m["headers"].get("control") == "snapshot-end" for m in body):
            assert size < 2 * CHUNK_BYTES
        else:
            assert CHUNK_BYTES <= size < 2 * CHUNK_BYTES, size
        assert len(offsets) < 500
    count = len(offsets) - 1
    assert count >= 5, offsets
    assert offsets == [f"0_{k}" for k in range(count)] + ["0_inf"]
    assert keys == [key(table, i) for i in range(1, 201)]
    assert ends == 1


def test_a_big_transaction_comes_in_log_chunks(
    syncd: SyncdProcess, client: httpx.Client, db: Any
) -> None:
    table = make_table(db, rows=0)
    reader = Reader(syncd, client, table=table)
    reader.catch_up()
    assert reader.offset == "0_inf"
    with db.transaction():
        xid8 = db.execute("SELECT pg_current_xact_id()::text").fetchone()[0]
        db.execute(
            sql.SQL(
                "INSERT INTO {} SELECT g, repeat('x', 50), g FROM generate_series(1, 100) g"
            ).format(sql.Identifier(table))
        )
    offsets = [reader.offset]
    answer, body = reader.step(live=True)
    responses = [(answer, body)]
    while "electric-up-to-date" not in answer.headers:
        answer, body = reader.step()
        responses.append((answer, body))
    assert len(responses) >= 5
    inserted: list[Message] = []
    for answer, body in responses:
        offsets.append(answer.headers["electric-offset"])
        assert split_offset(offsets[-1]) > split_offset(offsets[-2])
        rows = changes(body)
        assert rows
        assert answer.headers["electric-offset"] == f"{rows[-1]['headers']['lsn']}_" + str(
            rows[-1]["headers"]["op_position"]
        )
        if "electric-up-to-date" not in answer.headers:
            assert CHUNK_BYTES <= len(answer.content) < 2 * CHUNK_BYTES
        inserted.extend(rows)
    assert [row["key"] for row in inserted] == [key(table, i) for i in range(1, 101)]
    lsns = {row["headers"]["lsn"] for row in inserted}
    assert len(lsns) == 1
    assert [row["headers"]["op_position"] for row in inserted] == list(range(0, 200, 2))
    assert all(row["headers"]["txids"] == [int(xid8) % 2**32] for row in inserted)
    assert [row["headers"].get("last", False) for row in inserted] == [False] * 99 + [True]


# -- change messages ---------------------------------------------------------------------------


def test_change_message_headers(syncd: SyncdProcess, client: httpx.Client, db: Any) -> None:
    table = make_table(db, rows=0)
    reader = Reader(syncd, client, table=table, where="n < 100")
    reader.catch_up()
    ident = sql.Identifier(table)
    with db.transaction():
        xid8 = db.execute("SELECT pg_current_xact_id()::text").fetchone()[0]
        db.execute(sql.SQL("INSERT INTO {} VALUES (1, 'a', 1), (2, 'b', 2)").format(ident))
        db.execute(sql.SQL("INSERT INTO {} VALUES (3, 'c', 500)").format(ident))
    lsn_after = db.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()[0]
    body = reader.wait_for_changes()
    rows = changes(body)
    assert [row["key"] for row in rows] == [key(table, 1), key(table, 2)]
    for position, row in enumerate(rows):
        headers = row["headers"]
        assert headers["operation"] == "insert"
        assert headers["relation"] == ["public", table]
        assert isinstance(headers["lsn"], str) and headers["lsn"].isdigit()
        assert 0 < int(headers["lsn"]) <= int(lsn_after)
        assert headers["op_position"] == 2 * position
        assert headers["txids"] == [int(xid8) % 2**32]
        assert all(type(txid) is int for txid in headers["txids"])
    assert "last" not in rows[0]["headers"]
    assert rows[1]["headers"]["last"] is True
    assert reader.offset == f"{rows[1]['headers']['lsn']}_2"
    assert body[-1]["headers"]["global_last_seen_lsn"] == rows[1]["headers"]["lsn"]


def test_key_changing_update(syncd: SyncdProcess, client: httpx.Client, db: Any) -> None:
    table = make_table(db, rows=2)
    reader = Reader(syncd, client, table=table)
    reader.catch_up()
    db.execute(sql.SQL("UPDATE {} SET id = 100 WHERE id = 1").format(sql.Identifier(table)))
    rows = changes(reader.wait_for_changes())
    assert [row["headers"]["operation"] for row in rows] == ["delete", "insert"]
    delete, insert = rows
    assert delete["key"] == key(table, 1)
    assert delete["headers"]["key_change_to"] == key(table, 100)
    assert delete["value"] == {"id": "1"}
    assert insert["key"] == key(table, 100)
    assert insert["headers"]["key_change_from"] == key(table, 1)
    assert insert["value"] == {"id": "100", "title": "title 1", "n": "1"}
    assert insert["headers"]["op_position"] == delete["headers"]["op_position"] + 1
    assert insert["headers"]["lsn"] == delete["headers"]["lsn"]
    assert "last" not in delete["headers"] and insert["headers"]["last"] is True


@pytest.mark.parametrize("replica", ["default", "full"])
def test_update_and_delete_contents(
    syncd: SyncdProcess, client: httpx.Client, db: Any, replica: str
) -> None:
    table = make_table(db, rows=2)
    reader = Reader(syncd, client, table=table, replica=replica)
    reader.catch_up()
    ident = sql.Identifier(table)
    db.execute(sql.SQL("UPDATE {} SET title = 'new' WHERE id = 2").format(ident))
    (update,) = changes(reader.wait_for_changes())
    db.execute(sql.SQL("DELETE FROM {} WHERE id = 1").format(ident))
    (delete,) = changes(reader.wait_for_changes())
    assert update["headers"]["operation"] == "update"
    assert delete["headers"]["operation"] == "delete"
    if replica == "full":
        assert update["value"] == {"id": "2", "title": "new", "n": "2"}
        assert update["old_value"] == {"title": "title 2"}
        assert delete["value"] == {"id": "1", "title": "title 1", "n": "1"}
    else:
        assert update["value"] == {"id": "2", "title": "new"}
        assert "old_value" not in update
        assert delete["value"] == {"id": "1"}


# -- shape identity ----------------------------------------------------------------------------


def test_equal_definitions_share_one_handle(
    syncd: SyncdProcess, client: httpx.Client, db: Any
) -> None:
    table = make_table(db)

    def handle(**params: str) -> str:
        answer = client.get(syncd.shape_url, params={"offset": "-1", **params})
        check_log_response(answer)
        return answer.headers["electric-handle"]

    plain = handle(table=table)
    assert handle(table=f"public.{table}") == plain
    assert handle(table=f'"public"."{table}"') == plain
    assert handle(table=table.upper()) == plain
    assert handle(table=table, **{"cache-buster": "x", "expired_handle": "y", "custom": "z"}) == (
        plain
    )
    assert handle(table=table, log="full", replica="default") == plain
    some = handle(table=table, columns="id,title")
    assert handle(table=table, columns='"title","id"') == some
    assert handle(table=f"public.{table}", columns="TITLE,ID") == some
    assert handle(table=table, columns="id,title,id") == some
    assert some != plain
    filtered = handle(table=table, where="n > 1")
    assert filtered not in (plain, some)
    assert handle(table=f"public.{table}", where="n > 1") == filtered
    assert handle(table=table, replica="full") not in (plain, some, filtered)
    assert handle(table=table, log="changes_only") not in (plain, some, filtered)


def test_handle_is_ignored_when_offset_is_minus_one_or_now(
    syncd: SyncdProcess, client: httpx.Client, db: Any
) -> None:
    table = make_table(db)
    answer = client.get(syncd.shape_url, params={"table": table, "offset": "-1"})
    real = answer.headers["electric-handle"]
    for offset in ("-1", "now"):
        answer = client.get(
            syncd.shape_url, params={"table": table, "offset": offset, "handle": "garbage"}
        )
        check_log_response(answer)
        assert answer.headers["electric-handle"] == real


# -- live --------------------------------------------------------------------------------------


def test_live_long_poll_without_changes(syncd: SyncdProcess, client: httpx.Client, db: Any) -> None:
    table = make_table(db)
    reader = Reader(syncd, client, table=table)
    reader.catch_up()
    assert reader.handle is not None

    def poll(cursor: str) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        answer = reader.request(live="true", cursor=cursor)
        return answer, time.monotonic() - started

    cursors = ["", "0", "garbage", "99999999999"]
    with ThreadPoolExecutor(len(cursors)) as pool:
        results = list(pool.map(poll, cursors))
    for cursor, (answer, waited) in zip(cursors, results, strict=True):
        body = check_log_response(answer)
        assert waited >= LONG_POLL - 0.2, waited  # held until the timeout, not answered early
        assert len(body) == 1 and is_up_to_date(body[0])
        assert answer.headers["electric-has-data"] == "false"
        assert answer.headers["electric-offset"] == "0_inf"
        assert answer.headers["electric-handle"] == reader.handle
        assert answer.headers["cache-control"] == CACHE_LIVE
        assert "electric-schema" not in answer.headers
        sent = int(cursor) if cursor.isdigit() else 0
        assert int(answer.headers["electric-cursor"]) > sent
    etags = {answer.headers["etag"] for answer, _ in results}
    assert len(etags) == len(cursors)


def test_live_long_poll_returns_when_a_change_commits(
    syncd: SyncdProcess, client: httpx.Client, db: Any
) -> None:
    table = make_table(db)
    reader = Reader(syncd, client, table=table)
    reader.catch_up()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(reader.request, live="true", cursor="")
        time.sleep(0.3)  # usually held by then; arriving after the commit is answered alike
        db.execute(sql.SQL("INSERT INTO {} VALUES (50, 'live', 5)").format(sql.Identifier(table)))
        answer = pending.result()
    # the change itself in the answer shows it was the commit, not the timeout, that ended it
    body = check_log_response(answer)
    assert [row["key"] for row in changes(body)] == [key(table, 50)]
    assert "electric-up-to-date" in answer.headers
    assert answer.headers["electric-has-data"] == "true"
    assert answer.headers["cache-control"] == CACHE_LIVE
    assert int(answer.headers["electric-cursor"]) > 0
    assert "electric-schema" not in answer.headers
    lsn = changes(body)[0]["headers"]["lsn"]
    assert answer.headers["electric-offset"] == f"{lsn}_0"
    assert body[-1]["headers"]["global_last_seen_lsn"] == lsn


def test_live_request_behind_the_tail_answers_at_once(
    syncd: SyncdProcess, client: httpx.Client, db: Any
) -> None:
    table = make_table(db)
    reader = Reader(syncd, client, table=table)
    reader.catch_up()
    tail = reader.offset
    db.execute(sql.SQL("INSERT INTO {} VALUES (60, 'x', 6)").format(sql.Identifier(table)))
    reader.wait_for_changes()
    reader.offset = tail
    started = time.monotonic()
    answer, body = reader.step(live=True)
    assert time.monotonic() - started < LONG_POLL  # not held until the timeout
    assert [row["key"] for row in changes(body)] == [key(table, 60)]


class _StreamTap:
    """Reads a streaming response in a task, so that waits with a timeout cancel nothing."""

    def __init__(self, answer: httpx.Response) -> None:
        self.chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self.task = asyncio.create_task(self._pump(answer))

    async def _pump(self, answer: httpx.Response) -> None:
        async for chunk in answer.aiter_raw():
            await self.chunks.put(chunk)

    async def next(self, wait: float) -> bytes | None:
        try:
            async with asyncio.timeout(wait):
                return await self.chunks.get()
        except TimeoutError:
            return None

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def _sse_events(data: bytes) -> list[Message]:
    assert data.endswith(b"\n\n"), data
    events = []
    for event in data[:-2].split(b"\n\n"):
        assert event.startswith(b"data: "), event
        assert b"\n" not in event
        events.append(json.loads(event[len(b"data: ") :]))
    return events


async def test_sse_at_the_tail(syncd: SyncdProcess, client: httpx.Client, db: Any) -> None:
    table = make_table(db)
    reader = Reader(syncd, client, table=table)
    reader.catch_up()
    assert reader.handle is not None
    query = {
        "table": table,
        "offset": reader.offset,
        "handle": reader.handle,
        "live": "true",
        "live_sse": "true",
        "cursor": "",
    }
    async with httpx.AsyncClient(timeout=15.0) as http:
        async with http.stream("GET", syncd.shape_url, params=query) as answer:
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/event-stream")
            assert answer.headers["electric-handle"] == reader.handle
            assert answer.headers["electric-offset"] == reader.offset
            assert int(answer.headers["electric-cursor"]) > 0
            assert answer.headers["cache-control"] == "public, max-age=59"
            tap = _StreamTap(answer)
            assert await tap.next(0.8) is None  # nothing at connect
            await asyncio.to_thread(
                db.execute,
                sql.SQL("INSERT INTO {} VALUES (70, 'sse', 7), (71, 'sse', 7)").format(
                    sql.Identifier(table)
                ),
            )
            received = b""
            events: list[Message] = []
            deadline = time.monotonic() + 10
            while not (events and is_up_to_date(events[-1])):
                assert time.monotonic() < deadline, received
                chunk = await tap.next(10)
                assert chunk is not None
                received += chunk
                if received.endswith(b"\n\n"):
                    events = _sse_events(received)
            await tap.close()
    rows = changes(events)
    assert [row["key"] for row in rows] == [key(table, 70), key(table, 71)]
    assert events[-1]["headers"]["global_last_seen_lsn"] == rows[-1]["headers"]["lsn"]
    assert sum(1 for event in events if is_up_to_date(event)) == 1
    # a client resuming at "<lsn>_0" (how the TS client continues after SSE) is served
    resume = {**query, "offset": f"{rows[-1]['headers']['lsn']}_0"}
    del resume["live_sse"]
    async with httpx.AsyncClient(timeout=15.0) as http:
        answer = await http.get(syncd.shape_url, params={**resume, "live": "false"})
    check_log_response(answer)


async def test_sse_behind_the_tail_sends_and_closes(
    syncd: SyncdProcess, client: httpx.Client, db: Any
) -> None:
    table = make_table(db)
    reader = Reader(syncd, client, table=table)
    reader.catch_up()
    assert reader.handle is not None
    tail = reader.offset
    db.execute(sql.SQL("INSERT INTO {} VALUES (80, 'x', 8)").format(sql.Identifier(table)))
    reader.wait_for_changes()
    query = {
        "table": table,
        "offset": tail,
        "handle": reader.handle,
        "live": "true",
        "live_sse": "true",
    }
    async with httpx.AsyncClient(timeout=5.0) as http:
        answer = await http.get(syncd.shape_url, params=query)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = _sse_events(answer.content)
    assert [row["key"] for row in changes(events)] == [key(table, 80)]
    assert is_up_to_date(events[-1])


async def test_sse_at_a_snapshot_offset_sends_one_event_per_row(
    syncd: SyncdProcess, client: httpx.Client, db: Any
) -> None:
    """A live SSE request at ``0_0`` catches up with the next snapshot chunk: one ``data:``
    event per message, the same messages the plain request at that offset gets."""
    table = make_table(db, 40, pad=100)  # several 1 kB snapshot chunks
    async with httpx.AsyncClient(timeout=5.0) as http:
        first = await http.get(syncd.shape_url, params={"table": table, "offset": "-1"})
        query = {"table": table, "offset": "0_0", "handle": first.headers["electric-handle"]}
        plain = check_log_response(await http.get(syncd.shape_url, params=query))
        sse = {**query, "live": "true", "live_sse": "true"}
        answer = await http.get(syncd.shape_url, params=sse)
    assert answer.status_code == 200
    events = _sse_events(answer.content)
    assert all(isinstance(event, dict) for event in events)
    assert changes(events) == changes(plain) != []


# -- lifecycle ---------------------------------------------------------------------------------


def test_delete_by_handle_then_must_refetch(
    syncd: SyncdProcess, client: httpx.Client, db: Any
) -> None:
    table = make_table(db)
    reader = Reader(syncd, client, table=table)
    reader.catch_up()
    seen: list[str] = []
    for _ in range(3):
        old = reader.handle
        assert old is not None and old not in seen
        seen.append(old)
        answer = client.delete(syncd.shape_url, params={"handle": old})
        assert answer.status_code == 202, answer.text
        assert answer.content == b""
        answer = reader.request()
        assert answer.status_code == 409, answer.text
        assert answer.json() == [{"headers": {"control": "must-refetch"}}]
        new = answer.headers["electric-handle"]
        assert new != old and new not in seen
        assert "electric-offset" not in answer.headers
        assert "electric-schema" not in answer.headers
        live = reader.request(live="true", cursor="")
        assert live.status_code == 409
        assert live.headers["electric-handle"] == new
        reader.handle, reader.offset = None, "-1"
        reader.catch_up()
        assert reader.handle == new
    answer = client.delete(syncd.shape_url, params={"handle": seen[0]})
    assert answer.status_code == 404
    answer = client.delete(syncd.shape_url, params={"table": table})
    assert answer.status_code == 202
    answer = client.get(syncd.shape_url, params={"table": table, "offset": "-1"})
    assert answer.headers["electric-handle"] not in [*seen, reader.handle]


def test_delete_by_definition(syncd: SyncdProcess, client: httpx.Client, db: Any) -> None:
    table = make_table(db)
    mismatch = (
        "The specified shape definition and handle do not match. Please ensure the shape "
        "definition is correct or omit the shape handle from the request to obtain a new one."
    )
    answer = client.get(syncd.shape_url, params={"table": table, "offset": "-1"})
    handle = answer.headers["electric-handle"]
    answer = client.delete(syncd.shape_url, params={"table": table, "handle": "other"})
    assert answer.status_code == 400
    assert answer.json() == {"message": mismatch}
    assert answer.headers["cache-control"] == "no-cache"
    answer = client.delete(syncd.shape_url, params={"table": table, "where": "id = 1"})
    assert answer.status_code == 404
    assert answer.json() == {"message": "No existing shape found"}
    answer = client.delete(
        syncd.shape_url, params={"table": table, "where": "id = 1", "handle": handle}
    )
    assert answer.status_code == 404
    answer = client.delete(syncd.shape_url)
    assert answer.status_code == 400
    assert answer.json()["errors"] == {
        "handle": ["can't be blank when shape definition is missing"]
    }
    answer = client.delete(syncd.shape_url, params={"table": "bad-name"})
    assert answer.status_code == 400
    assert answer.headers["cache-control"] == "no-cache"
    # what a client had as its position does not matter
    query = {"table": f"public.{table}", "handle": handle, "offset": "0_inf", "live": "true"}
    answer = client.delete(syncd.shape_url, params=query)
    assert answer.status_code == 202, answer.text
    assert answer.headers["cache-control"] == "no-cache"
    answer = client.get(syncd.shape_url, params={"table": table, "offset": "0_0", "handle": handle})
    assert answer.status_code == 409


def test_delete_during_a_live_wait(syncd: SyncdProcess, client: httpx.Client, db: Any) -> None:
    table = make_table(db)
    reader = Reader(syncd, client, table=table)
    reader.catch_up()
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        pending = pool.submit(reader.request, live="true", cursor="")
        time.sleep(0.3)
        assert client.delete(syncd.shape_url, params={"handle": reader.handle}).status_code == 202
        answer = pending.result()
    assert time.monotonic() - started < LONG_POLL  # woken by the delete, not by the timeout
    assert answer.status_code == 409
    assert answer.json() == [{"headers": {"control": "must-refetch"}}]


def test_offset_now(syncd: SyncdProcess, client: httpx.Client, db: Any) -> None:
    table = make_table(db)
    answer = client.get(syncd.shape_url, params={"table": table, "offset": "now"})
    body = check_log_response(answer)
    assert len(body) == 1 and is_up_to_date(body[0])
    assert answer.headers["electric-offset"] == "0_inf"
    assert answer.headers["electric-has-data"] == "false"
    assert "electric-schema" in answer.headers
    reader = Reader(syncd, client, table=table)
    reader.catch_up()
    db.execute(
        sql.SQL("INSERT INTO {} VALUES (90, 'x', 9), (91, 'y', 9)").format(sql.Identifier(table))
    )
    reader.wait_for_changes()
    answer = client.get(syncd.shape_url, params={"table": table, "offset": "now"})
    body = check_log_response(answer)
    assert len(body) == 1 and is_up_to_date(body[0])
    assert answer.headers["electric-offset"] == reader.offset
    assert answer.headers["electric-handle"] == reader.handle
    # continuing from there is at the tail: a live request holds and times out
    reader.offset = answer.headers["electric-offset"]
    answer, body = reader.step(live=True)
    assert answer.headers["electric-has-data"] == "false"


def test_if_none_match(syncd: SyncdProcess, client: httpx.Client, db: Any) -> None:
    table = make_table(db)
    answer = client.get(syncd.shape_url, params={"table": table, "offset": "-1"})
    etag = answer.headers["etag"]
    again = client.get(
        syncd.shape_url,
        params={"table": table, "offset": "-1"},
        headers={"if-none-match": etag},
    )
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["electric-handle"] == answer.headers["electric-handle"]
    assert "electric-schema" not in again.headers


# -- other endpoints ---------------------------------------------------------------------------


def test_health_root_and_unknown_paths(syncd: SyncdProcess, client: httpx.Client) -> None:
    answer = client.get(syncd.url + "/v1/health")
    assert answer.status_code == 200
    assert answer.json() == {"status": "active"}
    assert answer.headers["cache-control"] == "no-cache, no-store, must-revalidate"
    assert client.get(syncd.url + "/").status_code == 200
    for path in ("/nope", "/v1", "/v1/shapes", "/v2/shape", "/v1/health/x", "/v1/shape/x/y"):
        answer = client.get(syncd.url + path)
        assert answer.status_code == 404, path
        assert answer.json() == {"message": "Not found"}


def test_cors_headers(syncd: SyncdProcess, client: httpx.Client, db: Any) -> None:
    table = make_table(db)
    answer = client.get(syncd.shape_url, params={"table": table, "offset": "-1"})
    assert answer.headers["access-control-expose-headers"] == (
        "electric-cursor,electric-handle,electric-has-data,electric-offset,electric-schema,"
        "electric-up-to-date,electric-internal-known-error,retry-after"
    )
    answer = client.options(syncd.shape_url, headers={"origin": "http://localhost:1"})
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-origin"] == "http://localhost:1"
