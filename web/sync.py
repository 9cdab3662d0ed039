"""Per-user sync routes: each signed-in user follows, in Electric's shape protocol, only the rows
of the threads they belong to and the users they share a thread with.

Layer: ``web``. Routes (``GET``, long-poll and SSE, on :class:`syncd.routes.ShapeRoutes`, relayed
to syncd at ``Settings.syncd_url``):

* ``/api/sync/threads``: ``id IN (my threads)``;
* ``/api/sync/memberships``, ``/api/sync/events``, ``/api/sync/facts``,
  ``/api/sync/agent_status``: ``thread_id IN (my threads)``;
* ``/api/sync/users``: the users who share a thread with me (myself included), public columns
  only;

where "my threads" is ``SELECT thread_id FROM memberships WHERE user_id = $1`` and ``$1`` is the
signed-in user's id. The scopes are subquery shapes, so a join moves a thread's rows into every
affected shape and a leave moves them out, live, without a refetch. A client may only narrow a
scope (its ``where`` is AND-ed, its ``columns`` must be a subset); a request without a valid
session is a 401, and every answer is private to its caller.

Sign-out (theory of operation). Every live request is tracked under its session's id (the
scope's ``key``). A sign-out in any process of the app revokes the session row and sends its id
on the ``burn_sign_out`` channel; each process LISTENs on it (:class:`SignOutListener`) and cuts
the session's live requests off: a waiting long-poll answers 409 ``must-refetch`` and an SSE
stream ends, and the client's next request is a 401. A request that passed its session check
just before the revocation may register after the first cut-off, so each cut-off is repeated
after short grace periods; each cut-off also forgets the session among the recently checked ones
(:class:`web.accounts.RecentSessions`), so its next request is read from the database. While
the LISTEN connection is down notifications are lost: after reconnecting, every remembered
session is forgotten, and the sessions seen with live requests are checked against the database
and the revoked ones are cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from syncd.routes import ShapeRoutes, ShapeScope
from web.accounts import SIGN_OUT_CHANNEL, Principal, RecentSessions
from web.errors import unauthorized

log = logging.getLogger("web.sync")

SYNC_PREFIX = "/api/sync/"
MY_THREADS = "SELECT thread_id FROM memberships WHERE user_id = $1"
IN_MY_THREADS = f"thread_id IN ({MY_THREADS})"
USER_COLUMNS = ("id", "name", "kind", "avatar_url", "inserted_at", "updated_at")
"""The columns of ``users`` anyone sharing a thread may see."""
CUT_OFF_GRACE = (0.5, 2.0, 5.0)
"""Seconds after a sign-out at which its session's live requests are cut off again."""
RECONNECT_DELAYS = (0.5, 1.0, 2.0, 5.0)
PRUNE_AT = 1_000
"""Remembered live sessions above which those without live requests are forgotten."""
LISTENER_NAME = "burn-sign-out-listener"
"""The ``application_name`` of each process's LISTEN connection."""


@dataclass(frozen=True)
class SyncTable:
    """One sync route: its table, the scope's ``where`` (``$1`` = the user's id), its columns."""

    table: str
    where: str
    columns: tuple[str, ...] | None = None

    @property
    def path(self) -> str:
        return SYNC_PREFIX + self.table


SYNC_TABLES = (
    SyncTable("threads", f"id IN ({MY_THREADS})"),
    SyncTable("memberships", IN_MY_THREADS),
    SyncTable("events", IN_MY_THREADS),
    SyncTable("facts", IN_MY_THREADS),
    SyncTable(
        "users",
        f"id IN (SELECT user_id FROM memberships WHERE thread_id IN ({MY_THREADS}))",
        USER_COLUMNS,
    ),
    SyncTable("agent_status", IN_MY_THREADS),
)


def scope_for(table: SyncTable, principal: Principal) -> ShapeScope:
    """What ``principal`` may see of ``table``; live requests are keyed by the session."""
    return ShapeScope(
        where=table.where,
        params=[str(principal.user_id)],
        columns=list(table.columns) if table.columns is not None else None,
        key=str(principal.session_id),
    )


Authenticate = Callable[[Request], Awaitable[Principal | None]]
"""Who signed the request in (e.g. :func:`web.app.current_user`), or None."""


