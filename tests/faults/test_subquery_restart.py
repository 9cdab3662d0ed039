"""Subquery shapes survive ``kill -9``: same handle, offsets that continue, no 409.

The oracle scenario of ``tests/syncd/test_subquery_oracle.py`` (concurrent writers over
memberships, threads and events while subquery shapes are created and followed live), with
syncd killed by SIGKILL and started again halfway through shape creation. Each consumer must
go on with its handle (a 409 counts as a failure here, since nothing invalidates the shapes:
this workload has no TRUNCATE), never see a change for a key it does not hold, and end with
exactly the rows of its SELECT. A consumer that starts afresh after the restart must get the
same handle and rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from tests.faults.checked_consumer import CheckedConsumer
from tests.syncd.test_subquery_oracle import (
    Op,
    Shape,
    run_scenario,
    shapes,
    transactions,
)
from tests.syncd_process import SyncdProcess

pytestmark = [pytest.mark.pg, pytest.mark.slow]


@pytest.fixture
def syncd(pg_dsn: str, tmp_path: Path) -> Iterator[SyncdProcess]:
    daemon = SyncdProcess(pg_dsn, tmp_path / "storage", long_poll_timeout=1.0)
    daemon.start()
    yield daemon
    daemon.stop()


def assert_fresh_reader_agrees(syncd: SyncdProcess, consumer: CheckedConsumer) -> None:
    with CheckedConsumer(syncd.shape_url, consumer.params, name="fresh " + consumer.name) as fresh:
        fresh.catch_up()
        assert fresh.handle == consumer.handle, consumer.name
        assert fresh.rows == consumer.rows, consumer.name


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(txns=transactions(truncates=False), wanted=shapes)
def test_subquery_shapes_survive_kill_9(
    syncd: SyncdProcess, pg_dsn: str, txns: list[list[Op]], wanted: list[Shape]
) -> None:
    consumers = run_scenario(syncd, pg_dsn, txns, wanted, crash=True)
    for consumer in consumers:
        assert consumer.refetches == 0, f"{consumer.name} was sent back to a new snapshot"
        assert_fresh_reader_agrees(syncd, consumer)


def test_a_clean_restart_between_two_scenarios_keeps_every_shape(
    syncd: SyncdProcess, pg_dsn: str
) -> None:
    txns: list[list[Op]] = [
        [("join", 1, 3, 0), ("event-thread", 2, 3, 0)],
        [("leave", 1, 3, 0)],
        [("member-user", 2, 1, 1), ("event-upsert", 20, 1, 1)],
        [("member-thread", 1, 1, 4)],
        [("join", 3, 4, 0), ("event-n", 5, 1, 0)],
    ] * 3
    wanted: list[Shape] = [(kind, 1) for kind in ("events", "threads", "not-in", "or")]
    wanted.append(("co-members", 2))
    consumers = run_scenario(syncd, pg_dsn, txns, wanted)
    syncd.restart()
    for consumer in consumers:
        assert_fresh_reader_agrees(syncd, consumer)
