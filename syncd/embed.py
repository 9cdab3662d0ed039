"""Run syncd inside an existing asyncio program: no HTTP server, no port.

Layer: ``syncd``. :class:`EmbeddedSyncd` runs the engine and the replication stream in the
caller's event loop and answers shape requests through an in-process transport
(:class:`~syncd.asgi_transport.StreamingASGITransport`): requests never leave the process, yet
they go through the same ASGI app (and the same protocol) as ``python -m syncd``, live
long-polls and SSE streams included.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, Final

import httpx

from shapes.client import Shape, ShapeDefinition, ShapeStream
from syncd.asgi_transport import StreamingASGITransport
from syncd.config import Settings, check_settings
from syncd.daemon import Syncd
from syncd.engine import Engine

EMBEDDED_BASE_URL: Final = "http://syncd.embedded"
STOP_GRACE: Final = 1.0
"""Seconds :meth:`EmbeddedSyncd.stop` lets released requests finish before cancelling them."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


class EmbeddedSyncd:
    """syncd (engine + replication) in this event loop, served over an in-process transport.

    ``EmbeddedSyncd(database_url, storage_dir, **settings)`` takes any other
    :class:`~syncd.config.Settings` field as a keyword (``slot=``, ``secret=``, ...). Entering
    it opens the engine, starts replication and waits until replication streams; leaving it
    stops both. Clients from :meth:`client` (and streams from :meth:`stream`) survive
    :meth:`restart`: while syncd is down their requests fail like a refused connection
    (``httpx.ConnectError``), which :class:`~shapes.client.ShapeStream` retries.
    """

    shape_url: Final = EMBEDDED_BASE_URL + "/v1/shape"

    def __init__(
        self,
        database_url: str,
        storage_dir: str | Path,
        *,
        start_timeout: float = 30.0,
        **settings: Any,
    ) -> None:
        self.settings = Settings(
            database_url=database_url, storage_dir=Path(storage_dir), **settings
        )
        check_settings(self.settings)
        self.database_url = database_url
        self.start_timeout = start_timeout
        self._syncd: Syncd | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._requests: set[asyncio.Task[None]] = set()
        self._shared: httpx.AsyncClient | None = None

    @property
    def syncd(self) -> Syncd:
        """The running :class:`~syncd.daemon.Syncd`."""
        if self._syncd is None:
            raise RuntimeError("EmbeddedSyncd is not running")
        return self._syncd

    @property
    def engine(self) -> Engine:
        """The running engine, for advanced use."""
        return self.syncd.engine

    async def __aenter__(self) -> EmbeddedSyncd:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
        if self._shared is not None:
            await self._shared.aclose()
            self._shared = None

    async def start(self) -> None:
        """Open the engine, start replication and wait until it streams.

        Raises:
            SlotInUse: another process streams from the slot (the message names it).
            ReplicationFailed: replication stopped on another error it cannot retry.
            TimeoutError: replication was not streaming after ``start_timeout`` seconds.
        """
        if self._syncd is not None:
            raise RuntimeError("EmbeddedSyncd is already running")
        syncd = Syncd(self.settings, self.database_url)
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(syncd.running())
        try:
            async with asyncio.timeout(self.start_timeout):
                await syncd.wait_active()
        except BaseException:
            await stack.aclose()
            raise
        self._syncd, self._stack = syncd, stack

    async def stop(self) -> None:
        """Answer held live requests, fail the rest (as a dropped connection would), then stop
        syncd."""
        syncd, stack, self._syncd, self._stack = self._syncd, self._stack, None, None
        requests, self._requests = set(self._requests), set()
        if syncd is not None and requests:
            syncd.api.release_live_requests()
            await asyncio.wait(requests, timeout=STOP_GRACE)
        for task in requests:
            task.cancel()
        for task in requests:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if stack is not None:
            await stack.aclose()

    async def restart(self) -> None:
        """Stop syncd and start a new one on the same storage directory and slot."""
        await self.stop()
        await self.start()

    async def _app(self, scope: Scope, receive: Any, send: Any) -> None:
        """The ASGI app behind every client: whichever syncd is running now."""
        syncd = self._syncd
        if syncd is None:
            raise httpx.ConnectError("embedded syncd is not running")
        task = asyncio.ensure_future(syncd.app(scope, receive, send))
        self._requests.add(task)
        try:
            await asyncio.wait({task})
        finally:
            self._requests.discard(task)
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if task.cancelled():
            raise httpx.ReadError("embedded syncd stopped during the request")
        task.result()

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """A new ``httpx.AsyncClient`` whose requests go to this syncd in-process.

        Keyword arguments go to ``httpx.AsyncClient`` (``timeout``, ``event_hooks``, ...); the
        caller closes the client. Relative URLs resolve against ``http://syncd.embedded``.
        """
        kwargs.setdefault("base_url", EMBEDDED_BASE_URL)
        kwargs.setdefault("timeout", httpx.Timeout(10.0, read=65.0))
        return httpx.AsyncClient(transport=StreamingASGITransport(self._app), **kwargs)

    @property
    def default_client(self) -> httpx.AsyncClient:
        """The client :meth:`stream` and :meth:`shape` use by default; closed on exit."""
        if self._shared is None:
            self._shared = self.client()
        return self._shared

    def stream(
        self,
        definition: ShapeDefinition | str,
        *,
        client: httpx.AsyncClient | None = None,
        **kw: Any,
    ) -> ShapeStream:
        """A :class:`~shapes.client.ShapeStream` of ``definition`` (or a table name).

        Other keywords (``live_mode=``, ``handle=``, ``offset=``, ...) go to ``ShapeStream``.
        """
        if isinstance(definition, str):
            definition = ShapeDefinition.of(definition)
        return ShapeStream(self.shape_url, definition, client=client or self.default_client, **kw)

    def shape(self, definition: ShapeDefinition | str, **kw: Any) -> Shape:
        """A :class:`~shapes.client.Shape` over :meth:`stream`; use ``async with``."""
        return Shape(self.stream(definition, **kw))
