"""The one module that talks to the Messages API (and the only one importing ``anthropic``).

``LlmClient.call`` sends one request: the persona's system prompt, the rendered context as a
single user message, the persona's tools and a ``tool_choice`` that forces a tool call. It
returns either an ``LlmReply`` (content, stop reason, token usage, latency, ids, for the caller
to record) or an ``LlmFailure`` whose ``kind`` says what went wrong after the SDK's own retries:
nothing is raised for an API, network or timeout problem.

With an ``on_delta`` callback the call streams, and the callback sees every piece of text and of
tool-input JSON as it arrives (with the block's accumulated text so far). A stream that stops
before ``message_stop`` is a ``truncated`` failure and an ``error`` event inside it a
``stream_error`` failure: the SDK reports neither as an exception of its own type.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anthropic

from agents.settings import LlmSettings
from agents.tools import Tool

FailureKind = Literal[
    "rate_limited",
    "overloaded",
    "server_error",
    "timeout",
    "connection",
    "bad_request",
    "auth",
    "stream_error",
    "truncated",
    "other",
]
TRANSIENT: frozenset[FailureKind] = frozenset(
    {"rate_limited", "overloaded", "server_error", "timeout", "connection", "stream_error",
     "truncated"}
)  # fmt: skip
"""Failures worth another attempt later, after a backoff."""


@dataclass(frozen=True)
class LlmRequest:
    system: str
    context: str
    tools: Sequence[Tool]
    force_tool: str | None = None
    """A tool name to force; None forces some tool (``any``) when there are tools."""
    metadata_user_id: str | None = None
    """An opaque id for the API's abuse tracking (e.g. a hash of the thread id)."""


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int


@dataclass(frozen=True)
class TextBlock:
    text: str


@dataclass(frozen=True)
class ToolUseBlock:
    id: str
    name: str
    input: object


@dataclass(frozen=True)
class LlmReply:
    message_id: str
    request_id: str | None
    model: str
    content: tuple[TextBlock | ToolUseBlock, ...]
    stop_reason: str | None
    usage: Usage
    latency_seconds: float

    @property
    def tool_uses(self) -> tuple[ToolUseBlock, ...]:
        return tuple(b for b in self.content if isinstance(b, ToolUseBlock))


@dataclass(frozen=True)
class LlmFailure:
    kind: FailureKind
    message: str
    status: int | None
    retry_after_seconds: float | None
    request_id: str | None
    latency_seconds: float

    @property
    def transient(self) -> bool:
        return self.kind in TRANSIENT


@dataclass(frozen=True)
class Delta:
    """A piece of a streaming reply: ``kind`` ``text`` or ``tool_input`` (partial JSON)."""

    index: int
    kind: Literal["text", "tool_input"]
    piece: str
    accumulated: str


DeltaCallback = Callable[[Delta], Awaitable[None] | None]


def request_params(request: LlmRequest, settings: LlmSettings) -> dict[str, Any]:
    params: dict[str, Any] = {
        "model": settings.model,
        "max_tokens": settings.max_tokens,
        "system": request.system,
        "messages": [{"role": "user", "content": request.context}],
    }
    if request.tools:
        params["tools"] = [tool.param() for tool in request.tools]
        if request.force_tool is None:
            params["tool_choice"] = {"type": "any", "disable_parallel_tool_use": True}
        else:
            params["tool_choice"] = {
                "type": "tool",
                "name": request.force_tool,
                "disable_parallel_tool_use": True,
            }
    if request.metadata_user_id is not None:
        params["metadata"] = {"user_id": request.metadata_user_id}
    return params


def retry_after(headers: Mapping[str, str]) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is not None:
            try:
                return max(float(raw) * scale, 0.0)
            except ValueError:
                continue
    return None


STATUS_KINDS: Mapping[int, FailureKind] = {
    400: "bad_request",
    401: "auth",
    402: "auth",
    403: "auth",
    404: "bad_request",
    413: "bad_request",
    429: "rate_limited",
    529: "overloaded",
}


