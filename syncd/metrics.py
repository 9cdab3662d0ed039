"""syncd's metrics in the Prometheus text format: ``GET /metrics``.

Layer: ``syncd``. Built on the ``prometheus-client`` library, with one registry per daemon (two
daemons in one process, as in the tests, keep their figures apart).

Two kinds of figures:

* **Events timed or counted as they happen**: HTTP responses by route and status, request
  durations, flush durations, snapshot durations. These are the library's counters and
  histograms, fed by :class:`RequestMetrics` (an ASGI middleware) and by hooks the engine calls.
* **State read when scraped**: replication positions and lag, changes and transactions
  applied, shapes by state, live requests, storage bytes, admission refusals, removals.
  The engine keeps these as plain integers on its hot paths; :class:`DaemonCollector` turns
  them into metric families at each scrape, so the stream pays nothing for being watched.

Labels are bounded: route, status code, mode, state, cause, position; never a shape handle.
The lag in bytes is measured against the server's current WAL position, read with one query per
scrape (absent when the database cannot be reached; ``syncd_database_up`` tells).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from syncd.responses import json_response
from syncd.shape_state import RemovalCause

if TYPE_CHECKING:
    from syncd.engine import Engine
    from syncd.http import ShapeApi
    from syncd.replication import ReplicationStream
    from syncd.retention import Retention

log = logging.getLogger("syncd.metrics")

METRICS_PATH: Final = "/metrics"
SERVER_LSN_TIMEOUT: Final = 2.0
"""Seconds a scrape waits for the server's WAL position before leaving the lag out."""
USAGE_MAX_AGE: Final = 10.0
"""Seconds a storage measurement is reused by later scrapes (it walks every shape directory)."""
REQUEST_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
)
"""Request durations: from a cached catch-up (a millisecond) to a held live request (up to the
long-poll timeout) and an SSE stream (a minute)."""
FLUSH_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
SNAPSHOT_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
REMOVAL_CAUSES: Final[tuple[RemovalCause, ...]] = (
    "deleted",
    "invalidated",
    "failed",
    "expired",
    "evicted",
)
ROUTES: Final = {
    "/v1/shape": "shape",
    "/v1/health": "health",
    METRICS_PATH: "metrics",
    "/v1/openapi.json": "openapi",
}


@dataclass
class ServerPosition:
    """The server's WAL insert position as of the latest scrape that could read it."""

    lsn: int | None = None


class Metrics:
    """The registry of one daemon and the instruments fed as events happen."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http_responses = Counter(
            "syncd_http_responses",
            "HTTP responses started, by route and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "syncd_http_request_duration_seconds",
            "Seconds from a request's arrival to the end of its response, by route and mode "
            "(initial, catch_up, live, sse, other).",
            ["route", "mode"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.flush_duration = Histogram(
            "syncd_flush_duration_seconds",
            "Seconds each flush of the written shape logs took to make them durable.",
            buckets=FLUSH_BUCKETS,
            registry=self.registry,
        )
        self.compaction_duration = Histogram(
            "syncd_compaction_duration_seconds",
            "Seconds each compaction of a shape log took, the rewrite and the switch.",
            buckets=SNAPSHOT_BUCKETS,
            registry=self.registry,
        )
        self.snapshot_duration = Histogram(
            "syncd_snapshot_duration_seconds",
            "Seconds from a new shape's creation until its snapshot was durable and served.",
            buckets=SNAPSHOT_BUCKETS,
            registry=self.registry,
        )
        self._responses: dict[tuple[str, int], Counter] = {}
        self._durations: dict[tuple[str, str], Histogram] = {}

    def response(self, route: str, mode: str, status: int | None, seconds: float) -> None:
        """A request ended (``status``: ``None`` when no response was started)."""
        if status is not None:
            counter = self._responses.get((route, status))
            if counter is None:
                counter = self.http_responses.labels(route, str(status))
                self._responses[(route, status)] = counter
            counter.inc()
        histogram = self._durations.get((route, mode))
        if histogram is None:
            histogram = self.http_duration.labels(route, mode)
            self._durations[(route, mode)] = histogram
        histogram.observe(seconds)

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return generate_latest(self.registry)


def request_mode(scope: Scope) -> str:
    """The bounded kind of a shape request, from its method and query string."""
    if scope.get("method") not in ("GET", "HEAD"):
        return "other"
    query: bytes = scope.get("query_string", b"")
    if b"live_sse=true" in query:  # also experimental_live_sse=true
        return "sse"
    if b"live=true" in query:
        return "live"
    if b"offset=-1" in query:
        return "initial"
    return "catch_up"


class RequestMetrics:
    """ASGI middleware: counts every HTTP response by route and status, and times every
    request from its arrival to the end of its response (or of the connection)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        route = ROUTES.get(path.rstrip("/") or "/", "other")
        mode = request_mode(scope) if route == "shape" else "other"
        started = time.perf_counter()
        status: int | None = None

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        except Exception:
            if status is None:  # the outermost handler answers a bug with a 500
                status = 500
            raise
        finally:
            self.metrics.response(route, mode, status, time.perf_counter() - started)


