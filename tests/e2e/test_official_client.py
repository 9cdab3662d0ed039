"""The official ``@electric-sql/client`` syncs shapes from syncd: snapshot, then live changes."""

from __future__ import annotations

import pytest
from psycopg import sql

from tests.e2e.jsclient import ShapeFollower
from tests.e2e.support import (
    create_items,
    expected_rows,
    needs_js_client,
    random_transactions,
    syncd_fixture,
)
from tests.syncd_process import SyncdProcess

pytestmark = [pytest.mark.e2e, needs_js_client]

syncd = syncd_fixture(chunk_bytes=65536)


@pytest.mark.parametrize("live_sse", [False, True], ids=["long-poll", "sse"])
async def test_ten_thousand_rows_then_live_changes(
    syncd: SyncdProcess, pg_dsn: str, live_sse: bool
) -> None:
    create_items(pg_dsn, "public", "items", 10_000)
    async with ShapeFollower(syncd.shape_url, "items", live_sse=live_sse) as follower:
        await follower.wait_for_rows(expected_rows(pg_dsn, "public", "items"), timeout=120)
        random_transactions(pg_dsn, "public", "items", 200, seed=7 + live_sse)
        await follower.wait_for_rows(expected_rows(pg_dsn, "public", "items"), timeout=120)
        assert not follower.fatal_errors


async def test_where_params_and_columns(syncd: SyncdProcess, pg_dsn: str) -> None:
    create_items(pg_dsn, "public", "items", 10_000)
    async with ShapeFollower(
        syncd.shape_url,
        "items",
        where="n < $1 AND flag = $2",
        params={"1": "30", "2": "true"},
        columns=["id", "n"],
    ) as follower:
        where = "n < 30 AND flag"
        await follower.wait_for_rows(
            expected_rows(pg_dsn, "public", "items", where, ("id", "n")), timeout=120
        )
        random_transactions(pg_dsn, "public", "items", 200, seed=11)
        await follower.wait_for_rows(
            expected_rows(pg_dsn, "public", "items", where, ("id", "n")), timeout=120
        )


@pytest.mark.parametrize(
    ("schema", "table"),
    [("public", "CapitalItems"), ("My Schema", 'odd "quoted" name')],
)
async def test_awkward_table_names(
    syncd: SyncdProcess, pg_dsn: str, schema: str, table: str
) -> None:
    create_items(pg_dsn, schema, table, 100)
    quoted = sql.Identifier(schema, table).as_string(None)
    async with ShapeFollower(syncd.shape_url, quoted) as follower:
        await follower.wait_for_rows(expected_rows(pg_dsn, schema, table))
        random_transactions(pg_dsn, schema, table, 20, seed=3)
        await follower.wait_for_rows(expected_rows(pg_dsn, schema, table))
