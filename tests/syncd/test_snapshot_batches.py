"""Snapshots of shapes created together are read in one transaction and sealed together.

The engine's row source is wrapped so that chosen snapshots wait on gates (the rows still come
from Postgres). That makes the batches deterministic: while the first snapshot is held, every
other new shape queues, and the next batch holds all of them. Each test checks what a client
sees (every shape's rows equal ``SELECT``), and what the batching promises: one snapshot for
the batch; a shape whose query fails fails alone, the shapes after it get a new snapshot; a
large shape hands the small ones of its batch to another transaction instead of holding them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

import syncd.snapshot_runner
from shapes.xid import Snapshot
from syncd.catalog import load_table
from syncd.embed import EmbeddedSyncd
from syncd.snapshot import begin_snapshot, probe_rows_together, stream_rows
from syncd.storage import ShapeLog

ROWS = 3_000  # more than one fetch (syncd.snapshot_runner.FETCH_ROWS)


def _deparsed(where: str) -> str:
    """How the snapshot query spells a simple comparison ``where`` (``grp = 0``: ``grp = (0)``)."""
    return re.sub(r"([=>]) (\d+)$", r"\1 (\2)", where)


class Gates:
    """Wraps ``stream_rows``: a query whose where clause has a gate waits on it, before its
    first batch (``before``) or before its second (``after_first``); :meth:`reached` tells
    when a query got there. A gate's key is a part of the clause as the query spells it
    (:func:`_deparsed`). Also counts the snapshot transactions begun (:attr:`begun`), notes
    the shapes read alone (:attr:`streamed`) and the probes of shapes read together
    (:attr:`probes`: how many shapes, whether it succeeded), and can make those fail
    (:attr:`refuse_probes`)."""

    def __init__(self) -> None:
        self.begun = 0
        self.before: dict[str, asyncio.Event] = {}
        self.after_first: dict[str, asyncio.Event] = {}
        self._reached: dict[str, asyncio.Event] = {}
        self.streamed: list[str] = []
        self.probes: list[tuple[int, bool]] = []
        self.refuse_probes = False

    async def begin_snapshot(self, conn: Any) -> tuple[Snapshot, int]:
        self.begun += 1
        return await begin_snapshot(conn)

    def read_alone(self, wheres: list[str]) -> bool:
        """Whether exactly the shapes ``wheres`` were read alone, in this order."""
        return len(self.streamed) == len(wheres) and all(
            _deparsed(where) in sql for where, sql in zip(wheres, self.streamed, strict=True)
        )

    async def probe_rows_together(
        self,
        conn: Any,
        table: Any,
        columns: Any,
        wheres: list[str | None],
        limit: int,
        *,
        savepoint: str | None = None,
    ) -> list[list[Any]]:
        if self.refuse_probes:  # as a query that fails: after the savepoint sent with it
            if savepoint is not None:
                await conn.execute(f"SAVEPOINT {savepoint}")
            self.probes.append((len(wheres), False))
            raise psycopg.errors.DivisionByZero("refused by the test")
        try:
            found = await probe_rows_together(
                conn, table, columns, wheres, limit, savepoint=savepoint
            )
        except psycopg.Error:
            self.probes.append((len(wheres), False))
            raise
        self.probes.append((len(wheres), True))
        return found

    def reached(self, where: str) -> asyncio.Event:
        return self._reached.setdefault(where, asyncio.Event())

    def __call__(
        self, conn: Any, table: Any, columns: Any, where: str | None, *args: Any, **kw: Any
    ) -> AsyncIterator[Any]:
        self.streamed.append(where or "")
        return self._rows(where or "", stream_rows(conn, table, columns, where, *args, **kw))

    async def _rows(self, where_sql: str, rows: AsyncIterator[Any]) -> AsyncIterator[Any]:
        before = [key for key in self.before if key in where_sql]
        after = [key for key in self.after_first if key in where_sql]
        for key in before:
            self.reached(key).set()
            await self.before[key].wait()
        batches = 0
        async for batch in rows:
            if batches == 1:
                for key in after:
                    self.reached(key).set()
                    await self.after_first[key].wait()
            batches += 1
            yield batch


@pytest.fixture
def items(pg_dsn: str) -> str:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, grp int NOT NULL, title text)")
        conn.execute("CREATE TABLE marks (at timestamptz)")
        conn.execute(
            "INSERT INTO items SELECT g, g %% 20, 'title ' || g FROM generate_series(1, %s) g",
            (ROWS,),
        )
    return pg_dsn


@pytest.fixture
def gates(monkeypatch: pytest.MonkeyPatch) -> Gates:
    wrapped = Gates()
    monkeypatch.setattr(syncd.snapshot_runner, "stream_rows", wrapped)
    monkeypatch.setattr(syncd.snapshot_runner, "begin_snapshot", wrapped.begin_snapshot)
    monkeypatch.setattr(syncd.snapshot_runner, "probe_rows_together", wrapped.probe_rows_together)
    return wrapped


def _embedded(dsn: str, storage: Path) -> EmbeddedSyncd:
    return EmbeddedSyncd(dsn, storage, slot=f"batches_{conninfo_to_dict(dsn)['dbname']}")


def _commit_elsewhere(dsn: str) -> None:
    """Commit a transaction (to another table): snapshots taken after it differ from those
    taken before."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO marks VALUES (now())")


