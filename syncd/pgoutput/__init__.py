"""Sans-IO decoding of the ``pgoutput`` logical replication protocol and its CopyBoth framing.

Layer: ``syncd.pgoutput`` (pure: no asyncio, no psycopg). :mod:`syncd.replication` owns the
socket and feeds bytes in.
"""

from syncd.pgoutput.copyboth import (
    PrimaryKeepalive,
    XLogData,
    build_standby_status,
    format_lsn,
    parse_copy_data,
    parse_keepalive,
    parse_lsn,
    parse_xlogdata,
    pg_now_us,
)
from syncd.pgoutput.decoder import PgoutputDecoder, decode_tuple
from syncd.pgoutput.errors import PgoutputError
from syncd.pgoutput.messages import (
    UNCHANGED_TOAST,
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    Relation,
    RelationColumn,
    RowData,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    Type,
    UnchangedToast,
    Update,
    Value,
    pg_timestamp_to_datetime,
)

__all__ = [
    "UNCHANGED_TOAST",
    "Begin",
    "Commit",
    "Delete",
    "Insert",
    "LogicalMessage",
    "Message",
    "Origin",
    "PgoutputDecoder",
    "PgoutputError",
    "PrimaryKeepalive",
    "Relation",
    "RelationColumn",
    "RowData",
    "StreamAbort",
    "StreamCommit",
    "StreamStart",
    "StreamStop",
    "Truncate",
    "Type",
    "UnchangedToast",
    "Update",
    "Value",
    "XLogData",
    "build_standby_status",
    "decode_tuple",
    "format_lsn",
    "parse_copy_data",
    "parse_keepalive",
    "parse_lsn",
    "parse_xlogdata",
    "pg_now_us",
    "pg_timestamp_to_datetime",
]
