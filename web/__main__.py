"""``python -m web migrate`` applies the schema; ``python -m web serve`` runs the app."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from web.config import ConfigError, Settings, argument_parser, load_settings

log = logging.getLogger("web")


def _migrate(settings: Settings) -> int:
    from web.migrate import MigrationError, migrate

    assert settings.database_url is not None
    try:
        applied = migrate(
            settings.database_url, settings.migrations_dir, publication=settings.publication
        )
    except MigrationError as exc:
        print(f"web: {exc}", file=sys.stderr)
        return 1
    print(f"applied {len(applied)} migration(s)" + "".join(f"\n  {name}" for name in applied))
    return 0


def _serve(settings: Settings) -> int:
    import uvicorn

    from shapes.collector import tune_garbage_collector
    from web.app import create_app
    from web.ui_static import mount_ui

    if settings.secret is None:
        print("web: set WEB_SECRET (or --secret) to sign session tokens", file=sys.stderr)
        return 2
    app = create_app(settings)
    mount_ui(app)
    tune_garbage_collector()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        proxy_headers=True,
        forwarded_allow_ips=settings.trusted_proxies,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = argument_parser().parse_args(args)  # exits 2 on an unknown flag
    try:
        settings = load_settings(args)
    except ConfigError as exc:
        print(f"web: {exc}", file=sys.stderr)
        return 2
    if settings.database_url is None:
        print("web: set WEB_DATABASE_URL or DATABASE_URL (or --database-url)", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per relayed request
    if command.command == "migrate":
        return _migrate(settings)
    return _serve(settings)


if __name__ == "__main__":
    sys.exit(main())
