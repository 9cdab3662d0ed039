"""``python -m syncd`` (and the ``syncd`` command): run the daemon.

A mistake in the settings exits with status 2, a database that is not ready for syncd (see
:mod:`syncd.preflight`) or a replication slot another process holds with status 1; each is one
line on stderr that names the cause and the fix, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from syncd.config import ConfigError, Settings, load_settings
from syncd.log_setup import configure_logging

log = logging.getLogger("syncd")


@contextlib.contextmanager
def _database(settings: Settings) -> Iterator[str]:
    if settings.database_url is not None:
        yield settings.database_url
        return
    from syncd.pgprovider import provide_postgres

    dev_dir = Path(".dev")
    with provide_postgres(dev_dir / "postgres") as server:
        (dev_dir / "dsn").write_text(server.dsn + "\n")
        log.info("using the embedded Postgres at %s (also in .dev/dsn)", server.dsn)
        yield server.dsn


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    try:
        settings = load_settings(argv)
    except ConfigError as exc:
        print(f"syncd: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    from shapes.collector import tune_garbage_collector
    from syncd.daemon import (
        ReplicationFailed,
        Syncd,
        event_loop_factory,
        raise_open_file_limit,
    )
    from syncd.errors import SlotConflict
    from syncd.preflight import StartupError

    try:
        new_loop = event_loop_factory(settings.event_loop)
    except ModuleNotFoundError:
        print("syncd: SYNCD_EVENT_LOOP=uvloop, but uvloop is not installed", file=sys.stderr)
        return 2
    raised = raise_open_file_limit()
    if raised is not None:
        log.info("open file limit raised from %d to %d", *raised)
    _log_compiled_modules()
    tune_garbage_collector()
    try:
        with _database(settings) as conninfo, contextlib.suppress(KeyboardInterrupt):
            with asyncio.Runner(loop_factory=new_loop) as runner:
                runner.run(Syncd(settings, conninfo).serve())
    except ReplicationFailed as exc:
        log.critical("replication failed, exiting: %s", exc)
        return 1
    except (SlotConflict, StartupError) as exc:
        log.critical("%s", exc)
        return 1
    return 0


def _log_compiled_modules() -> None:
    """Says whether the per-row path runs compiled (shapes.compiled), once its modules are in."""
    from shapes.compiled import COMPILED_MODULES, running_compiled

    compiled = running_compiled()
    if compiled:
        log.info("per-row path compiled (%d of %d modules)", len(compiled), len(COMPILED_MODULES))
    else:
        log.info("per-row path runs as pure Python")


if __name__ == "__main__":
    sys.exit(main())