def _selected(dsn: str, where: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [row[0] for row in conn.execute(f"SELECT id FROM items WHERE {where} ORDER BY id")]


Followed = tuple[int, list[int], str]
"""The last status of a shape's requests, the ids received, and the shape's handle."""


async def _follow(client: httpx.AsyncClient, where: str) -> Followed:
    """Follow the shape ``where`` from ``-1`` to up-to-date."""
    params = {"table": "items", "where": where, "offset": "-1"}
    ids: list[int] = []
    while True:
        answer = await client.get("/v1/shape", params=params)
        if answer.status_code != 200:
            return answer.status_code, ids, params.get("handle", "")
        ids += [int(m["value"]["id"]) for m in answer.json() if "key" in m]
        if "electric-up-to-date" in answer.headers:
            return 200, sorted(ids), answer.headers["electric-handle"]
        params["handle"] = answer.headers["electric-handle"]
        params["offset"] = answer.headers["electric-offset"]


async def _registered(embedded: EmbeddedSyncd, count: int) -> None:
    """Wait until the engine holds more than ``count`` shapes."""
    for _ in range(3000):  # a generous bound for a loaded machine, not a latency limit
        if len(embedded.engine.shapes) > count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the new shape was not registered")


def _check(followed: Followed, dsn: str, where: str) -> str:
    """Assert that ``followed`` got exactly the rows of ``where``; its handle."""
    status, ids, handle = followed
    assert (status, ids) == (200, _selected(dsn, where)), where
    return handle


def _snapshot_of(embedded: EmbeddedSyncd, handle: str) -> Snapshot:
    shape = embedded.engine.get(handle)
    assert shape is not None and shape.snapshot is not None
    return shape.snapshot


async def _queued(embedded: EmbeddedSyncd, wheres: list[str]) -> list[asyncio.Task[Followed]]:
    """Start following each of ``wheres``, one after the other once the previous is
    registered (so they queue in this order)."""
    tasks = []
    for where in wheres:
        count = len(embedded.engine.shapes)
        tasks.append(asyncio.create_task(_follow(embedded.default_client, where)))
        await _registered(embedded, count)
    return tasks


async def test_shapes_created_together_share_one_snapshot(
    items: str, tmp_path: Path, gates: Gates
) -> None:
    first = "grp = 0"
    gates.before[_deparsed(first)] = asyncio.Event()
    others = [f"grp = {k}" for k in range(1, 20)] + ["title LIKE 'title 1%'"]
    async with _embedded(items, tmp_path / "storage") as embedded:
        embedded.engine.snapshots.max_workers = 1
        (held,) = await _queued(embedded, [first])
        await asyncio.wait_for(gates.reached(_deparsed(first)).wait(), 30)
        waiting = await _queued(embedded, others)
        _commit_elsewhere(items)
        gates.before[_deparsed(first)].set()
        first_handle = _check(await held, items, first)
        handles = [
            _check(await task, items, where) for where, task in zip(others, waiting, strict=True)
        ]
        shared = {_snapshot_of(embedded, handle) for handle in handles}
        assert gates.begun == 2  # the first shape's transaction, and one for the twenty others
        assert len(shared) == 1
        # the first was read alone; the twenty others (one table, the same columns) with one
        # query, none of them alone
        assert gates.probes == [(20, True)]
        assert gates.read_alone([first])
        assert _snapshot_of(embedded, first_handle) not in shared
        # sealed: each log is complete and its metadata ready, as a restart would find them
        for shape in embedded.engine.shapes.values():
            assert shape.log.read_meta()["status"] == "ready"
            reopened = ShapeLog.open(shape.log.directory, shape.log.chunk_bytes)
            assert reopened.snapshot_complete
            reopened.close_descriptors()


async def test_a_failing_shape_fails_alone_and_the_rest_get_a_new_snapshot(
    items: str, tmp_path: Path, gates: Gates
) -> None:
    first = "grp = 0"
    gates.before[_deparsed(first)] = asyncio.Event()
    before = ["grp = 1", "grp = 2"]
    failing = "100 / (id - 7) > 0"  # division by zero on row 7
    failing_key = "(id - (7))"
    gates.before[failing_key] = asyncio.Event()
    after = ["grp = 3", "grp = 4"]
    async with _embedded(items, tmp_path / "storage") as embedded:
        embedded.engine.snapshots.max_workers = 1
        (held,) = await _queued(embedded, [first])
        await asyncio.wait_for(gates.reached(_deparsed(first)).wait(), 30)
        tasks = await _queued(embedded, [*before, failing, *after])
        gates.before[_deparsed(first)].set()
        await asyncio.wait_for(gates.reached(failing_key).wait(), 30)
        _commit_elsewhere(items)  # after the batch's snapshot, before the next one
        gates.before[failing_key].set()
        results = dict(zip([*before, failing, *after], await asyncio.gather(*tasks), strict=True))
        _check(await held, items, first)
        status, ids, failed_handle = results.pop(failing)
        assert (status, ids) == (400, [])
        assert embedded.engine.get(failed_handle) is None  # retired
        snapshots = {
            where: _snapshot_of(embedded, _check(result, items, where))
            for where, result in results.items()
        }
        assert snapshots[before[0]] == snapshots[before[1]]
        assert snapshots[after[0]] == snapshots[after[1]]
        assert snapshots[before[0]] != snapshots[after[0]]  # a new transaction after the failure
        assert gates.begun == 3
        # the five read together failed on the bad clause: each was read alone up to it; the
        # two after it, in the next transaction, together again
        assert gates.probes == [(5, False), (2, True)]
        assert len(gates.streamed) == 1 + 3


async def test_a_large_shape_does_not_hold_back_the_small_ones_of_its_batch(
    items: str, tmp_path: Path, gates: Gates
) -> None:
    blockers = ["grp = 0", "grp = 1"]
    large = "id > 0"  # every row: more than one fetch
    small = [f"grp = {k}" for k in range(2, 7)]
    for where in blockers:
        gates.before[_deparsed(where)] = asyncio.Event()
    gates.after_first[_deparsed(large)] = asyncio.Event()
    gates.refuse_probes = True  # read one by one (shapes read together come first anyway)
    async with _embedded(items, tmp_path / "storage") as embedded:
        embedded.engine.snapshots.max_workers = 2
        held = []
        for where in blockers:  # both workers busy
            held += await _queued(embedded, [where])
            await asyncio.wait_for(gates.reached(_deparsed(where)).wait(), 30)
        tasks = await _queued(embedded, [large, *small])
        # the first blocker's worker takes the large shape and the small ones
        gates.before[_deparsed(blockers[0])].set()
        await asyncio.wait_for(gates.reached(_deparsed(large)).wait(), 30)
        # the other worker is free, and the small ones are back in the queue
        gates.before[_deparsed(blockers[1])].set()
        results = await asyncio.wait_for(asyncio.gather(*tasks[1:]), 30)
        for where, result in zip(small, results, strict=True):
            _check(result, items, where)
        assert not tasks[0].done()  # the large shape is still held after its first fetch
        gates.after_first[_deparsed(large)].set()
        _check(await tasks[0], items, large)
        for task, where in zip(held, blockers, strict=True):
            _check(await task, items, where)


async def test_a_large_shape_read_together_with_small_ones_is_then_read_alone(
    items: str, tmp_path: Path, gates: Gates
) -> None:
    """The probe of a batch returns a full first fetch for the large shape: the small ones are
    written from the probe (before it), and only the large one is read again, on its own."""
    blocker = "grp = 0"
    large = "id > 0"
    small = [f"grp = {k}" for k in range(2, 7)]
    gates.before[_deparsed(blocker)] = asyncio.Event()
    gates.after_first[_deparsed(large)] = asyncio.Event()
    async with _embedded(items, tmp_path / "storage") as embedded:
        embedded.engine.snapshots.max_workers = 1
        held = await _queued(embedded, [blocker])
        await asyncio.wait_for(gates.reached(_deparsed(blocker)).wait(), 30)
        tasks = await _queued(embedded, [large, *small])
        gates.before[_deparsed(blocker)].set()
        results = await asyncio.wait_for(asyncio.gather(*tasks[1:]), 30)
        for where, result in zip(small, results, strict=True):
            _check(result, items, where)
        assert not tasks[0].done()  # held after its first fetch, read alone
        gates.after_first[_deparsed(large)].set()
        large_handle = _check(await tasks[0], items, large)
        _check(await held[0], items, blocker)
        assert gates.probes == [(6, True)]
        assert gates.read_alone([blocker, large])
        small_handles = [result[2] for result in results]
        snapshots = {_snapshot_of(embedded, h) for h in [large_handle, *small_handles]}
        assert len(snapshots) == 1  # one transaction for all six


async def test_a_probe_of_many_clauses_equals_each_query_alone(items: str) -> None:
    """:func:`probe_rows_together` against the same queries run one by one, in one snapshot:
    a branch without a clause (the whole table), clauses that match nothing, one row, and more
    rows than the limit (cut at the limit plus one)."""
    wheres: list[str | None] = [None, "id = 3", "false", "grp = 5 AND id < 200", "id > 2990"]
    limit = 9
    async with await psycopg.AsyncConnection.connect(items, autocommit=True) as conn:
        table = await load_table(conn, "public", "items")
        columns = ["id", "title", "grp"]
        await begin_snapshot(conn)
        found = await probe_rows_together(conn, table, columns, wheres, limit)
        for where, rows in zip(wheres, found, strict=True):
            query = "SELECT id::text, title, grp::text FROM items"
            query += f" WHERE {where}" if where is not None else ""
            cur = await conn.execute(query + f" LIMIT {limit + 1}")  # test-controlled text
            assert sorted(rows) == sorted(await cur.fetchall()), where
        await conn.execute("COMMIT")
    assert [len(rows) for rows in found] == [limit + 1, 1, 0, limit + 1, limit + 1]
