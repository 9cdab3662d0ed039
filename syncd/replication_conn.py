"""The replication connection's settings and text: conninfo, session settings, the
``START_REPLICATION`` command, quoting, result values and server errors.

Layer: ``syncd`` (pure apart from psycopg's conninfo helpers and result accessors).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq.abc import PGresult

from syncd.pgoutput import format_lsn

__all__ = ["SESSION_OPTIONS", "ReplicationError", "ReplicationSettings", "replication_conninfo"]

SESSION_OPTIONS: Final = (
    "-c DateStyle=ISO,DMY -c TimeZone=UTC -c extra_float_digits=1"
    " -c IntervalStyle=iso_8601 -c bytea_output=hex"
)
"""Session settings of the replication connection (canonical text output of values)."""

_SLOT_NAME_RE: Final = re.compile(r"[a-z0-9_]{1,63}")
_OPTION_NAME_RE: Final = re.compile(r"[a-z_][a-z0-9_]*")
_DURATION_RE: Final = re.compile(r"\s*(\d+)\s*(us|ms|s|min|h|d)?\s*")
_DURATION_UNITS: Final = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_MIN_STREAMING_SERVER: Final = 140000


@dataclass
class ReplicationSettings:
    """What to replicate and how. Times are in seconds."""

    conninfo: str
    """A normal (non-replication) conninfo; replication parameters are added to it."""
    slot: str
    publication: str
    proto_version: int = 1
    status_interval: float = 10.0
    """Maximum time between standby status updates."""
    cap_status_interval: bool = True
    """Also send a status at least every ``wal_sender_timeout / 3`` (as read from the server),
    so the connection survives even if a reply to a keepalive comes late."""
    streaming: bool | str = False
    """pgoutput ``streaming``: ``True`` for ``'on'``, or a value such as ``'parallel'``."""
    messages: bool = False
    """pgoutput ``messages``: also receive ``pg_logical_emit_message`` messages."""
    binary: bool = False
    """pgoutput ``binary``: values as binary ``bytes`` instead of text."""
    extra_options: Mapping[str, str] = field(default_factory=dict)
    """Further pgoutput options, passed verbatim (e.g. ``{"origin": "none"}`` on PG16+)."""
    yield_every: int = 1000
    """Yield to the event loop after this many messages in a row."""
    idle_interval: float = 1.0
    """Call ``on_idle`` at least this often while messages keep coming."""
    idle_every: int = 10_000
    """... and at least every this many messages."""
    min_status_interval: float = 0.2
    """Delay a status update after the confirmed LSN advanced by at most this much."""
    backoff_initial: float = 0.1
    backoff_max: float = 10.0
    connect_timeout: float = 30.0
    stop_timeout: float = 5.0
    """How long :meth:`ReplicationStream.stop` waits for the server to end COPY cleanly."""

    def __post_init__(self) -> None:
        if not _SLOT_NAME_RE.fullmatch(self.slot):
            raise ValueError(f"invalid replication slot name {self.slot!r}: want [a-z0-9_]{{1,63}}")
        if not self.publication:
            raise ValueError("publication name must not be empty")
        for name in self.extra_options:
            if not _OPTION_NAME_RE.fullmatch(name):
                raise ValueError(f"invalid pgoutput option name {name!r}")

    def start_command(self, start_lsn: int, server_version: int | None = None) -> bytes:
        """The ``START_REPLICATION`` command for ``start_lsn``.

        With a ``server_version`` below 14 (``140000``), streaming is left out and the protocol
        version capped at 1.
        """
        streaming = self.streaming
        proto_version = self.proto_version
        messages = self.messages
        if server_version is not None and server_version < _MIN_STREAMING_SERVER:
            streaming = False
            messages = False  # pgoutput's messages option is as new as streaming (14)
            proto_version = min(proto_version, 1)
        options: dict[str, str] = {
            "proto_version": str(proto_version),
            "publication_names": _quote_ident(self.publication),
        }
        if streaming:
            options["streaming"] = "on" if streaming is True else str(streaming)
        if messages:
            options["messages"] = "true"
        if self.binary:
            options["binary"] = "true"
        options.update(self.extra_options)
        rendered = ", ".join(f"{name} {_quote_literal(value)}" for name, value in options.items())
        return (
            f"START_REPLICATION SLOT {_quote_ident(self.slot)} LOGICAL "
            f"{format_lsn(start_lsn)} ({rendered})"
        ).encode()


class ReplicationError(Exception):
    """The server reported an error on the replication connection."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def replication_conninfo(conninfo: str) -> str:
    """``conninfo`` plus ``replication=database`` and the canonical session settings."""
    params = conninfo_to_dict(conninfo)
    existing = params.get("options")
    extra: dict[str, str] = {
        "replication": "database",
        "options": f"{SESSION_OPTIONS} {existing}" if existing else SESSION_OPTIONS,
    }
    if "client_encoding" not in params:
        extra["client_encoding"] = "UTF8"
    if "application_name" not in params:
        extra["application_name"] = "syncd-replication"
    return make_conninfo(conninfo, **extra)


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _text(res: PGresult, row: int, col: int) -> str | None:
    value = res.get_value(row, col)
    return None if value is None else bytes(value).decode()


def _parse_duration(text: str | None) -> float:
    """Parse a GUC duration as ``SHOW`` prints it (``60s``, ``2min``, ``0``) into seconds."""
    if not text:
        return 0.0
    match = _DURATION_RE.fullmatch(text)
    if match is None:
        return 0.0
    return int(match.group(1)) * _DURATION_UNITS[match.group(2) or "ms"]


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
