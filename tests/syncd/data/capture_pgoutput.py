"""Capture real pgoutput payloads into ``pgoutput_pg15.bin`` (run once by hand, not by pytest).

Usage: ``python tests/syncd/data/capture_pgoutput.py "<superuser conninfo>"`` against a scratch
PostgreSQL 15 database with ``wal_level=logical``. Each scenario creates a logical slot, runs a
workload, reads the plugin output through ``pg_logical_slot_peek_binary_changes`` (the exact
bytes a walsender would put after the 25-byte XLogData header) and drops the slot.

File format: the magic line, then records ``name_len u16, name, lsn u64, len u32, payload``.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import psycopg

MAGIC = b"SYNCD-PGOUTPUT-FIXTURE-1\n"
OUT = Path(__file__).with_name("pgoutput_pg15.bin")

SCHEMA = """
DROP PUBLICATION IF EXISTS cap_pub;
DROP TABLE IF EXISTS cap_t, cap_f;
DROP TYPE IF EXISTS cap_mood;
CREATE TYPE cap_mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE cap_t (
    id int PRIMARY KEY,
    name text,
    mood cap_mood,
    big text,
    amount numeric(10, 2),
    data bytea,
    ts timestamptz
);
ALTER TABLE cap_t ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE cap_f (id int, v text);
ALTER TABLE cap_f REPLICA IDENTITY FULL;
CREATE PUBLICATION cap_pub FOR TABLE cap_t, cap_f;
"""

BIG = "".join(f"{i:05d}" for i in range(600))  # 3000 chars, stored out of line


def proto1(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute(
        "INSERT INTO cap_t VALUES (1, 'naïve ☃', 'happy', NULL, 12.50, '\\x0102ff',"
        " '2024-01-02 03:04:05+00')"
    )
    conn.execute("INSERT INTO cap_t (id, name, big) VALUES (2, 'toasty', %s)", (BIG,))
    conn.execute("UPDATE cap_t SET name = 'beta' WHERE id = 1")
    conn.execute("UPDATE cap_t SET name = 'gamma' WHERE id = 2")
    conn.execute("UPDATE cap_t SET id = 10 WHERE id = 1")
    conn.execute("DELETE FROM cap_t WHERE id = 10")
    conn.execute("INSERT INTO cap_f VALUES (1, 'x')")
    conn.execute("UPDATE cap_f SET v = 'y' WHERE id = 1")
    conn.execute("DELETE FROM cap_f WHERE id = 1")
    with conn.transaction():
        conn.execute("INSERT INTO cap_f VALUES (2, NULL)")
        conn.execute("SELECT pg_logical_emit_message(true, 'syncd', 'hello')")
    conn.execute("SELECT pg_logical_emit_message(false, 'syncd-nt', '\\x00ff'::bytea)")
    conn.execute("TRUNCATE cap_t, cap_f RESTART IDENTITY")


def binary(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute(
        "INSERT INTO cap_t VALUES (7, 'bin', 'ok', NULL, 1.5, '\\xdead', '2000-01-01 00:00:01+00')"
    )


def streaming(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute("INSERT INTO cap_f VALUES (0, 'small')")  # a normal, non-streamed txn
    with conn.transaction():
        conn.execute("INSERT INTO cap_f SELECT g, 'row ' || g FROM generate_series(1, 1500) g")
        conn.execute("SELECT pg_logical_emit_message(true, 'syncd', 'in stream')")
        try:
            with conn.transaction():  # a savepoint that is rolled back: a subxact abort
                conn.execute("INSERT INTO cap_f SELECT g, 'sub' FROM generate_series(1, 800) g")
                raise RuntimeError("rollback")
        except RuntimeError:
            pass
        conn.execute("UPDATE cap_f SET v = 'last' WHERE id = 1500")
    conn.execute("BEGIN")
    conn.execute("INSERT INTO cap_f SELECT g, 'doomed' FROM generate_series(1, 2000) g")
    conn.execute("ROLLBACK")
    # An abort record is not flushed at once; a commit flushes it, so decoding can see it.
    conn.execute("INSERT INTO cap_f VALUES (-1, 'tail')")


def origin(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute(
        "SELECT pg_replication_origin_create('cap_origin') "
        "WHERE NOT EXISTS (SELECT FROM pg_replication_origin WHERE roname = 'cap_origin')"
    )
    conn.execute("SELECT pg_replication_origin_session_setup('cap_origin')")
    with conn.transaction():
        conn.execute("SELECT pg_replication_origin_xact_setup('0/12345678', now())")
        conn.execute("INSERT INTO cap_f VALUES (42, 'from afar')")
    conn.execute("SELECT pg_replication_origin_session_reset()")


SCENARIOS = [
    ("proto1", proto1, ["proto_version", "1", "messages", "true"]),
    ("binary", binary, ["proto_version", "1", "binary", "true"]),
    ("proto2_stream", streaming, ["proto_version", "2", "streaming", "on", "messages", "true"]),
    ("origin", origin, ["proto_version", "1"]),
]


def main(conninfo: str) -> None:
    records: list[tuple[str, int, bytes]] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute("SET logical_decoding_work_mem = '64kB'")
        for name, workload, options in SCENARIOS:
            slot = f"cap_{name}"
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
            try:
                workload(conn)
                placeholders = ", ".join(["%s"] * len(options))
                rows = conn.execute(
                    "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes("
                    f"%s, NULL, NULL, 'publication_names', 'cap_pub', {placeholders})",
                    (slot, *options),
                ).fetchall()
            finally:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            for lsn_text, data in rows:
                assert isinstance(lsn_text, str) and isinstance(data, bytes)
                high, _, low = lsn_text.partition("/")
                records.append((name, (int(high, 16) << 32) | int(low, 16), data))
            conn.execute("TRUNCATE cap_t, cap_f")
    out = bytearray(MAGIC)
    for name, lsn, data in records:
        raw = name.encode()
        out += struct.pack(">H", len(raw)) + raw + struct.pack(">QI", lsn, len(data)) + data
    OUT.write_bytes(bytes(out))
    sys.stdout.write(f"wrote {len(records)} records, {len(out)} bytes to {OUT}\n")


if __name__ == "__main__":
    main(sys.argv[1])
