"""``ShapeStream``: one HTTP conversation with a shape endpoint, as batches of messages."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import gc
import random
import ssl
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import httpx
import msgspec

from shapes.client.decoding import BodyDecoder
from shapes.client.sse import SseDecoder
from shapes.client.transport import HttpxTransport, Transport, TransportFailure
from shapes.errors import InvalidRequest
from shapes.offset import LogOffset, parse_offset
from shapes.values import parse_schema

_RANDOM = random.Random()
"""This module's own generator: the process-wide one belongs to the embedding program."""

Message = dict[str, Any]
Batch = list[Message]
LiveMode = Literal["long-poll", "sse"]

_decode_json: Final = msgspec.json.Decoder().decode
"""JSON bytes to Python objects, as ``json.loads`` gives them, about 7x faster."""


@contextlib.contextmanager
def _collector_paused(shelter: _Shelter | None = None) -> Iterator[None]:
    """Hold the cyclic garbage collector while a body becomes messages.

    Decoding a large body makes hundreds of thousands of dicts and strings, none of them in a
    cycle; with the collector running, the young generation fills and is scanned again and
    again, and more slowly the more rows the caller holds. Paused, the objects are scanned
    once, at the next collection; not at all when ``shelter`` is sheltering the messages held
    (they join the others before the collector runs again).
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        if shelter is not None:
            shelter.keep_sheltered()
        gc.enable()


SHELTER_MESSAGES: Final = 10_000
"""From this many messages held for one batch, :class:`_Shelter` hides them from the collector."""


class _Shelter:
    """Hides the messages a stream holds for its next batch from the cyclic collector's passes.

    A catch-up holds every message until ``up-to-date`` (a batch is a consistent state). Each
    holds a few containers the collector tracks, none of them in a cycle; as they pile up,
    each full collection walks them all again, which doubled the time to read a 1M-row shape.
    Sheltered, they sit in the collector's permanent generation (``gc.freeze``) until the batch
    is handed over (``gc.unfreeze``), and are walked as usual from then on.

    Only while nothing else uses the permanent generation: a process that froze objects
    itself (a pre-forking server, say) keeps them frozen, and its streams do without.
    """

    __slots__ = ("_frozen",)

    def __init__(self) -> None:
        self._frozen = False

    def shelter(self, held: int) -> None:
        """``held`` messages wait for the next batch: shelter what was allocated meanwhile."""
        if held >= SHELTER_MESSAGES and (self._frozen or gc.get_freeze_count() == 0):
            gc.freeze()
            self._frozen = True

    def keep_sheltered(self) -> None:
        """Shelter what was allocated since the last call, if sheltering already."""
        if self._frozen:
            gc.freeze()

    def release(self) -> None:
        """The held messages are handed over (or dropped)."""
        if self._frozen:
            self._frozen = False
            gc.unfreeze()


MUST_REFETCH_MESSAGE: Final[Message] = {"headers": {"control": "must-refetch"}}
BACKOFF_INITIAL: Final = 0.1
BACKOFF_MAX: Final = 10.0
SHORT_SSE_SECONDS: Final = 1.0
MAX_SHORT_SSE: Final = 3
MAX_STALE_COPIES: Final = 3


class ShapeRequestError(Exception):
    """A 4xx answer other than 409: not retried. ``body`` holds the parsed JSON (or text)."""

    def __init__(self, status: int, body: Any, url: str) -> None:
        super().__init__(f"shape request failed with {status}: {body!r} ({url})")
        self.status = status
        self.body = body
        self.url = url


@dataclass(frozen=True)
class ShapeDefinition:
    """What identifies a shape: table, ``where`` with its ``params``, columns, replica, extras.

    Hashable, so that it can key the registry of shared shapes.
    """

    table: str
    where: str | None = None
    params: tuple[str, ...] = ()
    columns: tuple[str, ...] | None = None
    replica: Literal["default", "full"] | None = None
    extra: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def of(
        cls,
        table: str,
        *,
        where: str | None = None,
        params: Sequence[str] = (),
        columns: Sequence[str] | None = None,
        replica: Literal["default", "full"] | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> ShapeDefinition:
        """Build a definition from ordinary sequences and mappings."""
        return cls(
            table,
            where,
            tuple(params),
            None if columns is None else tuple(columns),
            replica,
            tuple(sorted((extra or {}).items())),
        )

    def query(self) -> dict[str, str]:
        """The definition's query parameters."""
        query = {"table": self.table}
        if self.where is not None:
            query["where"] = self.where
        for index, value in enumerate(self.params, start=1):
            query[f"params[{index}]"] = value
        if self.columns is not None:
            query["columns"] = ",".join(self.columns)
        if self.replica is not None:
            query["replica"] = self.replica
        query.update(self.extra)
        return query


