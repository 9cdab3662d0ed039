"""Wire messages of the shape protocol: change messages, control messages, row keys.

Layer: ``shapes`` (pure). Every message is serialised to JSON bytes once, when it is written to a
shape log; the HTTP layer only joins stored bytes. Values are Postgres text output or ``None``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Literal

import msgspec

Operation = Literal["insert", "update", "delete"]
Row = Mapping[str, str | None]

_encode = msgspec.json.Encoder().encode

UP_TO_DATE_PREFIX: Final = b'{"headers":{"control":"up-to-date","global_last_seen_lsn":"'
MUST_REFETCH: Final = b'[{"headers":{"control":"must-refetch"}}]'


def relation_key_prefix(schema: str, table: str) -> str:
    """The ``"schema"."table"`` start of every key of a relation (``""`` doubles ``"``)."""
    return '"' + schema.replace('"', '""') + '"."' + table.replace('"', '""') + '"'


def row_key(prefix: str, row: Row, key_columns: Sequence[str]) -> str:
    """A row's key: the relation prefix, then ``/"<value>"`` per key column (``/_`` for NULL).

    ``/`` inside a value is doubled so that keys never collide.
    """
    parts = [prefix]
    for column in key_columns:
        value = row.get(column)
        if value is None:
            parts.append("/_")
        else:
            parts.append('/"' + value.replace("/", "//") + '"')
    return "".join(parts)


def snapshot_row(relation: Sequence[str], key: str, value: Row) -> bytes:
    """A snapshot row: an insert with only ``operation`` and ``relation`` headers."""
    headers = {"operation": "insert", "relation": relation}
    return _encode({"key": key, "value": value, "headers": headers})


def change(
    operation: Operation,
    relation: Sequence[str],
    key: str,
    value: Row,
    *,
    lsn: int,
    op_position: int,
    xid: int,
    last: bool,
    old_value: Row | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> bytes:
    """A change message from the replication stream."""
    headers: dict[str, object] = {
        "operation": operation,
        "relation": relation,
        "lsn": str(lsn),
        "op_position": op_position,
        "txids": [xid],
    }
    if last:
        headers["last"] = True
    if extra_headers:
        headers.update(extra_headers)
    message: dict[str, object] = {"headers": headers, "key": key, "value": value}
    if old_value is not None:
        message["old_value"] = old_value
    return _encode(message)


def snapshot_end(xmin: int, xmax: int, xip: Iterable[int]) -> bytes:
    """The ``snapshot-end`` control message; xid8 values as strings."""
    headers = {
        "control": "snapshot-end",
        "xmin": str(xmin),
        "xmax": str(xmax),
        "xip_list": [str(x) for x in xip],
    }
    return _encode({"headers": headers})


def up_to_date(global_last_seen_lsn: int) -> bytes:
    """The ``up-to-date`` control message."""
    return UP_TO_DATE_PREFIX + str(global_last_seen_lsn).encode() + b'"}}'


def json_array(items: Iterable[bytes]) -> bytes:
    """Join pre-serialised messages into a JSON array."""
    return b"[" + b",".join(items) + b"]"
