"""The daemon: one engine, one replication stream and one HTTP server in one event loop.

Layer: ``syncd``. :class:`Syncd` is also the embedding entry point for programs that want to
run the whole daemon inside their own asyncio application.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette

from syncd.config import Settings
from syncd.engine import Engine, EngineSettings
from syncd.http import ApiSettings, ShapeApi, create_app
from syncd.replication import ReplicationSettings, ReplicationStream

log = logging.getLogger("syncd")

STATUS_LOG_INTERVAL = 30.0


class Syncd:
    """Everything ``python -m syncd`` runs, for one database."""

    def __init__(self, settings: Settings, conninfo: str) -> None:
        self.settings = settings
        self.engine = Engine(
            EngineSettings(
                conninfo=conninfo,
                storage_dir=settings.storage_dir,
                slot=settings.slot,
                publication=settings.publication,
                chunk_bytes=settings.chunk_bytes,
            )
        )
        self.stream = ReplicationStream(
            ReplicationSettings(
                conninfo=conninfo, slot=settings.slot, publication=settings.publication
            ),
            self.engine,
        )
        api_settings = ApiSettings(
            long_poll_timeout=settings.long_poll_timeout,
            secret=settings.secret,
            allow_shape_deletion=settings.allow_shape_deletion,
        )
        self.api = ShapeApi(self.engine, api_settings, self.health)
        self.app: Starlette = create_app(self.api)
        self._opened = False

    def health(self) -> str:
        """``active`` once replication is streaming, ``starting`` before."""
        return "active" if self._opened and self.stream.connected else "starting"

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Syncd]:
        """Open the engine and stream changes until the block exits (no HTTP server)."""
        await self.engine.open()
        self._opened = True
        replication = asyncio.create_task(self.stream.run(), name="syncd-replication")
        status = asyncio.create_task(self._log_status(), name="syncd-status")
        try:
            yield self
        finally:
            status.cancel()
            await self.stream.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await replication
            with contextlib.suppress(asyncio.CancelledError):
                await status
            await self.engine.close()
            self._opened = False

    async def serve(self) -> None:
        """Run the daemon and its HTTP server until cancelled or signalled."""
        config = uvicorn.Config(
            self.app,
            host=self.settings.host,
            port=self.settings.port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        async with self.running():
            log.info(
                "serving the shape API on http://%s:%d", self.settings.host, self.settings.port
            )
            await server.serve()

    async def _log_status(self) -> None:
        while True:
            await asyncio.sleep(STATUS_LOG_INTERVAL)
            received, confirmed = self.stream.received_lsn, self.stream.confirmed_lsn
            log.info(
                "replication: received %s, confirmed %s, lag %d bytes, %d shapes",
                lsn_text(received),
                lsn_text(confirmed),
                max(received - confirmed, 0),
                len(self.engine.shapes),
            )


def lsn_text(lsn: int) -> str:
    """An LSN in Postgres' ``X/Y`` notation."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
