"""Resume positions of ``ShapeStream`` are exact, against a live syncd daemon.

A consumer that stores ``(stream.handle, stream.offset)`` after a batch and later resumes a new
stream from it must see every change exactly once: never an operation of a transaction it has
already seen (the rest of a multi-operation transaction), never a gap. Postgres is the oracle
for what was written; the stop points and transactions are drawn by Hypothesis. The server's
part of the promise (a mid-transaction offset gives strictly later operations) is checked on
its own first.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Literal

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shapes.client import Batch, LiveMode, ShapeDefinition, ShapeStream
from tests.syncd_process import SyncdProcess

pytestmark = [pytest.mark.timeout(600)]

OpKind = Literal["insert", "update", "delete"]
Transaction = list[OpKind]
Stop = Literal["go-on", "resume"] | float
"""After a batch: go on reading, or resume from the stored position; a float: give up the
next read after that many seconds, resume, and read one batch in full."""


def key_of(row_id: int) -> str:
    return f'"public"."items"/"{row_id}"'


@dataclass
class Writer:
    """Writes transactions for one group of rows and remembers the changes they make."""

    dsn: str
    group: int
    rng: random.Random
    present: list[int] = field(default_factory=list)
    expected: list[tuple[str, str]] = field(default_factory=list)
    next_id: int = 0

    def sentinel(self, number: int) -> int:
        """The id of the ``number``-th sentinel row, apart from every other id."""
        return self.group * 100_000 + 90_000 + number

    def statement(
        self, kind: OpKind, row_id: int | None = None
    ) -> tuple[str, tuple[object, ...], tuple[str, str]]:
        """One operation; an insert of ``row_id`` when given."""
        if kind == "insert" or not self.present or row_id is not None:
            if row_id is None:
                self.next_id += 1
                row_id = self.group * 100_000 + self.next_id
            self.present.append(row_id)
            sql = "INSERT INTO items (id, grp, title) VALUES (%s, %s, %s)"
            return sql, (row_id, self.group, f"t{row_id}"), ("insert", key_of(row_id))
        row_id = self.rng.choice(self.present)
        if kind == "update":
            title = f"u{self.rng.randrange(1_000_000)}"
            sql = "UPDATE items SET title = %s WHERE id = %s"
            return sql, (title, row_id), ("update", key_of(row_id))
        self.present.remove(row_id)
        return "DELETE FROM items WHERE id = %s", (row_id,), ("delete", key_of(row_id))

    async def commit(self, transaction: Transaction, sentinel: int | None = None) -> None:
        """One transaction, one statement per operation; ``sentinel``: the id of a row that a
        last operation inserts."""
        operations: list[tuple[OpKind, int | None]] = [(kind, None) for kind in transaction]
        if sentinel is not None:
            operations.append(("insert", sentinel))
        async with await psycopg.AsyncConnection.connect(self.dsn) as conn:
            changes = []
            for kind, row_id in operations:
                sql, args, change = self.statement(kind, row_id)
                await conn.execute(sql, args)
                changes.append(change)
            await conn.commit()
        self.expected.extend(changes)


@dataclass
class ResumingConsumer:
    """Reads batches and, as its stop plan says, after a batch stores the stream's position,
    closes the stream and resumes a new one from the stored position; or abandons a read
    after some seconds (whatever it was in the middle of) and resumes the same way."""

    url: str
    definition: ShapeDefinition
    live_mode: LiveMode
    stops: Iterator[Stop]
    delivered: list[tuple[str, str]] = field(default_factory=list)
    positions: list[tuple[int, int]] = field(default_factory=list)
    resumes: int = 0
    stream: ShapeStream | None = None
    batches: AsyncIterator[Batch] | None = None

    def open(self, handle: str | None, offset: str) -> None:
        self.stream = ShapeStream(
            self.url, self.definition, handle=handle, offset=offset, live_mode=self.live_mode
        )
        self.batches = aiter(self.stream)

    async def close(self) -> None:
        if self.batches is not None:
            await self.batches.aclose()  # type: ignore[attr-defined]
        if self.stream is not None:
            await self.stream.aclose()

    async def read_until(self, key: str) -> None:
        """Read batches until an insert of ``key`` has been delivered."""
        while ("insert", key) not in self.delivered:
            assert self.stream is not None and self.batches is not None
            stop = next(self.stops)
            try:
                batch = await asyncio.wait_for(
                    anext(self.batches), stop if isinstance(stop, float) else None
                )
            except TimeoutError:
                await self.resume()  # abandoned in the middle of whatever it was reading
                assert self.batches is not None
                batch = await anext(self.batches)  # a whole read before the next stop
            self.record(batch)
            if stop != "go-on":
                await self.resume()

    def record(self, batch: Batch) -> None:
        for message in batch:
            headers = message["headers"]
            assert headers.get("control") != "must-refetch", "unexpected must-refetch"
            if "operation" in headers:
                self.delivered.append((headers["operation"], message["key"]))
                self.positions.append((int(headers["lsn"]), int(headers["op_position"])))

    async def resume(self) -> None:
        assert self.stream is not None
        handle, offset = self.stream.handle, self.stream.offset
        await self.close()
        self.open(handle, offset)
        self.resumes += 1


_GROUPS = itertools.count(1)

transactions = st.lists(
    st.sampled_from(["insert", "insert", "update", "delete"]), min_size=2, max_size=5
)
stop_plans: st.SearchStrategy[Stop] = st.one_of(
    st.sampled_from(["go-on", "go-on", "resume"]), st.sampled_from([0.001, 0.01, 0.05])
)
rounds = st.lists(st.lists(transactions, min_size=1, max_size=3), min_size=1, max_size=4)


async def resume_scenario(
    syncd: SyncdProcess,
    live_mode: LiveMode,
    planned: list[list[Transaction]],
    stops: list[Stop],
    seed: int,
) -> None:
    group = next(_GROUPS)
    definition = ShapeDefinition.of("items", where="grp = $1", params=[str(group)])
    writer = Writer(syncd.dsn, group, random.Random(seed))
    consumer = ResumingConsumer(
        syncd.shape_url, definition, live_mode, itertools.cycle(stops or ["go-on"])
    )
    consumer.open(None, "-1")
    try:
        await writer.commit(["insert"])  # a row written before the shape exists: in the snapshot
        writer.expected.clear()
        assert consumer.batches is not None
        await anext(consumer.batches)  # the snapshot, up to date: the stream goes live
        for number, transactions_of_round in enumerate(planned):
            sentinel = writer.sentinel(number)
            reader = asyncio.ensure_future(consumer.read_until(key_of(sentinel)))
            *before, last = transactions_of_round
            for transaction in before:
                await writer.commit(transaction)
            await writer.commit(last, sentinel)  # its last operation: the reader waits for it
            await reader
    finally:
        await consumer.close()
    duplicates = len(consumer.positions) - len(set(consumer.positions))
    assert duplicates == 0, f"{duplicates} changes delivered twice ({consumer.resumes} resumes)"
    assert consumer.positions == sorted(consumer.positions)
    assert consumer.delivered == writer.expected


@pytest.mark.parametrize("live_mode", ["long-poll", "sse"])
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(planned=rounds, stops=st.lists(stop_plans, max_size=12), seed=st.integers(0, 1000))
def test_resuming_from_any_stored_position_delivers_each_change_once(
    syncd: SyncdProcess,
    live_mode: LiveMode,
    planned: list[list[Transaction]],
    stops: list[Stop],
    seed: int,
) -> None:
    asyncio.run(resume_scenario(syncd, live_mode, planned, stops, seed))


@pytest.mark.parametrize("live_mode", ["long-poll", "sse"])
def test_stop_after_a_live_multi_operation_transaction(
    syncd: SyncdProcess, live_mode: LiveMode
) -> None:
    """The smallest case: one live transaction of three operations, stop, resume, one more."""
    planned: list[list[Transaction]] = [[["insert", "insert"]], [["insert"]]]
    asyncio.run(resume_scenario(syncd, live_mode, planned, ["resume"], 0))


async def test_a_mid_transaction_offset_serves_strictly_later_operations(
    syncd: SyncdProcess,
) -> None:
    """The server side: ``<lsn>_<op>`` inside a transaction answers only the later operations,
    also for an offset between two operations' positions."""
    definition = ShapeDefinition.of("items", where="grp = $1", params=["999"])
    async with ShapeStream(syncd.shape_url, definition, live=False) as stream:
        async for _ in stream:
            pass
        handle, start = stream.handle, stream.offset
    writer = Writer(syncd.dsn, 999, random.Random(0))
    await writer.commit(["insert", "insert", "insert", "insert"])
    async with httpx.AsyncClient(timeout=30) as client:
        query = dict(definition.query(), handle=handle or "", offset=start)
        everything = (await client.get(syncd.shape_url, params=query)).json()
        ops = [m["headers"] for m in everything if "operation" in m["headers"]]
        assert len(ops) == 4 and len({h["lsn"] for h in ops}) == 1
        lsn = ops[0]["lsn"]
        positions = [h["op_position"] for h in ops]
        for after in range(positions[0], positions[-1] + 1):
            query["offset"] = f"{lsn}_{after}"
            answer = await client.get(syncd.shape_url, params=query)
            assert answer.status_code == 200, answer.text
            served = [m["headers"]["op_position"] for m in answer.json() if "key" in m]
            assert served == [p for p in positions if p > after], f"offset {lsn}_{after}"