class DaemonCollector:
    """The state read at each scrape (module docstring)."""

    def __init__(
        self,
        engine: Engine,
        stream: ReplicationStream,
        api: ShapeApi,
        retention: Retention,
        server: ServerPosition,
    ) -> None:
        self._engine = engine
        self._stream = stream
        self._api = api
        self._retention = retention
        self._server = server

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        yield from self._replication()
        yield from self._shapes()
        yield from self._requests()
        yield from self._compaction()
        yield from self._storage()

    def _replication(self) -> Iterator[Metric]:
        engine, stream = self._engine, self._stream
        flush = engine.flush
        positions = {
            "received": stream.received_lsn,
            "durable": flush.durable_lsn,
            "confirmed": stream.confirmed_lsn,
        }
        yield GaugeMetricFamily(
            "syncd_replication_connected",
            "1 while the replication stream is connected to Postgres.",
            value=1.0 if stream.connected else 0.0,
        )
        server_lsn = self._server.lsn
        yield GaugeMetricFamily(
            "syncd_database_up",
            "1 when this scrape could read the server's WAL position.",
            value=0.0 if server_lsn is None else 1.0,
        )
        if server_lsn is not None:
            lag_bytes = GaugeMetricFamily(
                "syncd_replication_lag_bytes",
                "WAL bytes between the server's current position and the position syncd has "
                "received, made durable or confirmed to Postgres.",
                labels=["position"],
            )
            for name, lsn in positions.items():
                lag_bytes.add_metric([name], float(max(server_lsn - lsn, 0)))
            yield lag_bytes
        lag_seconds = GaugeMetricFamily(
            "syncd_replication_lag_seconds",
            "received: how late the latest transaction arrived after its commit; durable and "
            "confirmed: age of the oldest commit received and not yet at that position.",
            labels=["position"],
        )
        commits = flush.commit_times
        now = time.time()
        lag_seconds.add_metric(["received"], commits.last_receive_delay)
        lag_seconds.add_metric(["durable"], commits.age(flush.durable_lsn, now))
        lag_seconds.add_metric(["confirmed"], commits.age(stream.confirmed_lsn, now))
        yield lag_seconds
        yield GaugeMetricFamily(
            "syncd_last_commit_timestamp_seconds",
            "Commit time (Unix) of the latest transaction received.",
            value=commits.last_commit_time,
        )
        applier = engine.applier
        yield CounterMetricFamily(
            "syncd_transactions",
            "Transactions received from the replication stream and applied to the shapes.",
            value=float(applier.transactions_applied),
        )
        yield CounterMetricFamily(
            "syncd_changes",
            "Row changes (inserts, updates, deletes) of the transactions applied.",
            value=float(applier.changes_applied),
        )

    def _shapes(self) -> Iterator[Metric]:
        registry = self._engine.registry
        states = {"snapshotting": 0, "ready": 0}
        subquery = 0
        for shape in registry.shapes.values():
            if shape.status in states:
                states[shape.status] += 1
            subquery += shape.subquery
        by_state = GaugeMetricFamily("syncd_shapes", "Shapes held, by state.", labels=["state"])
        for state, count in states.items():
            by_state.add_metric([state], float(count))
        yield by_state
        yield GaugeMetricFamily(
            "syncd_subquery_shapes",
            "Shapes held whose where clause has subqueries.",
            value=float(subquery),
        )
        yield CounterMetricFamily(
            "syncd_shapes_created",
            "Shapes created (restored ones not counted).",
            value=float(registry.created),
        )
        removed = CounterMetricFamily(
            "syncd_shapes_removed",
            "Shapes removed, by cause: deleted, invalidated, failed, expired, evicted.",
            labels=["cause"],
        )
        for cause in REMOVAL_CAUSES:
            removed.add_metric([cause], float(registry.removed.get(cause, 0)))
        yield removed

    def _requests(self) -> Iterator[Metric]:
        api = self._api
        yield GaugeMetricFamily(
            "syncd_live_long_polls",
            "Live long-poll requests held, waiting for changes.",
            value=float(api.live.held_long_polls),
        )
        yield GaugeMetricFamily(
            "syncd_sse_streams", "Live SSE streams open.", value=float(api.live.sse_streams)
        )
        admission = api.admission
        in_flight = GaugeMetricFamily(
            "syncd_requests_in_flight",
            "Shape requests being answered, by kind (initial: offset=-1).",
            labels=["kind"],
        )
        refused = CounterMetricFamily(
            "syncd_admission_refusals",
            "Shape requests refused with a 503 because too many of their kind were in flight.",
            labels=["kind"],
        )
        for kind, active in admission.active.items():
            in_flight.add_metric([kind], float(active))
            refused.add_metric([kind], float(admission.refused[kind]))
        yield in_flight
        yield refused

    def _compaction(self) -> Iterator[Metric]:
        compactor = self._engine.compactor
        yield CounterMetricFamily(
            "syncd_compactions",
            "Shape log compactions switched to.",
            value=float(compactor.compactions),
        )
        yield CounterMetricFamily(
            "syncd_compaction_failures",
            "Shape log compactions that failed (the log stays as it was).",
            value=float(compactor.failures),
        )
        yield CounterMetricFamily(
            "syncd_compaction_reclaimed_bytes",
            "Change-log bytes compaction removed (bytes compacted minus bytes written).",
            value=float(compactor.bytes_before - compactor.bytes_after),
        )

    def _storage(self) -> Iterator[Metric]:
        usage = self._retention.usage
        if usage is None:
            return
        yield GaugeMetricFamily(
            "syncd_storage_bytes",
            "Bytes allocated on disk by the storage directory (shape logs, spooled transactions).",
            value=float(usage.total),
        )
        yield GaugeMetricFamily(
            "syncd_storage_free_bytes",
            "Bytes available on the storage filesystem.",
            value=float(usage.free_bytes),
        )
        quota = self._retention.settings.storage_quota
        if quota is not None:
            yield GaugeMetricFamily(
                "syncd_storage_quota_bytes",
                "The most bytes the shape logs may take before shapes are evicted.",
                value=float(quota),
            )


