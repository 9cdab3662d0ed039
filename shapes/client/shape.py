"""``Shape``: the materialised rows of one :class:`ShapeStream`, shared by local subscribers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import httpx

from shapes.client.stream import Batch, LiveMode, Message, ShapeDefinition, ShapeStream
from shapes.client.transport import Transport
from shapes.materialise import MaterialisedShape
from shapes.offset import BEFORE_ALL, LogOffset, parse_offset
from shapes.xid import XID_SPACE, Snapshot

Callback = Callable[[Batch], None]
_END = object()
logger = logging.getLogger(__name__)


class Shape:
    """Rows of a shape kept current by a background task that reads one stream.

    ``rows`` maps each protocol key to its row (typed values). Subscribers get every batch,
    must-refetch batches included, *after* it has been applied to ``rows``. A subscriber that
    raises is logged with its exception; the other subscribers still get the batch and the
    shape keeps following the stream. The shape stops (``error`` set) only when the stream
    fails, ends or the shape is closed.
    """

    def __init__(self, stream: ShapeStream) -> None:
        self.stream = stream
        self._materialised = MaterialisedShape()
        self._callbacks: list[Callback] = []
        self._queues: set[asyncio.Queue[object]] = set()
        self._txids: set[int] = set()
        self._snapshot: Snapshot | None = None
        self._position: LogOffset = BEFORE_ALL
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._release: Callable[[], bool] | None = None
        self._on_finish: Callable[[], None] | None = None

    @property
    def rows(self) -> dict[str, dict[str, Any]]:
        """Current rows by key."""
        return self._materialised.rows

    @property
    def is_up_to_date(self) -> bool:
        """True when the last applied batch ended with ``up-to-date``."""
        return self._materialised.up_to_date

    @property
    def error(self) -> BaseException | None:
        """The exception that stopped the stream, if any."""
        return self._error

    @property
    def is_running(self) -> bool:
        """True while the shape follows its stream (or has not been started yet)."""
        return self._error is None and (self._task is None or not self._task.done())

    def start(self) -> Shape:
        """Start reading the stream (idempotent); needs a running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def close(self) -> None:
        """Drop this reference; the stream stops when the last shared reference is closed."""
        if self._release is not None and not self._release():
            return
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.stream.aclose()
        self._finish(_Closed("shape closed"))

    async def __aenter__(self) -> Shape:
        return self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        """Call ``callback(batch)`` for every applied batch; returns the unsubscribe function."""
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    def changes(self) -> Changes:
        """Every batch applied from now on (subscribed at once); ends when the shape closes."""
        return Changes(self)

    async def wait_until_up_to_date(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until the shape has caught up with the server."""
        await self._wait(lambda: self._materialised.up_to_date, timeout)

    async def wait_for_txid(self, txid: int, timeout: float | None = 10.0) -> None:  # noqa: ASYNC109
        """Wait until transaction ``txid`` is reflected in ``rows``.

        True once a change carrying ``txid`` has been applied, or once the snapshot (its
        ``snapshot-end``) already saw it committed. ``txid`` may be the 32-bit
        ``pg_current_xact_id()::xid`` that changes carry or the 64-bit ``pg_current_xact_id()``.
        """
        await self._wait(lambda: self._txid_seen(txid), timeout)

    async def wait_for_offset(self, offset: str, timeout: float | None = 10.0) -> None:  # noqa: ASYNC109
        """Wait until ``rows`` include everything up to log offset ``offset``."""
        target = parse_offset(offset)
        await self._wait(lambda: self._position >= target, timeout)

    def _txid_seen(self, txid: int) -> bool:
        if txid & (XID_SPACE - 1) in self._txids:
            return True
        return self._snapshot is not None and self._snapshot.is_visible(txid)

    async def _wait(self, condition: Callable[[], bool], limit: float | None) -> None:
        if condition():
            return
        if self._error is not None:
            raise self._error
        self.start()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (condition, future)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(future, limit)
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)

    async def _run(self) -> None:
        try:
            async for batch in self.stream:
                self._apply(batch)
        except asyncio.CancelledError:
            self._finish(_Closed("shape task cancelled"))
            raise
        except Exception as error:
            logger.warning("shape %s stopped: %r", self.stream.definition.table, error)
            self._finish(error)
        else:
            self._finish(_Closed("stream ended"))

    def _apply(self, batch: Batch) -> None:
        for message in batch:
            self._note(message)
        self._materialised.apply_all(batch)
        if self.stream.offset != "-1":
            self._position = max(self._position, parse_offset(self.stream.offset))
        for callback in list(self._callbacks):
            try:
                callback(batch)
            except Exception:
                logger.exception("shape subscriber %r raised; the shape goes on", callback)
        for queue in self._queues:
            queue.put_nowait(batch)
        for condition, future in list(self._waiters):
            if not future.done() and condition():
                future.set_result(None)

    def _note(self, message: Message) -> None:
        headers = message.get("headers", {})
        control = headers.get("control")
        if control == "must-refetch":
            self._txids.clear()
            self._snapshot = None
            self._position = BEFORE_ALL
        elif control == "snapshot-end":
            xip = tuple(int(x) for x in headers.get("xip_list", ()))
            self._snapshot = Snapshot(int(headers["xmin"]), int(headers["xmax"]), xip)
        elif "event" in headers:  # move-in / move-out of a subquery shape
            self._txids.update(int(t) for t in headers.get("txids", ()))
        elif "lsn" in headers:
            self._txids.update(int(t) for t in headers.get("txids", ()))
            position = LogOffset(int(headers["lsn"]), int(headers.get("op_position", 0)))
            self._position = max(self._position, position)

    def _finish(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        if self._on_finish is not None:
            self._on_finish()
        for _, future in self._waiters:
            if not future.done():
                future.set_exception(error)
        for queue in self._queues:
            queue.put_nowait(_END)


class Changes:
    """Async iterator over the batches a :class:`Shape` applies after its creation."""

    def __init__(self, shape: Shape) -> None:
        self._shape = shape
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        shape._queues.add(self._queue)

    def __aiter__(self) -> Changes:
        return self

    async def __anext__(self) -> Batch:
        item = await self._queue.get()
        if item is _END:
            self.close()
            error = self._shape.error
            if error is not None and not isinstance(error, _Closed):
                raise error
            raise StopAsyncIteration
        assert isinstance(item, list)
        return item

    def close(self) -> None:
        """Stop receiving batches."""
        self._shape._queues.discard(self._queue)

    async def aclose(self) -> None:
        """Stop receiving batches (async-generator style)."""
        self.close()


class _Closed(RuntimeError):
    """The error of a shape closed by its owner."""


_RegistryKey = tuple[
    str,
    ShapeDefinition,
    LiveMode,
    tuple[tuple[str, str], ...],
    httpx.AsyncClient | Transport | None,
]


class ShapeRegistry:
    """Shares one :class:`Shape` (and one HTTP stream) per request: the same URL, definition,
    live mode, headers and client (or transport).

    Headers are part of the key because they usually carry the caller's credentials: two
    callers who authenticate differently may be allowed different rows, so they never share.
    A shape that has stopped (its stream failed or ended, or it was closed) is dropped at once:
    the next :meth:`get` starts a fresh one, and closing a reference to the stopped shape never
    counts against its successor.
    """

    def __init__(self) -> None:
        self._shapes: dict[_RegistryKey, tuple[Shape, int]] = {}

    def __len__(self) -> int:
        return len(self._shapes)

    def get(
        self,
        url: str,
        definition: ShapeDefinition,
        *,
        live_mode: LiveMode = "long-poll",
        headers: dict[str, str] | None = None,
        client: httpx.AsyncClient | None = None,
        transport: Transport | None = None,
    ) -> Shape:
        """The running shared shape for this request, started if new; ``close()`` it."""
        header_items = tuple(sorted((k.lower(), v) for k, v in (headers or {}).items()))
        key: _RegistryKey = (url, definition, live_mode, header_items, transport or client)
        if key in self._shapes:
            shape, count = self._shapes[key]
            if shape.is_running:
                self._shapes[key] = (shape, count + 1)
                return shape
            del self._shapes[key]
        stream = ShapeStream(
            url,
            definition,
            live_mode=live_mode,
            headers=headers,
            client=client,
            transport=transport,
        )
        shape = Shape(stream)

        def release() -> bool:
            """Drop one reference; True when it was the last (or the shape was dropped)."""
            entry = self._shapes.get(key)
            if entry is None or entry[0] is not shape:
                return True
            if entry[1] > 1:
                self._shapes[key] = (shape, entry[1] - 1)
                return False
            del self._shapes[key]
            return True

        def forget() -> None:
            entry = self._shapes.get(key)
            if entry is not None and entry[0] is shape:
                del self._shapes[key]

        shape._release = release
        shape._on_finish = forget
        self._shapes[key] = (shape, 1)
        return shape.start()


default_registry = ShapeRegistry()


def get_shape(
    url: str,
    definition: ShapeDefinition,
    *,
    live_mode: LiveMode = "long-poll",
    headers: dict[str, str] | None = None,
) -> Shape:
    """A shared, started :class:`Shape` from the default registry; ``await shape.close()``."""
    return default_registry.get(url, definition, live_mode=live_mode, headers=headers)
