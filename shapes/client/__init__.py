"""The async Python shape client: the I/O part of the ``shapes`` layer.

Layer: ``shapes`` — but unlike the rest of ``shapes``, which is pure, this sub-package does I/O
(``httpx`` or ``aiohttp``, and ``asyncio``); ``tests/test_layers.py`` exempts it, and only it,
from the no-I/O rule. It still imports nothing outside ``shapes``.

- :class:`ShapeStream` speaks the HTTP shape protocol (``docs/protocol.md``) and yields batches of
  messages, each ending with ``up-to-date``; a 409 yields a lone ``must-refetch`` batch.
- :class:`Shape` folds a stream into ``rows`` and lets callers wait for up-to-date, a txid or an
  offset; :func:`get_shape` shares one stream between all local users of a definition.
"""

from shapes.client.shape import Changes, Shape, ShapeRegistry, default_registry, get_shape
from shapes.client.stream import (
    Batch,
    LiveMode,
    Message,
    ShapeDefinition,
    ShapeRequestError,
    ShapeStream,
    backoff_delay,
    retry_after_seconds,
)
from shapes.client.transport import AiohttpTransport, HttpxTransport, Transport, TransportFailure

__all__ = [
    "AiohttpTransport",
    "HttpxTransport",
    "Transport",
    "TransportFailure",
    "Batch",
    "Changes",
    "LiveMode",
    "Message",
    "Shape",
    "ShapeDefinition",
    "ShapeRegistry",
    "ShapeRequestError",
    "ShapeStream",
    "backoff_delay",
    "default_registry",
    "get_shape",
    "retry_after_seconds",
]