def failure_of(error: anthropic.APIError, started: float) -> LlmFailure:
    latency = time.monotonic() - started
    if isinstance(error, anthropic.APITimeoutError):
        return LlmFailure("timeout", str(error), None, None, None, latency)
    if isinstance(error, anthropic.APIConnectionError):
        return LlmFailure("connection", str(error), None, None, None, latency)
    if isinstance(error, anthropic.APIStatusError):
        status = error.status_code
        if status == 200:
            # an error event inside a stream: the SDK raises it with the stream's status
            return LlmFailure("stream_error", str(error), None, None, error.request_id, latency)
        kind = STATUS_KINDS.get(status, "server_error" if status >= 500 else "other")
        wait = retry_after(error.response.headers)
        return LlmFailure(kind, str(error), status, wait, error.request_id, latency)
    return LlmFailure("other", str(error), None, None, None, latency)


def reply_of(message: anthropic.types.Message, request_id: str | None, started: float) -> LlmReply:
    blocks: list[TextBlock | ToolUseBlock] = []
    for block in message.content:
        if block.type == "text":
            blocks.append(TextBlock(block.text))
        elif block.type == "tool_use":
            blocks.append(ToolUseBlock(block.id, block.name, block.input))
    usage = message.usage
    return LlmReply(
        message_id=message.id,
        request_id=request_id,
        model=message.model,
        content=tuple(blocks),
        stop_reason=message.stop_reason,
        usage=Usage(
            usage.input_tokens,
            usage.output_tokens,
            usage.cache_creation_input_tokens or 0,
            usage.cache_read_input_tokens or 0,
        ),
        latency_seconds=time.monotonic() - started,
    )


class LlmClient:
    """An ``AsyncAnthropic`` configured from ``LlmSettings``, on the SDK's aiohttp transport;
    close it with ``aclose``."""

    def __init__(self, settings: LlmSettings) -> None:
        self.settings = settings
        self._client = anthropic.AsyncAnthropic(
            api_key=settings.api_key,
            base_url=settings.base_url,
            max_retries=settings.max_retries,
            timeout=anthropic.Timeout(
                settings.timeout_seconds, connect=settings.connect_timeout_seconds
            ),
            http_client=anthropic.DefaultAioHttpClient(),
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def call(
        self, request: LlmRequest, on_delta: DeltaCallback | None = None
    ) -> LlmReply | LlmFailure:
        params = request_params(request, self.settings)
        started = time.monotonic()
        try:
            if on_delta is None:
                message = await self._client.messages.create(**params)
                request_id = message._request_id
            else:
                message, request_id = await self._stream(params, on_delta)
        except anthropic.APIError as error:
            return failure_of(error, started)
        if message.stop_reason is None:
            return LlmFailure(
                "truncated",
                "the stream ended before message_stop",
                None,
                None,
                request_id,
                time.monotonic() - started,
            )
        return reply_of(message, request_id, started)

    async def _stream(
        self, params: dict[str, Any], on_delta: DeltaCallback
    ) -> tuple[anthropic.types.Message, str | None]:
        index = 0
        accumulated: dict[int, str] = {}
        async with self._client.messages.stream(**params) as stream:
            async for event in stream:
                if event.type == "content_block_start":
                    index = event.index
                    continue
                if event.type == "text":
                    kind: Literal["text", "tool_input"] = "text"
                    piece = event.text
                elif event.type == "input_json":
                    kind, piece = "tool_input", event.partial_json
                else:
                    continue
                accumulated[index] = accumulated.get(index, "") + piece
                outcome = on_delta(Delta(index, kind, piece, accumulated[index]))
                if inspect.isawaitable(outcome):
                    await outcome
            request_id = stream.response.headers.get("request-id")
            return await stream.get_final_message(), request_id
