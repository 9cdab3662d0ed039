"""A table renamed away under its shapes: once the shape is deleted, a request for the old name
gets the 400 of a missing table, not a 500 from a stale cached description."""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from syncd.embed import EmbeddedSyncd


async def test_renamed_table_is_missing_after_its_shape_is_deleted(
    pg_dsn: str, tmp_path: Path
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, title text)")
        conn.execute("INSERT INTO items VALUES (1, 'a')")
    slot = f"renamed_{conninfo_to_dict(pg_dsn)['dbname']}"
    embedded = EmbeddedSyncd(pg_dsn, tmp_path / "storage", slot=slot, allow_shape_deletion=True)
    async with embedded, embedded.client() as client:
        first = await client.get("/v1/shape", params={"table": "items", "offset": "-1"})
        assert first.status_code == 200, first.text
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE items RENAME TO items_gone")
        deleted = await client.delete("/v1/shape", params={"table": "items"})
        assert deleted.status_code in (200, 202, 204), deleted.text
        answers = []
        for _ in range(3):
            again = await client.get("/v1/shape", params={"table": "items", "offset": "-1"})
            answers.append((again.status_code, again.text))
        assert [status for status, _ in answers] == [400, 400, 400], answers
