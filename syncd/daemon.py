"""The daemon: one engine, one replication stream and one HTTP server in one event loop.

Layer: ``syncd``. :class:`Syncd` is also the embedding entry point for programs that want to
run the whole daemon inside their own asyncio application.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import AsyncIterator, Callable, Iterator

import uvicorn
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from shapes.subquery import SubqueryLimits
from syncd.compactor import CompactionSettings
from syncd.config import Settings
from syncd.engine import Engine, EngineSettings
from syncd.errors import SlotConflict
from syncd.http import ApiSettings, ShapeApi, SyncdApp, create_app
from syncd.metrics import Metrics, MetricsEndpoint
from syncd.preflight import check_database, parse_database_url
from syncd.replication import ReplicationSettings, ReplicationStream
from syncd.retention import Retention, RetentionSettings
from syncd.send_deadline import with_send_deadline

log = logging.getLogger("syncd")

STATUS_LOG_INTERVAL = 30.0
KEEP_ALIVE_SECONDS = 20
"""How long an idle connection stays open for its next request. Clients follow shapes in a
loop, one request after another, some (an agents worker) thousands at once: with uvicorn's
default of 5 s they reconnected whenever a shape was quiet for a few seconds."""
STARTUP_POLL = 0.05
UNLIMITED_FILES_TARGET = 65_536
"""The soft open-file limit syncd asks for when the hard limit is unlimited."""


class ReplicationFailed(Exception):
    """The replication stream stopped on an error it cannot retry."""


class Syncd:
    """Everything ``python -m syncd`` runs, for one database."""

    def __init__(self, settings: Settings, conninfo: str) -> None:
        """Raises :class:`~syncd.preflight.StartupError` when ``conninfo`` does not parse."""
        parse_database_url(conninfo)
        self.settings = settings
        self.engine = Engine(
            EngineSettings(
                conninfo=conninfo,
                storage_dir=settings.storage_dir,
                slot=settings.slot,
                publication=settings.publication,
                chunk_bytes=settings.chunk_bytes,
                schema_check_interval=settings.schema_check_interval,
                max_subquery_values=settings.max_subquery_values,
                max_held_transactions=settings.max_held_transactions,
                subquery_limits=SubqueryLimits(
                    max_depth=settings.max_subquery_depth,
                    max_subqueries=settings.max_subqueries,
                ),
                compaction=CompactionSettings(
                    enabled=settings.compaction,
                    min_bytes=settings.compaction_min_bytes,
                    idle_min_bytes=min(settings.compaction_min_bytes, 64 << 10),
                    idle_seconds=settings.compaction_idle,
                ),
            )
        )
        # Streaming (proto 2, PG 14+; the stream falls back to proto 1 on older servers): large
        # transactions arrive while they run and are spooled to disk, not held in memory.
        self.stream = ReplicationStream(
            ReplicationSettings(
                conninfo=with_session_options(conninfo, settings.replication_options),
                slot=settings.slot,
                publication=settings.publication,
                proto_version=2,
                streaming=True,
                # position marks written after each subquery move-in query (see
                # syncd.subquery_shape): the stream learns at once that it has passed them
                messages=True,
            ),
            self.engine,
        )
        api_settings = ApiSettings(
            long_poll_timeout=settings.long_poll_timeout,
            send_timeout=settings.send_timeout,
            secret=settings.secret,
            allow_shape_deletion=settings.allow_shape_deletion,
            max_initial_requests=settings.max_initial_requests,
            max_existing_requests=settings.max_existing_requests,
            max_age=settings.cache_max_age,
            stale_age=settings.cache_stale_age,
        )
        self.api = ShapeApi(self.engine, api_settings, self.health)
        self.retention = Retention(
            RetentionSettings(
                shape_ttl=settings.shape_ttl,
                storage_quota=settings.storage_quota,
                min_free_bytes=settings.min_free_disk,
                interval=settings.retention_interval,
            ),
            shapes=lambda: list(self.engine.shapes.values()),
            retire=self.engine.delete,
            storage_dir=settings.storage_dir,
            shapes_dir=self.engine.shapes_dir,
        )
        self.metrics = Metrics()
        endpoint = MetricsEndpoint(
            self.metrics, self.engine, self.stream, self.api, self.retention, settings.secret
        )
        self.app: SyncdApp = create_app(self.api, metrics=endpoint)
        self._opened = False
        self._replication: asyncio.Task[None] | None = None

    def health(self) -> str:
        """``active`` once replication is streaming, ``starting`` before."""
        return "active" if self._opened and self.stream.connected else "starting"

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Syncd]:
        """Open the engine and stream changes until the block exits (no HTTP server).

        Raises:
            StartupError: a check before anything is created failed (see
                :mod:`syncd.preflight`).
        """
        settings = self.engine.settings
        await check_database(settings.conninfo, settings.publication, settings.slot)
        await self.engine.open()
        self._opened = True
        replication = asyncio.create_task(self.stream.run(), name="syncd-replication")
        self._replication = replication
        status = asyncio.create_task(self._log_status(), name="syncd-status")
        retention = None
        if self.retention.settings.active:
            retention = asyncio.create_task(self.retention.run(), name="syncd-retention")
        try:
            yield self
        finally:
            status.cancel()
            if retention is not None:
                retention.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await retention
            await self.stream.stop()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await replication
            with contextlib.suppress(asyncio.CancelledError):
                await status
            await self.engine.close()
            self._opened = False

    async def serve(self) -> None:
        """Run the daemon and its HTTP server until signalled.

        Raises:
            SlotConflict: the replication slot is in use by another process (or belongs to
                another database); the server is shut down first.
            ReplicationFailed: when the replication stream stops on another error it cannot
                retry; the server is shut down first so that a supervisor can restart the daemon.
        """
        config = uvicorn.Config(
            self.app,
            host=self.settings.host,
            port=self.settings.port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            server_header=False,
            proxy_headers=False,  # nothing in syncd reads the client's address or scheme
            http=with_send_deadline(AutoHTTPProtocol, self.settings.send_timeout),
        )
        server = _Server(config, self.api)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, setattr, server, "should_exit", True)
        async with self.running():
            assert self._replication is not None
            self._replication.add_done_callback(lambda _task: setattr(server, "should_exit", True))
            log.info(
                "serving the shape API on http://%s:%d", self.settings.host, self.settings.port
            )
            await server.serve()
            self._raise_if_replication_failed()

    async def wait_active(self) -> None:
        """Wait (inside :meth:`running`) until replication streams; bound it with a timeout.

        Raises:
            SlotConflict: the slot belongs to another process (or database).
            ReplicationFailed: the replication stream stopped before it got there for another
                reason.
        """
        while self.health() != "active":
            task = self._replication
            if task is not None and task.done():
                error = None if task.cancelled() else task.exception()
                if isinstance(error, SlotConflict):
                    raise error
                raise ReplicationFailed(f"replication stopped while starting: {error}")
            await asyncio.sleep(STARTUP_POLL)

    def _raise_if_replication_failed(self) -> None:
        task = self._replication
        if task is None or not task.done() or task.cancelled():
            return
        error = task.exception()
        if isinstance(error, SlotConflict):
            raise error
        if error is not None:
            raise ReplicationFailed(str(error)) from error

    async def _log_status(self) -> None:
        registry = self.engine.registry
        created, removed = registry.created, sum(registry.removed.values())
        while True:
            await asyncio.sleep(STATUS_LOG_INTERVAL)
            received, confirmed = self.stream.received_lsn, self.stream.confirmed_lsn
            # each creation is a DEBUG line only: at a thousand new shapes a second, an INFO
            # line each would be most of the log, and a noticeable part of the creation's cost
            now_created, now_removed = registry.created, sum(registry.removed.values())
            log.info(
                "replication: received %s, confirmed %s, lag %d bytes, %d shapes "
                "(%d created, %d removed since the last line)",
                lsn_text(received),
                lsn_text(confirmed),
                max(received - confirmed, 0),
                len(self.engine.shapes),
                now_created - created,
                now_removed - removed,
            )
            created, removed = now_created, now_removed


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling (the daemon's handlers stop it, then clean up)
    that releases live requests before waiting for open requests to finish."""

    def __init__(self, config: uvicorn.Config, api: ShapeApi) -> None:
        super().__init__(config)
        self.api = api

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.api.release_live_requests()
        await super().shutdown(sockets)


