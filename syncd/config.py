"""Daemon settings, read once from the command line and the environment.

Layer: ``syncd``. Every option has an environment variable (``SYNCD_*``; the database URL also
falls back to ``DATABASE_URL``); command-line flags win over the environment.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NoReturn


@dataclass(frozen=True)
class Settings:
    """Everything the daemon is configured with."""

    database_url: str | None = None
    storage_dir: Path = Path(".syncd")
    host: str = "127.0.0.1"
    port: int = 3000
    slot: str = "syncd_slot"
    publication: str = "syncd_publication"
    long_poll_timeout: float = 20.0
    send_timeout: float = 30.0
    chunk_bytes: int = 10 * 1024 * 1024
    schema_check_interval: float = 30.0
    max_subquery_values: int = 100_000
    max_subquery_depth: int = 4
    max_subqueries: int = 16
    max_held_transactions: int = 1000
    max_initial_requests: int = 300
    max_existing_requests: int = 10_000
    cache_max_age: int = 60
    """``max-age`` of catch-up responses (seconds)."""
    cache_stale_age: int = 300
    """``stale-while-revalidate`` of catch-up responses (seconds)."""
    replication_options: str | None = None
    """Extra ``-c name=value`` settings for the replication (walsender) connection."""
    secret: str | None = field(default=None, repr=False)
    allow_shape_deletion: bool = False
    shape_ttl: float | None = None
    """Seconds a shape may go unused before it is removed (``None``: kept until deleted)."""
    storage_quota: int | None = None
    """Most bytes the shape logs may take; the least recently used go first beyond it."""
    min_free_disk: int | None = None
    """Fewest bytes to keep free on the storage filesystem, by evicting shapes."""
    retention_interval: float = 10.0
    """Seconds between retention sweeps (expiry and quota)."""
    compaction: bool = True
    """Compact shape logs in the background (``syncd.compactor``)."""
    compaction_min_bytes: int = 1 << 20
    """Growth of a change log, in bytes, that makes it due for compaction."""
    compaction_idle: float = 10.0
    """Seconds without changes after which a shape's shorter tail is compacted too."""
    log_level: str = "INFO"
    log_format: str = "text"
    """``text`` (one readable line per record) or ``json`` (one JSON object per line)."""
    event_loop: str = "auto"
    """``auto`` (uvloop when installed), ``uvloop`` or ``asyncio``."""
    dev: bool = False


EVENT_LOOPS = ("auto", "uvloop", "asyncio")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


_ON: Final = ("1", "true", "yes", "on")
_OFF: Final = ("0", "false", "no", "off")


def _boolean(text: str) -> bool:
    """``on``/``off`` and their usual spellings.

    Raises:
        ValueError: for anything else.
    """
    lowered = text.strip().lower()
    if lowered in _ON:
        return True
    if lowered in _OFF:
        return False
    raise ValueError(f"not on or off: {text!r}")


def parse_size(text: str) -> int:
    """A byte count: a number with an optional binary unit (``512``, ``500M``, ``10GiB``,
    ``1.5T``; K, M, G and T are powers of 1,024).

    Raises:
        ValueError: when ``text`` is not such a size.
    """
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a size: {text!r}")
    number, unit, _suffix = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.lower()])


_SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")
"""What Postgres accepts as a replication slot name."""
_CHOICES: dict[str, tuple[str, ...]] = {
    "log_level": LOG_LEVELS,
    "log_format": LOG_FORMATS,
    "event_loop": EVENT_LOOPS,
}
_CHOICE_TYPES: dict[str, Callable[[str], str]] = {
    "log_level": str.upper,
    "log_format": str.lower,
    "event_loop": str.lower,
}


