"""Schema changes, TRUNCATE and TOASTed values, followed by the official client."""

from __future__ import annotations

import secrets

import psycopg
import pytest

from shapes.messages import relation_key_prefix, row_key
from tests.e2e.jsclient import Rows, ShapeFollower
from tests.e2e.support import needs_js_client, syncd_fixture
from tests.syncd_process import SyncdProcess

pytestmark = [pytest.mark.e2e, needs_js_client]


def create_small_items(dsn: str) -> None:
    """50 rows in ``items (id int PRIMARY KEY, title text, n int)``, before syncd starts."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, title text, n int)")
        conn.execute("INSERT INTO items SELECT g, 'title ' || g, g FROM generate_series(1, 50) g")


syncd = syncd_fixture(create_small_items, schema_check_interval=0.5)


def execute(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        for statement in statements:
            conn.execute(statement)


def select(dsn: str, columns: tuple[str, ...]) -> Rows:
    """Rows as the JS client holds them (int4 as numbers, text as strings)."""
    prefix = relation_key_prefix("public", "items")
    query = "SELECT " + ", ".join(columns) + " FROM items"
    with psycopg.connect(dsn) as conn:
        result = conn.execute(query).fetchall()
    return {
        row_key(prefix, {"id": str(row[0])}, ("id",)): dict(zip(columns, row, strict=True))
        for row in result
    }


async def test_added_column_keeps_a_shape_that_lists_its_columns(
    syncd: SyncdProcess, pg_dsn: str
) -> None:
    async with ShapeFollower(syncd.shape_url, "items", columns=["id", "title"]) as follower:
        await follower.wait_for_rows(select(pg_dsn, ("id", "title")))
        execute(pg_dsn, "ALTER TABLE items ADD COLUMN extra text")
        execute(pg_dsn, "UPDATE items SET title = 'changed', extra = 'x' WHERE id <= 10")
        await follower.wait_for_rows(select(pg_dsn, ("id", "title")))
        assert follower.must_refetch_count == 0
        assert not follower.errors


async def test_dropped_column_resets_a_shape_of_every_column(
    syncd: SyncdProcess, pg_dsn: str
) -> None:
    async with ShapeFollower(syncd.shape_url, "items") as follower:
        await follower.wait_for_rows(select(pg_dsn, ("id", "n", "title")))
        execute(pg_dsn, "ALTER TABLE items DROP COLUMN n")
        execute(pg_dsn, "INSERT INTO items VALUES (100, 'after the drop')")
        await follower.wait_for_rows(select(pg_dsn, ("id", "title")))
        assert follower.must_refetch_count >= 1


async def test_dropped_selected_column_resets_and_then_reports_it(
    syncd: SyncdProcess, pg_dsn: str
) -> None:
    async with ShapeFollower(syncd.shape_url, "items", columns=["id", "n"]) as follower:
        await follower.wait_for_rows(select(pg_dsn, ("id", "n")))
        execute(pg_dsn, "ALTER TABLE items DROP COLUMN n")
        error = await follower.wait_for_error(lambda e: e.get("status") == 400)
        assert "not found on the table: n" in str(error)
        assert follower.must_refetch_count >= 1


async def test_dropped_table_resets_its_shapes(syncd: SyncdProcess, pg_dsn: str) -> None:
    async with ShapeFollower(syncd.shape_url, "items") as follower:
        await follower.wait_for_rows(select(pg_dsn, ("id", "n", "title")))
        execute(pg_dsn, "DROP TABLE items")
        error = await follower.wait_for_error(lambda e: e.get("status") == 400)
        assert "does not exist" in str(error)


@pytest.mark.parametrize("replica", ["default", "full"])
async def test_truncate_then_inserts_converge(
    syncd: SyncdProcess, pg_dsn: str, replica: str
) -> None:
    async with ShapeFollower(syncd.shape_url, "items", replica=replica) as follower:
        await follower.wait_for_rows(select(pg_dsn, ("id", "n", "title")))
        execute(
            pg_dsn,
            "INSERT INTO items VALUES (500, 'gone with the truncate', 1)",
            "TRUNCATE items",
            "INSERT INTO items VALUES (1, 'same transaction', 1)",
        )
        execute(pg_dsn, "INSERT INTO items VALUES (2, 'next transaction', 2)")
        await follower.wait_for_rows(select(pg_dsn, ("id", "n", "title")))
        assert len(follower.rows) == 2
        execute(pg_dsn, "TRUNCATE items")
        await follower.wait_for_rows({})
        execute(pg_dsn, "INSERT INTO items VALUES (3, 'after', 3)")
        await follower.wait_for_rows(select(pg_dsn, ("id", "n", "title")))


@pytest.mark.parametrize("replica", ["default", "full"])
async def test_unchanged_toasted_value_arrives_intact(
    syncd: SyncdProcess, pg_dsn: str, replica: str
) -> None:
    big = secrets.token_hex(60_000)  # 120 kB of incompressible text: stored out of line
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE items SET title = %s WHERE id = 1", (big,))
    async with ShapeFollower(syncd.shape_url, "items", replica=replica) as follower:
        await follower.wait_for_rows(select(pg_dsn, ("id", "n", "title")))
        execute(pg_dsn, "UPDATE items SET n = 1000 WHERE id = 1")
        rows = await follower.wait_for_rows(select(pg_dsn, ("id", "n", "title")))
        assert rows['"public"."items"/"1"']["title"] == big
        assert rows['"public"."items"/"1"']["n"] == 1000