def raise_open_file_limit() -> tuple[int, int] | None:
    """Raise this process's soft limit on open files to its hard limit; ``(old, new)``, or
    ``None`` where there is no such limit (Windows) or nothing to raise.

    Every live connection and every shape log being written holds a descriptor; the common
    default soft limit of 1,024 would refuse connections long before anything else runs out.
    """
    try:
        import resource
    except ImportError:  # not on this platform
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, UNLIMITED_FILES_TARGET)
    if soft != resource.RLIM_INFINITY and soft >= target:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):  # e.g. above the kernel's per-process maximum
        return None
    return soft, target


def event_loop_factory(choice: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop constructor for ``choice`` (``auto``, ``uvloop`` or ``asyncio``).

    ``auto`` takes uvloop when it is installed: it serves many live connections with about
    half the CPU per delivered change that the standard loop needs.

    Raises:
        ModuleNotFoundError: ``uvloop`` was asked for and is not installed.
    """
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ModuleNotFoundError:
        if choice == "uvloop":
            raise
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def with_session_options(conninfo: str, options: str | None) -> str:
    """``conninfo`` with ``options`` (``-c name=value ...``) added to its ``options``."""
    if not options:
        return conninfo
    existing = conninfo_to_dict(conninfo).get("options")
    return make_conninfo(conninfo, options=f"{existing} {options}" if existing else options)


def lsn_text(lsn: int) -> str:
    """An LSN in Postgres' ``X/Y`` notation."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
