"""How a :class:`~shapes.client.ShapeStream` sends its GET requests: the HTTP library behind it.

Two transports, one shape of answer (:class:`Answer`: status, headers, URL, then the body read
whole or as chunks):

- :class:`HttpxTransport` over an ``httpx.AsyncClient``: the default, and what a caller gets by
  passing ``client=``;
- :class:`AiohttpTransport` over an ``aiohttp.ClientSession``: for a process that follows
  thousands of shapes (an agents worker). Measured on one core, a short request costs about a
  quarter of the CPU it costs through httpx, and an open connection costs nothing per request
  (httpcore looks at every pooled connection whenever a request starts or ends).

A failure to connect, send or read is raised as :class:`TransportFailure` by both, so that the
stream retries it the same way whatever the library.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import aiohttp
import httpx


class TransportFailure(Exception):
    """The request did not get a whole answer (connection refused, reset, timed out)."""


class Answer(Protocol):
    """One answer, its body not read yet."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Case-insensitive."""
        ...

    @property
    def url(self) -> str: ...

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""
        ...


class Transport(Protocol):
    def get(
        self, url: str, params: Mapping[str, str], headers: Mapping[str, str]
    ) -> contextlib.AbstractAsyncContextManager[Answer]:
        """Send a GET; the answer is open inside the context (its connection is released at
        the end)."""
        ...

    async def aclose(self) -> None: ...


class _HttpxAnswer:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    @property
    def url(self) -> str:
        return str(self._response.url)

    async def read(self) -> bytes:
        try:
            return await self._response.aread()
        except httpx.TransportError as error:
            raise TransportFailure(repr(error)) from error

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_bytes():
                yield chunk
        except httpx.TransportError as error:
            raise TransportFailure(repr(error)) from error


class HttpxTransport:
    """Requests through an ``httpx.AsyncClient`` (closed by :meth:`aclose` only if ``owned``)."""

    def __init__(self, client: httpx.AsyncClient, *, owned: bool = False) -> None:
        self.client = client
        self._owned = owned

    @contextlib.asynccontextmanager
    async def get(
        self, url: str, params: Mapping[str, str], headers: Mapping[str, str]
    ) -> AsyncIterator[Answer]:
        request = self.client.stream("GET", url, params=params, headers=headers)
        try:
            response = await request.__aenter__()
        except httpx.TransportError as error:
            raise TransportFailure(repr(error)) from error
        try:
            yield _HttpxAnswer(response)
        finally:
            with contextlib.suppress(httpx.TransportError):
                await request.__aexit__(None, None, None)

    async def aclose(self) -> None:
        if self._owned:
            await self.client.aclose()


class _AiohttpAnswer:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    @property
    def url(self) -> str:
        return str(self._response.url)

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (TimeoutError, aiohttp.ClientError) as error:
            raise TransportFailure(repr(error)) from error

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as error:
            raise TransportFailure(repr(error)) from error


class AiohttpTransport:
    """Requests through an ``aiohttp.ClientSession``: no limit on connections, a connection
    idle for ``keepalive`` seconds closed (keep it below the server's own limit, 20 s for
    syncd, or a request may go out on a connection the server is closing), a read that waits
    ``read_timeout`` seconds for a byte given up (a live request is answered well within it).
    :meth:`aclose` closes the session, which the transport owns; a request after it is refused
    (``RuntimeError``, as httpx refuses one), so that a request still on its way (a stream's
    request ahead) cannot open a session nobody closes."""

    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 65.0,
        keepalive: float = 15.0,
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_read=read_timeout
        )
        self._keepalive = keepalive
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("Cannot send a request: the transport has been closed")
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=self._keepalive)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    @contextlib.asynccontextmanager
    async def get(
        self, url: str, params: Mapping[str, str], headers: Mapping[str, str]
    ) -> AsyncIterator[Answer]:
        session = self._open()
        try:
            response = await session.get(url, params=dict(params), headers=dict(headers))
        except (TimeoutError, aiohttp.ClientError) as error:
            raise TransportFailure(repr(error)) from error
        try:
            yield _AiohttpAnswer(response)
        finally:
            if response.content.at_eof():
                response.release()  # the connection goes back to the pool
            else:
                response.close()  # a body left unread (a live stream stopped) ends it

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