@functools.cache
def shared_tls_context() -> ssl.SSLContext:
    """The TLS settings of every client a stream creates for itself.

    httpx's defaults (its CA bundle, ``SSL_CERT_FILE``/``SSL_CERT_DIR``), built once: building
    them loads the CA bundle, about 20 ms per client, which would dominate opening many streams.
    """
    return httpx.create_ssl_context()


def retry_after_seconds(value: str | None, now: float | None = None) -> float:
    """A ``Retry-After`` header (seconds or an HTTP date) in seconds; 0 when absent or bad."""
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(attempt: int, minimum: float = 0.0) -> float:
    """Full-jitter exponential backoff (0.1 s doubling to a 10 s cap), at least ``minimum``."""
    ceiling = min(BACKOFF_MAX, BACKOFF_INITIAL * 2**attempt)
    return max(minimum, _RANDOM.uniform(0.0, ceiling))


def _position(message: Message) -> LogOffset | None:
    headers = message.get("headers", {})
    lsn = headers.get("lsn")
    if lsn is None or "operation" not in headers:
        return None
    return LogOffset(int(lsn), int(headers.get("op_position", 0)))


def _parsed(offset: str) -> LogOffset | None:
    """``offset`` as a comparable position; ``None`` for a text that is not one."""
    try:
        return parse_offset(offset)
    except InvalidRequest:
        return None


def resume_offset(offset: str, last_change: LogOffset | None) -> str:
    """The exact position after a batch: ``offset`` (what the server said), or the position of
    the last change delivered when that is further on.

    Theory of operation: a resumed request gets the changes strictly after its offset. A
    long-poll ``electric-offset`` is the end of the chunk served, so it is at or after the last
    change in it. In SSE the only position the server sends is the ``up-to-date`` event's
    ``global_last_seen_lsn``, a transaction's LSN without the operation: ``<lsn>_0`` would
    have the server send that transaction's later operations again. The last change's own
    ``<lsn>_<op_position>`` is exact: its transaction's earlier operations came before it.
    """
    current = _parsed(offset)
    if last_change is None or (current is not None and current >= last_change):
        return offset
    return str(last_change)


