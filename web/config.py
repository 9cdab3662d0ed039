"""The web app's settings, read from the command line and the environment.

Layer: ``web``. Every option has an environment variable (``WEB_*``; the database URL also falls
back to ``DATABASE_URL``, syncd's URL to ``BURN_SYNCD_URL``); command-line flags win over the
environment.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

MIN_SECRET_LENGTH = 32
FALLBACK_VARIABLES = {"database_url": "DATABASE_URL", "syncd_url": "BURN_SYNCD_URL"}
"""Variables read when a setting's own ``WEB_*`` variable is not set."""


class ConfigError(ValueError):
    """A setting is missing or malformed."""


@dataclass(frozen=True)
class Settings:
    """Everything the web app is configured with."""

    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 4000
    secret: str | None = field(default=None, repr=False)
    """Signs session tokens; shared by every process of the app."""
    session_ttl: float = 7 * 24 * 3600.0
    cookie_secure: bool = False
    pool_size: int = 10
    sign_in_window: float = 900.0
    sign_in_account_limit: int = 5
    sign_in_client_limit: int = 20
    sign_up_client_limit: int = 10
    max_threads_per_user: int = 50
    trusted_proxies: str = "127.0.0.1"
    """Addresses whose ``X-Forwarded-For`` names the client (comma-separated, or ``*``)."""
    publication: str = "syncd_publication"
    syncd_url: str = "http://127.0.0.1:3000"
    """Where syncd serves shapes; the sync routes relay to it."""
    syncd_secret: str | None = field(default=None, repr=False)
    """syncd's ``--secret``, when it runs with one."""
    migrations_dir: Path = Path(__file__).resolve().parent.parent / "sql"
    log_level: str = "INFO"


HELP: dict[str, str] = {
    "database_url": "Postgres URL or conninfo (also DATABASE_URL)",
    "host": "address to listen on (default 127.0.0.1)",
    "port": "port to listen on (default 4000)",
    "secret": f"key that signs session tokens, at least {MIN_SECRET_LENGTH} characters",
    "session_ttl": "seconds a session lasts (default 7 days)",
    "cookie_secure": "send the session cookie over HTTPS only (default off)",
    "pool_size": "database connections per process (default 10)",
    "sign_in_window": "seconds over which sign-in attempts are counted (default 900)",
    "sign_in_account_limit": "failed sign-ins per account in the window (default 5)",
    "sign_in_client_limit": "failed sign-ins per client address in the window (default 20)",
    "sign_up_client_limit": "sign-ups per client address in the window (default 10)",
    "max_threads_per_user": "threads a user may own (default 50)",
    "trusted_proxies": "proxies trusted to name the client in X-Forwarded-For (127.0.0.1)",
    "publication": "syncd's publication, where migrations publish the tables",
    "syncd_url": "syncd's base URL, relayed to by /api/sync/* (also BURN_SYNCD_URL)",
    "syncd_secret": "syncd's --secret, when it runs with one",
    "migrations_dir": "directory of the numbered SQL migrations (default: the repository's sql/)",
    "log_level": "logging level (default INFO)",
}


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _convert(name: str, kind: Any, text: str) -> Any:
    converters: dict[Any, Any] = {
        "bool": _parse_bool,
        "int": int,
        "float": float,
        "Path": Path,
        "str": str,
        "str | None": str,
    }
    try:
        return converters[kind](text)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from exc


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from ``environ`` (default ``os.environ``), overridden by flags in ``argv``."""
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="python -m web", add_help=False)
    _add_setting_flags(parser)
    flags, _ = parser.parse_known_args(argv)
    values: dict[str, Any] = {}
    for item in fields(Settings):
        text = getattr(flags, item.name)
        if text is None:
            text = env.get("WEB_" + item.name.upper())
        if text is None and item.name in FALLBACK_VARIABLES:
            text = env.get(FALLBACK_VARIABLES[item.name])
        if text is not None:
            values[item.name] = _convert(item.name, item.type, text)
    settings = replace(Settings(), **values)
    if settings.secret is not None and len(settings.secret) < MIN_SECRET_LENGTH:
        raise ConfigError(f"secret: use at least {MIN_SECRET_LENGTH} characters")
    return settings


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    for item in fields(Settings):
        flag = "--" + item.name.replace("_", "-")
        parser.add_argument(
            flag, dest=item.name, help=f"{HELP[item.name]} [WEB_{item.name.upper()}]"
        )


def argument_parser() -> argparse.ArgumentParser:
    """The command line: a command and the settings' flags (``--help`` lists them)."""
    parser = argparse.ArgumentParser(prog="python -m web", description="The Burn web app.")
    parser.add_argument("command", choices=["migrate", "serve"])
    _add_setting_flags(parser)
    return parser