class SyncRoutes:
    """The sync routes of one web process: the relay to syncd and the cut-off of sessions."""

    def __init__(
        self,
        shape_routes: ShapeRoutes,
        authenticate: Authenticate,
        recent: RecentSessions | None = None,
    ) -> None:
        self.shape_routes = shape_routes
        self.authenticate = authenticate
        self.recent = RecentSessions() if recent is None else recent
        self._live_sessions: set[str] = set()
        self._prune_at = PRUNE_AT
        self._pending: set[asyncio.Task[None]] = set()

    def routes(self) -> list[Route]:
        """One route per :data:`SYNC_TABLES` entry."""
        return [self._route(table) for table in SYNC_TABLES]

    def _route(self, table: SyncTable) -> Route:
        async def authorize(request: Request) -> ShapeScope | Response:
            principal = await self.authenticate(request)
            if principal is None:
                return unauthorized().response()
            scope = scope_for(table, principal)
            if request.query_params.get("live") == "true" and scope.key is not None:
                self._note_live(scope.key)
            return scope

        return self.shape_routes.route(table.path, table=table.table, authorize=authorize)

    def _note_live(self, key: str) -> None:
        """Remember a session with live requests (for :meth:`cut_off_revoked`); the sessions
        without any are forgotten whenever the set has doubled."""
        self._live_sessions.add(key)
        if len(self._live_sessions) > self._prune_at:
            live = self.shape_routes.live_requests
            self._live_sessions = {k for k in self._live_sessions if k == key or live(k)}
            self._prune_at = max(PRUNE_AT, 2 * len(self._live_sessions))

    def cut_off(self, session_id: str) -> int:
        """End the session's live requests now, and again after each grace period."""
        self._forget(session_id)
        ended = self.shape_routes.cut_off(session_id)
        self._live_sessions.discard(session_id)
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to repeat
            task = asyncio.get_running_loop().create_task(self._cut_off_later(session_id))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        return ended

    async def _cut_off_later(self, session_id: str) -> None:
        waited = 0.0
        for delay in CUT_OFF_GRACE:
            await asyncio.sleep(delay - waited)
            waited = delay
            self._forget(session_id)
            self.shape_routes.cut_off(session_id)

    def _forget(self, session_id: str) -> None:
        with contextlib.suppress(ValueError):
            self.recent.forget(uuid.UUID(session_id))

    async def on_sign_out(self, principal: Principal) -> None:
        """The ``on_sign_out`` hook of :func:`web.app.create_app`."""
        self.cut_off(str(principal.session_id))

    async def cut_off_revoked(self, conn: psycopg.AsyncConnection[Any]) -> int:
        """Cut off every session seen live here that is no longer valid; returns how many."""
        live = [key for key in self._live_sessions if self.shape_routes.live_requests(key)]
        self._live_sessions = set(live)
        if not live:
            return 0
        cursor = await conn.execute(
            "SELECT s FROM unnest(%s::uuid[]) AS s WHERE NOT EXISTS (SELECT FROM"
            " burn_private.sessions WHERE id = s AND revoked_at IS NULL AND expires_at > now())",
            ([uuid.UUID(key) for key in live],),
        )
        revoked = [str(row[0]) for row in await cursor.fetchall()]
        for key in revoked:
            self.cut_off(key)
        return len(revoked)

    async def aclose(self) -> None:
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        await self.shape_routes.aclose()


class SignOutListener:
    """LISTENs on ``burn_sign_out`` and cuts off each announced session (one per process)."""

    def __init__(self, database_url: str, sync: SyncRoutes) -> None:
        self.database_url = database_url
        self.sync = sync
        self.listening = asyncio.Event()
        """Set while the LISTEN is in place (tests wait on it)."""

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with backoff when the connection drops."""
        failures = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.database_url, autocommit=True, application_name=LISTENER_NAME
                ) as conn:
                    await conn.execute(f"LISTEN {SIGN_OUT_CHANNEL}")
                    self.sync.recent.forget_all()  # sign-outs may have been missed
                    await self.sync.cut_off_revoked(conn)
                    self.listening.set()
                    failures = 0
                    async for notify in conn.notifies():
                        self.sync.cut_off(notify.payload)
                problem = "the connection ended"
            except psycopg.Error as exc:
                problem = str(exc)
            self.listening.clear()
            delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
            failures += 1
            log.warning("sign-out listener: %s; reconnecting in %.1f s", problem, delay)
            await asyncio.sleep(delay)

    @contextlib.asynccontextmanager
    async def running(self, ready_timeout: float = 10.0) -> AsyncIterator[None]:
        """Listen while the block runs; it starts once listening (or after ``ready_timeout``)."""
        task = asyncio.create_task(self.run())
        try:
            try:
                await asyncio.wait_for(self.listening.wait(), ready_timeout)
            except TimeoutError:
                log.warning("sign-out listener not listening yet; serving anyway")
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def paths() -> Sequence[str]:
    """The sync routes' paths."""
    return [table.path for table in SYNC_TABLES]