class ShapeStream:
    """Async iterator over batches of protocol messages of one shape.

    Every batch but a must-refetch one ends with an ``up-to-date`` message. After a 409 the
    stream yields ``[{"headers": {"control": "must-refetch"}}]`` on its own: callers must clear
    what they have and expect the shape to be sent again from the start (the position is then
    the new handle and ``-1``; the expired handle is never accepted again, even from a cache).
    ``handle`` and ``offset`` always describe the position right after the last yielded batch;
    pass them back as ``handle=``/``offset=`` to resume a later stream there: the resumed
    stream delivers exactly the changes not yet delivered, in both live modes (the offset is
    the last change's ``<lsn>_<op_position>`` when the server's own is less precise). Values of
    ``value`` and ``old_value`` are converted with :mod:`shapes.values` (``parse_values=False``
    turns that off). Change messages at or before the position already delivered (the
    stream's own, or a real ``offset`` it was given) are never delivered again.
    """

    def __init__(
        self,
        url: str,
        definition: ShapeDefinition,
        *,
        handle: str | None = None,
        offset: str = "-1",
        live: bool = True,
        live_mode: LiveMode = "long-poll",
        headers: Mapping[str, str] | None = None,
        client: httpx.AsyncClient | None = None,
        parse_values: bool = True,
        transport: Transport | None = None,
    ) -> None:
        self.url = url
        self.definition = definition
        self.handle = handle
        self.offset = offset
        self.schema: dict[str, dict[str, Any]] = {}
        self._decoded_schema: dict[str, dict[str, Any]] | None = None
        self._body_decoder = BodyDecoder({})
        self.live = live
        self.live_mode = live_mode
        self.parse_values = parse_values
        self._headers = dict(headers or {})
        if transport is None:
            own = client is None
            client = client or httpx.AsyncClient(
                timeout=httpx.Timeout(10.0, read=65.0), verify=shared_tls_context()
            )
            transport = HttpxTransport(client, owned=own)
        self._transport = transport
        self._cursor = ""
        self._up_to_date = False
        self._last_change = _resumed_change(offset)
        """The last change accepted, delivered or still pending: later ones only are new."""
        self._delivered = self._last_change
        """The last change of the batches yielded so far."""
        self._attempt = 0
        self._short_sse = 0
        self._closed = False
        self._expired_handles: set[str] = set()
        self._cache_buster: str | None = None
        self._stale_copies = 0

    def __aiter__(self) -> AsyncIterator[Batch]:
        return self.batches()

    async def aclose(self) -> None:
        """Close the HTTP client if this stream created it."""
        self._closed = True
        if isinstance(self._transport, HttpxTransport):
            await self._transport.aclose()

    async def __aenter__(self) -> ShapeStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def is_up_to_date(self) -> bool:
        """True once a batch ending with ``up-to-date`` has been yielded (until a 409)."""
        return self._up_to_date

    async def batches(self) -> AsyncIterator[Batch]:
        """Yield batches until the stream is closed (or up to date, with ``live=False``).

        Interrupting it (an error, a cancelled ``anext``) keeps the stream's position at the
        last yielded batch; a new iteration goes on from there and delivers what the
        interrupted batch had read, since that was never delivered.
        """
        try:
            async with contextlib.aclosing(self._batches()) as batches:
                async for batch in batches:
                    self._delivered = self._last_change
                    yield batch
        finally:
            self._last_change = self._delivered

    async def _batches(self) -> AsyncGenerator[Batch, None]:
        shelter = _Shelter()
        prefetch = _Prefetch(self._fetch, self._next_query)
        try:
            batches = self._sheltered_batches(shelter, prefetch)
            async with contextlib.aclosing(batches):
                async for batch in batches:
                    yield batch
        finally:
            shelter.release()
            await prefetch.cancel()

    def _query(self, handle: str | None, offset: str, use_sse: bool) -> dict[str, str]:
        query = dict(self.definition.query(), offset=offset)
        if handle is not None and offset != "-1":
            query["handle"] = handle
        if self._up_to_date:
            query["live"] = "true"
            query["cursor"] = self._cursor
            if use_sse:
                query["live_sse"] = "true"
        elif self._cache_buster is not None:
            query["cache-buster"] = self._cache_buster
        return query

    async def _fetch(self, query: dict[str, str], on_head: _HeadCallback) -> Reply:
        async with self._transport.get(self.url, query, self._headers) as answer:
            on_head(answer.status, answer.headers)
            return Reply(answer.status, answer.headers, await answer.read(), answer.url)

    def _next_query(
        self, query: dict[str, str], status: int, headers: Mapping[str, str]
    ) -> dict[str, str] | None:
        """The request that follows a catch-up answer that is not up to date, whatever its
        body holds (None for any other answer)."""
        if status != 200 or "live" in query or "electric-up-to-date" in headers:
            return None
        offset = headers.get("electric-offset")
        if offset is None:
            return None
        return self._query(headers.get("electric-handle", query.get("handle")), offset, False)

    async def _sheltered_batches(
        self, shelter: _Shelter, prefetch: _Prefetch
    ) -> AsyncGenerator[Batch, None]:
        pending: Batch = []
        offset = self.offset
        handle = self.handle
        while not self._closed:
            if self._up_to_date and not self.live:
                return
            use_sse = self._up_to_date and self.live_mode == "sse"
            use_sse = use_sse and self._short_sse < MAX_SHORT_SSE
            query = self._query(handle, offset, use_sse)
            try:
                if use_sse:
                    async with contextlib.aclosing(self._sse(query)) as sse_batches:
                        async for batch in sse_batches:
                            yield batch
                    handle, offset = self.handle, self.offset
                    continue
                response = await prefetch.take(query)
            except TransportFailure:
                await self._back_off(0.0)
                continue
            except _Refetch as refetch:
                handle, offset, pending = self._refetch(handle, refetch), "-1", []
                yield [dict(MUST_REFETCH_MESSAGE)]
                continue
            try:
                messages = await self._check(response, shelter)
            except _Refetch as refetch:
                handle, offset, pending = self._refetch(handle, refetch), "-1", []
                yield [dict(MUST_REFETCH_MESSAGE)]
                continue
            if messages is None:
                continue
            if await self._is_stale_copy(response):
                continue
            handle = response.headers.get("electric-handle", handle)
            offset = response.headers.get("electric-offset", offset)
            if "electric-cursor" in response.headers:
                self._cursor = response.headers["electric-cursor"]
            pending.extend(self._accept(messages, shelter))
            if _ends_up_to_date(messages):
                await prefetch.cancel()  # sent from a head that did not say up-to-date
                batch, pending = pending, []
                offset = resume_offset(offset, self._last_change)
                self.handle, self.offset = handle, offset
                self._up_to_date = True
                self._cache_buster = None
                shelter.release()
                yield batch
            else:
                shelter.shelter(len(pending))

    def _refetch(self, expired: str | None, refetch: _Refetch) -> str | None:
        """Start again after a 409: the handle to use (the new one, if the server said it).

        The expired handle is never accepted again, and requests until the next up-to-date
        carry a fresh ``cache-buster``, so that a cache in front of the server cannot answer
        them with a copy from before the 409.
        """
        if expired is not None:
            self._expired_handles.add(expired)
        self._cache_buster = _cache_buster()
        self._stale_copies = 0
        self.handle, self.offset = refetch.handle, "-1"
        return refetch.handle

    async def _is_stale_copy(self, response: Reply) -> bool:
        """True (after backing off, with a new ``cache-buster``) for a 200 carrying an expired
        handle: a cached copy from before a 409.

        Raises:
            ShapeRequestError: a 502 after ``MAX_STALE_COPIES`` such answers in a row.
        """
        if response.headers.get("electric-handle") not in self._expired_handles:
            return False
        self._stale_copies += 1
        if self._stale_copies > MAX_STALE_COPIES:
            body = {"message": "only stale cached responses with an expired handle"}
            raise ShapeRequestError(502, body, response.url)
        self._cache_buster = _cache_buster()
        await self._back_off(0.0)
        return True

    async def _back_off(self, minimum: float) -> None:
        await asyncio.sleep(backoff_delay(self._attempt, minimum))
        self._attempt += 1

    async def _check(
        self, response: Reply, shelter: _Shelter | None = None
    ) -> list[Message] | None:
        """The messages of a 200; ``None`` after backing off for a retryable failure."""
        status = response.status
        if status == 409:
            self._reset()
            raise _Refetch(response.headers.get("electric-handle"))
        if status >= 500 or status == 429:
            await self._back_off(retry_after_seconds(response.headers.get("retry-after")))
            return None
        if status >= 400:
            raise ShapeRequestError(status, _body(response), response.url)
        self._attempt = 0
        if status == 204:
            return [{"headers": {"control": "up-to-date"}}]
        if "electric-schema" in response.headers and not self.schema:
            self.schema = parse_schema(response.headers["electric-schema"])
        with _collector_paused(shelter):
            parsed = _body(response, self._decoder())  # not JSON: the text, not a list either
        if not isinstance(parsed, list):
            raise ShapeRequestError(status, parsed, response.url)
        return parsed

    def _reset(self) -> None:
        self.schema = {}
        self._up_to_date = False
        self._last_change = self._delivered = None
        self._short_sse = 0
        self._cursor = ""

    def _accept(self, messages: list[Message], shelter: _Shelter | None = None) -> list[Message]:
        """Drop already delivered changes (the values are converted already)."""
        accepted: list[Message] = []
        with _collector_paused(shelter):
            for message in messages:
                position = _position(message)
                if position is not None:
                    if self._last_change is not None and position <= self._last_change:
                        continue
                    self._last_change = position
                accepted.append(message)
        return accepted

    def _decoder(self) -> BodyDecoder | None:
        """What decodes a body and converts its values for the current schema (None: decode
        only, nothing to convert)."""
        if not (self.parse_values and self.schema):
            return None
        if self._decoded_schema is not self.schema:
            self._decoded_schema, self._body_decoder = self.schema, BodyDecoder(self.schema)
        return self._body_decoder

    async def _sse(self, query: dict[str, str]) -> AsyncGenerator[Batch, None]:
        """One SSE connection: yield each batch up to an ``up-to-date``, then return."""
        started = time.monotonic()
        headers = dict(self._headers, accept="text/event-stream")
        async with self._transport.get(self.url, query, headers) as response:
            if response.status != 200:
                body = await response.read()
                await self._check(Reply(response.status, response.headers, body, response.url))
                return  # _check raised or backed off
            self._attempt = 0
            if "electric-cursor" in response.headers:
                self._cursor = response.headers["electric-cursor"]
            self.handle = response.headers.get("electric-handle", self.handle)
            pending: list[Message] = []
            decoder = SseDecoder()
            try:
                async for chunk in response.chunks():
                    for data in decoder.feed(chunk):
                        try:
                            message = _decode_json(data)
                        except ValueError:
                            raise ShapeRequestError(200, data, response.url) from None
                        body_decoder = self._decoder()
                        if body_decoder is not None:
                            body_decoder.convert([message])
                        pending.extend(self._accept([message]))
                        if message.get("headers", {}).get("control") == "up-to-date":
                            self.offset = resume_offset(self.offset, self._last_change)
                            self._delivered = self._last_change
                            batch, pending = pending, []
                            yield batch
            finally:
                # Changes of a batch cut off before its up-to-date were never delivered: the
                # next request (from ``self.offset``) must not drop them as duplicates.
                self._last_change = self._delivered
        if time.monotonic() - started < SHORT_SSE_SECONDS:
            self._short_sse += 1
            await asyncio.sleep(_RANDOM.uniform(0, min(5.0, 0.1 * 2**self._short_sse)))
        else:
            self._short_sse = 0