_OPTIONS: tuple[tuple[str, str, Callable[[str], object], str], ...] = (
    ("database_url", "SYNCD_DATABASE_URL", str, "Postgres URL or conninfo (also DATABASE_URL)"),
    ("storage_dir", "SYNCD_STORAGE_DIR", Path, "directory for shape logs (default .syncd)"),
    ("host", "SYNCD_HOST", str, "address to listen on (default 127.0.0.1)"),
    ("port", "SYNCD_PORT", int, "port to listen on (default 3000)"),
    ("slot", "SYNCD_SLOT", str, "logical replication slot name (default syncd_slot)"),
    ("publication", "SYNCD_PUBLICATION", str, "publication name (default syncd_publication)"),
    ("long_poll_timeout", "SYNCD_LONG_POLL_TIMEOUT", float, "live request hold, seconds (20)"),
    ("send_timeout", "SYNCD_SEND_TIMEOUT", float, "seconds a reader may take to drain (30)"),
    ("chunk_bytes", "SYNCD_CHUNK_BYTES", int, "log chunk size threshold in bytes (10 MiB)"),
    (
        "schema_check_interval",
        "SYNCD_SCHEMA_CHECK_INTERVAL",
        float,
        "seconds between checks for dropped or altered tables (30)",
    ),
    (
        "max_subquery_values",
        "SYNCD_MAX_SUBQUERY_VALUES",
        int,
        "largest value set of one where-clause subquery; bigger ones get a 400 (100000)",
    ),
    (
        "max_subquery_depth",
        "SYNCD_MAX_SUBQUERY_DEPTH",
        int,
        "deepest nesting of IN (SELECT ...) subqueries in a where clause (4)",
    ),
    (
        "max_subqueries",
        "SYNCD_MAX_SUBQUERIES",
        int,
        "most IN (SELECT ...) subqueries in one where clause (16)",
    ),
    (
        "max_held_transactions",
        "SYNCD_MAX_HELD_TRANSACTIONS",
        int,
        "transactions a subquery shape may hold during a move-in before it is reset (1000)",
    ),
    (
        "max_initial_requests",
        "SYNCD_MAX_INITIAL_REQUESTS",
        int,
        "concurrent offset=-1 requests before 503 (300)",
    ),
    (
        "max_existing_requests",
        "SYNCD_MAX_EXISTING_REQUESTS",
        int,
        "other concurrent shape requests before 503 (10000)",
    ),
    (
        "cache_max_age",
        "SYNCD_CACHE_MAX_AGE",
        int,
        "max-age of catch-up responses, seconds (60)",
    ),
    (
        "cache_stale_age",
        "SYNCD_CACHE_STALE_AGE",
        int,
        "stale-while-revalidate of catch-up responses, seconds (300)",
    ),
    (
        "replication_options",
        "SYNCD_REPLICATION_OPTIONS",
        str,
        "settings for the replication connection, e.g. '-c logical_decoding_work_mem=64MB'",
    ),
    ("secret", "SYNCD_SECRET", str, "shared secret required as ?secret= (default: none)"),
    (
        "shape_ttl",
        "SYNCD_SHAPE_TTL",
        float,
        "seconds a shape may go unused before it is removed (default: kept until deleted)",
    ),
    (
        "storage_quota",
        "SYNCD_STORAGE_QUOTA",
        parse_size,
        "most disk the shape logs may take, e.g. 50G; least recently used shapes are evicted "
        "beyond it (default: none)",
    ),
    (
        "min_free_disk",
        "SYNCD_MIN_FREE_DISK",
        parse_size,
        "free space to keep on the storage filesystem, e.g. 2G, by evicting least recently "
        "used shapes (default: none)",
    ),
    (
        "retention_interval",
        "SYNCD_RETENTION_INTERVAL",
        float,
        "seconds between checks of the shape TTL and the storage quota (10)",
    ),
    (
        "compaction",
        "SYNCD_COMPACTION",
        _boolean,
        "compact shape logs in the background: on (default) or off",
    ),
    (
        "compaction_min_bytes",
        "SYNCD_COMPACTION_MIN_BYTES",
        parse_size,
        "growth of a shape's change log that makes it due for compaction, e.g. 1M (1M)",
    ),
    (
        "compaction_idle",
        "SYNCD_COMPACTION_IDLE",
        float,
        "seconds without changes after which a shape's shorter tail is compacted too (10)",
    ),
    ("log_level", "SYNCD_LOG_LEVEL", str.upper, "logging level (default INFO)"),
    ("log_format", "SYNCD_LOG_FORMAT", str.lower, "text (default) or json, one object per line"),
    ("event_loop", "SYNCD_EVENT_LOOP", str, "auto (uvloop when installed), uvloop or asyncio"),
)


class ConfigError(Exception):
    """A setting has an invalid value."""


def _truthy(text: str) -> bool:
    return text.strip().lower() in _ON


class _Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one line (the usage is long): the cause, and
    where to look."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}; see {self.prog} --help\n")