async def read_server_lsn(engine: Engine) -> int | None:
    """The server's current WAL insert position, or ``None`` when it cannot be read now."""
    try:
        async with asyncio.timeout(SERVER_LSN_TIMEOUT), engine.connection() as conn:
            cursor = await conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
            row = await cursor.fetchone()
    except Exception as exc:  # a scrape must answer even when Postgres does not
        log.debug("cannot read the server's WAL position for the metrics: %s", exc)
        return None
    return None if row is None else int(row[0])


class MetricsEndpoint:
    """``GET /metrics``: refreshes what a scrape reads, then renders the registry."""

    def __init__(
        self,
        metrics: Metrics,
        engine: Engine,
        stream: ReplicationStream,
        api: ShapeApi,
        retention: Retention,
        secret: str | None,
    ) -> None:
        self.metrics = metrics
        self._engine = engine
        self._retention = retention
        self._secret = secret
        self._server = ServerPosition()
        metrics.registry.register(DaemonCollector(engine, stream, api, retention, self._server))
        engine.flush.on_flushed = metrics.flush_duration.observe
        engine.snapshots.on_snapshot_done = metrics.snapshot_duration.observe
        engine.compactor.on_compacted = metrics.compaction_duration.observe

    async def handle(self, request: Request) -> Response:
        if not self._authorised(request):
            return json_response(
                {"message": "Unauthorized - Invalid API secret"}, 401, cache="no-store"
            )
        self._server.lsn = await read_server_lsn(self._engine)
        try:
            await self._retention.measure(max_age=USAGE_MAX_AGE)
        except OSError as exc:  # the storage gauges keep their last measurement
            log.warning("cannot measure the storage directory: %s", exc)
        body = self.metrics.exposition()
        return Response(body, headers={"cache-control": "no-store"}, media_type=CONTENT_TYPE_LATEST)

    def _authorised(self, request: Request) -> bool:
        """With a secret set, a scrape passes it as ``?secret=`` or as a bearer token."""
        secret = self._secret
        if secret is None:
            return True
        given = request.query_params.get("secret")
        authorization = request.headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            given = authorization[7:].strip()
        return given is not None and hmac.compare_digest(given.encode(), secret.encode())