def _resumed_change(offset: str) -> LogOffset | None:
    """The last change a stream resumed at ``offset`` has delivered (a real log offset)."""
    position = _parsed(offset)
    if position is None or position.tx <= 0:
        return None
    return position


def _cache_buster() -> str:
    return f"{time.time_ns() // 1_000_000}-{_RANDOM.getrandbits(32):08x}"


_HeadCallback = Callable[[int, Mapping[str, str]], None]
"""Called with a response's status and headers as soon as they arrive, before its body."""


class _Request:
    """One request of :class:`_Prefetch`: its query, its task, and the query that follows it."""

    __slots__ = ("query", "task", "next_query", "taken")

    def __init__(self, query: dict[str, str], taken: bool) -> None:
        self.query = query
        self.task: asyncio.Task[Reply] | None = None
        self.next_query: dict[str, str] | None = None
        self.taken = taken


class _Prefetch:
    """Catch-up requests sent one ahead: the next one leaves as soon as the head of the one
    before it arrives.

    Theory of operation: a catch-up answer that is not up to date is followed by a request at
    its ``electric-offset``, whatever its body holds. Sent when that answer's head arrives, the
    next request is served by the server (another process, often another machine) while this
    one reads and decodes the body before: the two overlap instead of taking turns, and a slow
    network costs one round trip per catch-up, not one per page. At most one request is ahead.
    When the stream takes a prefetched answer whose head has arrived already, the request after
    it leaves at once; otherwise it leaves when that head arrives.

    :meth:`take` hands over a prefetched answer only for the very query the stream asks next;
    any other query (after a refetch, with a new cache-buster, a live request) drops it and is
    sent afresh, so prefetching never changes what the stream reads.
    """

    __slots__ = ("_fetch", "_follow", "_ahead")

    def __init__(
        self,
        fetch: Callable[[dict[str, str], _HeadCallback], Awaitable[Reply]],
        follow: Callable[[dict[str, str], int, Mapping[str, str]], dict[str, str] | None],
    ) -> None:
        self._fetch = fetch
        self._follow = follow
        self._ahead: _Request | None = None

    async def take(self, query: dict[str, str]) -> Reply:
        """The answer to ``query``: the prefetched one if it was for ``query``, else fetched now.

        Raises:
            TransportFailure: as the request itself would.
        """
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead.task is not None:
            if ahead.query == query:
                ahead.taken = True
                if ahead.next_query is not None:
                    self._send(ahead.next_query)
                return await ahead.task
            await _cancelled(ahead.task)
        request = _Request(query, taken=True)
        return await self._fetch(query, functools.partial(self._head_arrived, request))

    async def cancel(self) -> None:
        """Drop the request ahead, if any."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead.task is not None:
            await _cancelled(ahead.task)

    def _head_arrived(self, request: _Request, status: int, headers: Mapping[str, str]) -> None:
        request.next_query = self._follow(request.query, status, headers)
        if request.taken and request.next_query is not None and self._ahead is None:
            self._send(request.next_query)

    def _send(self, query: dict[str, str]) -> None:
        request = _Request(query, taken=False)
        head_arrived = functools.partial(self._head_arrived, request)
        request.task = asyncio.ensure_future(self._fetch(query, head_arrived))
        self._ahead = request


async def _cancelled(task: asyncio.Task[Reply]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


class _Refetch(Exception):
    def __init__(self, handle: str | None) -> None:
        super().__init__(handle)
        self.handle = handle


def _ends_up_to_date(messages: list[Message]) -> bool:
    return bool(messages) and messages[-1].get("headers", {}).get("control") == "up-to-date"


@dataclass(frozen=True)
class Reply:
    """A whole answer: what :meth:`ShapeStream._check` looks at."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str


def _body(response: Reply, decoder: BodyDecoder | None = None) -> Any:
    """The decoded JSON body (values converted by ``decoder``), or its text if not JSON."""
    try:
        if decoder is not None:
            return decoder.decode(response.body)
        return _decode_json(response.body)
    except ValueError:
        return response.body.decode("utf-8", errors="replace")