def program_name() -> str:
    """``syncd`` when run as the installed command, else ``python -m syncd``."""
    return "syncd" if Path(sys.argv[0]).name == "syncd" else "python -m syncd"


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m syncd`` argument parser."""
    parser = _Parser(
        prog=program_name(),
        description=(
            "Stream Postgres changes into durable shape logs and serve them with "
            "Electric's HTTP shape protocol (long-poll and SSE)."
        ),
        epilog="Every option can also be set with the environment variable shown.",
    )
    for name, env, _kind, text in _OPTIONS:
        flag = "--" + name.replace("_", "-")
        choices = _CHOICES.get(name)
        if choices is None:
            parser.add_argument(flag, dest=name, default=None, help=f"{text} [{env}]")
            continue
        parser.add_argument(
            flag,
            dest=name,
            default=None,
            type=_CHOICE_TYPES[name],
            choices=choices,
            help=f"{text} [{env}]",
        )
    parser.add_argument(
        "--allow-shape-deletion",
        action="store_true",
        default=None,
        help="enable DELETE /v1/shape [SYNCD_ALLOW_SHAPE_DELETION]",
    )
    parser.add_argument(
        "--dev",
        action="store_true",
        help="start an embedded Postgres (data in .dev/) when no database URL is set",
    )
    return parser


def load_settings(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Settings from flags, then ``SYNCD_*`` variables, then defaults.

    Raises:
        ConfigError: when a value does not parse.
    """
    env = os.environ if env is None else env
    args = build_parser().parse_args(argv)
    values: dict[str, object] = {}
    for name, variable, kind, _text in _OPTIONS:
        raw = getattr(args, name)
        if raw is None:
            raw = env.get(variable)
        if raw is None and name == "database_url":
            raw = env.get("DATABASE_URL")
        if raw is None or raw == "":
            continue
        try:
            values[name] = kind(raw)
        except ValueError as exc:
            raise ConfigError(f"invalid value for {variable}: {raw!r}") from exc
    deletion = args.allow_shape_deletion
    if deletion is None:
        deletion = _truthy(env.get("SYNCD_ALLOW_SHAPE_DELETION", ""))
    settings = Settings(**values, allow_shape_deletion=bool(deletion), dev=args.dev)  # type: ignore[arg-type]
    check_settings(settings)
    return settings


def check_settings(settings: Settings) -> None:
    """Check values that parse but make no sense together or alone.

    Raises:
        ConfigError: naming the setting (by its environment variable) and the rule.
    """
    if not 0 < settings.port < 65536:
        raise ConfigError(f"port out of range: {settings.port}")
    if settings.long_poll_timeout <= 0 or settings.long_poll_timeout > 40:
        raise ConfigError("SYNCD_LONG_POLL_TIMEOUT must be in (0, 40] seconds")
    if settings.send_timeout <= 0:
        raise ConfigError("SYNCD_SEND_TIMEOUT must be positive")
    if settings.max_initial_requests < 1 or settings.max_existing_requests < 1:
        raise ConfigError("request limits must be at least 1")
    if settings.schema_check_interval <= 0:
        raise ConfigError("SYNCD_SCHEMA_CHECK_INTERVAL must be positive")
    if (
        min(
            settings.max_subquery_values,
            settings.max_subquery_depth,
            settings.max_subqueries,
            settings.max_held_transactions,
        )
        < 1
    ):
        raise ConfigError(
            "SYNCD_MAX_SUBQUERY_VALUES, SYNCD_MAX_SUBQUERY_DEPTH, SYNCD_MAX_SUBQUERIES and "
            "SYNCD_MAX_HELD_TRANSACTIONS must be at least 1"
        )
    if settings.chunk_bytes < 1024:
        raise ConfigError("SYNCD_CHUNK_BYTES must be at least 1024")
    if settings.cache_max_age < 0 or settings.cache_stale_age < 0:
        raise ConfigError("SYNCD_CACHE_MAX_AGE and SYNCD_CACHE_STALE_AGE must not be negative")
    if settings.event_loop not in EVENT_LOOPS:
        raise ConfigError("SYNCD_EVENT_LOOP must be one of " + ", ".join(EVENT_LOOPS))
    if settings.shape_ttl is not None and settings.shape_ttl <= 0:
        raise ConfigError("SYNCD_SHAPE_TTL must be positive")
    if settings.storage_quota is not None and settings.storage_quota <= 0:
        raise ConfigError("SYNCD_STORAGE_QUOTA must be positive")
    if settings.min_free_disk is not None and settings.min_free_disk <= 0:
        raise ConfigError("SYNCD_MIN_FREE_DISK must be positive")
    if settings.retention_interval <= 0:
        raise ConfigError("SYNCD_RETENTION_INTERVAL must be positive")
    if settings.compaction_min_bytes < 1024:
        raise ConfigError("SYNCD_COMPACTION_MIN_BYTES must be at least 1K")
    if settings.compaction_idle <= 0:
        raise ConfigError("SYNCD_COMPACTION_IDLE must be positive")
    if settings.log_format not in LOG_FORMATS:
        raise ConfigError("SYNCD_LOG_FORMAT must be one of " + ", ".join(LOG_FORMATS))
    if settings.log_level.upper() not in LOG_LEVELS:
        raise ConfigError("SYNCD_LOG_LEVEL must be one of " + ", ".join(LOG_LEVELS))
    if not _SLOT_NAME.fullmatch(settings.slot):
        raise ConfigError(
            "SYNCD_SLOT must be 1 to 63 lower-case letters, digits and underscores "
            f"(got {settings.slot!r})"
        )
    if not settings.publication:
        raise ConfigError("SYNCD_PUBLICATION must not be empty")
    if settings.database_url is None and not settings.dev:
        raise ConfigError("no database: set SYNCD_DATABASE_URL / DATABASE_URL or pass --dev")
