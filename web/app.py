"""The HTTP app: accounts and the write API under ``/api``, on one ``AsyncConnectionPool``.

Layer: ``web``. Routes (the OpenAPI document, ``GET /api/openapi.json``, describes each):

* ``POST /api/auth/sign-up``, ``POST /api/auth/sign-in``: answer the user, a session token
  (also set as an ``HttpOnly``, ``SameSite=Lax`` cookie) and a sync token (see
  :mod:`web.accounts`); ``POST /api/auth/sign-out`` revokes the session; ``GET /api/auth/me``
  answers who the session belongs to, with the session's sync token.
* ``POST /api/threads`` and ``POST /api/threads/{thread_id}/{rename,delete,join,leave,messages}``:
  each answers ``{"txid": n}`` (see :mod:`web.writes`).
* ``GET /api/sync/{threads,memberships,events,facts,users,agent_status}``: the signed-in user's
  rows in Electric's shape protocol, relayed to syncd (see :mod:`web.sync`).

A request is authenticated by ``Authorization: Bearer <token>`` or else by the cookie. Bodies
must be ``application/json``: with ``SameSite=Lax`` cookies that keeps other sites from
writing on a user's behalf. :func:`current_user` is the seam for anything else mounted in this
app: it answers the signed-in user of a request, or None. The sync routes also take the sync
token (:func:`sync_user`).
Sign-out calls the ``on_sign_out`` hooks, e.g. to cut off the session's live sync requests, and
announces the session on the ``burn_sign_out`` channel for the other processes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from syncd.routes import ShapeRoutes
from web import bodies, writes
from web.accounts import Accounts, Limits, NewSession, Principal, RecentSessions
from web.config import Settings
from web.errors import NO_STORE, ApiError, api_error_handler, not_found, unauthorized
from web.openapi import document
from web.sync import SignOutListener, SyncRoutes

log = logging.getLogger("web.app")

COOKIE = "burn_session"
SignOutHook = Callable[[Principal], Awaitable[None]]


class Backend:
    """The app's state: settings, pool, accounts, sign-out hooks."""

    def __init__(
        self,
        settings: Settings,
        pool: AsyncConnectionPool[Any],
        hooks: Sequence[SignOutHook],
        recent: RecentSessions | None = None,
    ) -> None:
        assert settings.secret is not None, "a secret is needed to sign session tokens"
        self.settings = settings
        self.pool = pool
        limits = Limits(
            window=settings.sign_in_window,
            per_account=settings.sign_in_account_limit,
            per_client=settings.sign_in_client_limit,
            sign_ups_per_client=settings.sign_up_client_limit,
        )
        self.accounts = Accounts(pool, settings.secret, settings.session_ttl, limits, recent)
        self.on_sign_out = list(hooks)


def _backend(request: Request) -> Backend:
    backend: Backend = request.app.state.backend
    return backend


def session_token(request: Request) -> str | None:
    """The token a request carries: its bearer token, else its session cookie."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.cookies.get(COOKIE) or None


async def current_user(request: Request) -> Principal | None:
    """The signed-in user of ``request`` (valid, unexpired, unrevoked session), else None."""
    token = session_token(request)
    if token is None:
        return None
    return await _backend(request).accounts.principal(token)


async def sync_user(request: Request) -> Principal | None:
    """The user of a sync request: by its sync token, its session token or its cookie."""
    token = session_token(request)
    if token is None:
        return None
    return await _backend(request).accounts.sync_principal(token)


async def require_user(request: Request) -> Principal:
    """Like :func:`current_user`, but a missing or invalid session is a 401."""
    principal = await current_user(request)
    if principal is None:
        raise unauthorized()
    return principal


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _json(data: Any, status: int = 200) -> Response:
    return JSONResponse(data, status, headers=NO_STORE)


# -- accounts -----------------------------------------------------------------------------------


def _session_response(request: Request, session: NewSession, status: int) -> Response:
    principal = session.principal
    response = _json(
        {
            "user": {"id": str(principal.user_id), "name": principal.name},
            "token": session.token,
            "sync_token": session.sync_token,
            "expires_at": session.expires_at.isoformat(),
        },
        status,
    )
    response.set_cookie(
        COOKIE,
        session.token,
        max_age=int(_backend(request).settings.session_ttl),
        httponly=True,
        samesite="lax",
        secure=_backend(request).settings.cookie_secure,
        path="/",
    )
    return response


async def sign_up(request: Request) -> Response:
    body = await bodies.read_body(request, bodies.Credentials)
    session = await _backend(request).accounts.sign_up(body.name, body.password, _client(request))
    return _session_response(request, session, 201)


async def sign_in(request: Request) -> Response:
    body = await bodies.read_body(request, bodies.Credentials)
    session = await _backend(request).accounts.sign_in(body.name, body.password, _client(request))
    return _session_response(request, session, 200)


async def sign_out(request: Request) -> Response:
    principal = await current_user(request)
    if principal is not None:
        backend = _backend(request)
        await backend.accounts.sign_out(principal)
        for hook in backend.on_sign_out:
            try:
                await hook(principal)
            except Exception:
                log.exception("a sign-out hook failed")
    response = Response(status_code=204, headers=NO_STORE)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax")
    return response


async def me(request: Request) -> Response:
    principal = await require_user(request)
    sync_token = _backend(request).accounts.sync_token(principal)
    return _json({"id": str(principal.user_id), "name": principal.name, "sync_token": sync_token})


# -- writes -------------------------------------------------------------------------------------


def _thread_id(request: Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.path_params["thread_id"])
    except ValueError:
        raise not_found("thread") from None


async def _write(
    request: Request,
    operation: str,
    write_id: uuid.UUID,
    body: bodies.Body,
    action: Callable[[Principal], writes.Action],
) -> Response:
    """Apply ``action`` for the signed-in user as write ``write_id``; answers its txid."""
    backend = _backend(request)
    principal = await _signed_in(request)
    path = {"thread_id": str(_thread_id(request))} if "thread_id" in request.path_params else {}
    recorded = {"path": path, "body": body}
    txid = await writes.apply(
        backend.pool, principal, operation, write_id, recorded, action(principal)
    )
    return _json({"txid": txid})


async def _signed_in(request: Request) -> Principal:
    """:func:`require_user`, looked up once per request."""
    cached: Principal | None = request.scope.get("web.principal")
    if cached is None:
        cached = await require_user(request)
        request.scope["web.principal"] = cached
    return cached


async def create_thread(request: Request) -> Response:
    await _signed_in(request)
    body = await bodies.read_body(request, bodies.CreateThread)
    limit = _backend(request).settings.max_threads_per_user
    return await _write(
        request, "create", body.id, body, lambda user: writes.create_thread(user, body, limit)
    )


async def rename_thread(request: Request) -> Response:
    await _signed_in(request)
    thread_id = _thread_id(request)
    body = await bodies.read_body(request, bodies.RenameThread)
    return await _write(
        request, "rename", body.id, body, lambda user: writes.rename_thread(user, thread_id, body)
    )


async def delete_thread(request: Request) -> Response:
    await _signed_in(request)
    thread_id = _thread_id(request)
    body = await bodies.read_body(request, bodies.DeleteThread)
    return await _write(
        request, "delete", body.id, body, lambda user: writes.delete_thread(user, thread_id)
    )


async def join_thread(request: Request) -> Response:
    await _signed_in(request)
    thread_id = _thread_id(request)
    body = await bodies.read_body(request, bodies.JoinThread)
    return await _write(
        request, "join", body.id, body, lambda user: writes.join_thread(user, thread_id, body)
    )


async def leave_thread(request: Request) -> Response:
    await _signed_in(request)
    thread_id = _thread_id(request)
    body = await bodies.read_body(request, bodies.LeaveThread)
    return await _write(
        request, "leave", body.id, body, lambda user: writes.leave_thread(user, thread_id, body)
    )


async def post_message(request: Request) -> Response:
    await _signed_in(request)
    thread_id = _thread_id(request)
    body = await bodies.read_body(request, bodies.PostMessage)
    return await _write(
        request, "post", body.id, body, lambda user: writes.post_message(user, thread_id, body)
    )


# -- the rest -----------------------------------------------------------------------------------

_DOCUMENT = json.dumps(document(), separators=(",", ":")).encode()


async def openapi(request: Request) -> Response:
    return Response(_DOCUMENT, media_type="application/json")


async def health(request: Request) -> Response:
    return _json({"status": "ok"})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return ApiError(exc.status_code, exc.detail).response()


async def _database_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("database unavailable: %s", exc)
    return ApiError(503, "The database is unavailable", headers={"retry-after": "1"}).response()


ROUTES = [
    Route("/api/auth/sign-up", sign_up, methods=["POST"]),
    Route("/api/auth/sign-in", sign_in, methods=["POST"]),
    Route("/api/auth/sign-out", sign_out, methods=["POST"]),
    Route("/api/auth/me", me, methods=["GET"]),
    Route("/api/threads", create_thread, methods=["POST"]),
    Route("/api/threads/{thread_id}/rename", rename_thread, methods=["POST"]),
    Route("/api/threads/{thread_id}/delete", delete_thread, methods=["POST"]),
    Route("/api/threads/{thread_id}/join", join_thread, methods=["POST"]),
    Route("/api/threads/{thread_id}/leave", leave_thread, methods=["POST"]),
    Route("/api/threads/{thread_id}/messages", post_message, methods=["POST"]),
    Route("/api/openapi.json", openapi, methods=["GET"]),
    Route("/api/health", health, methods=["GET"]),
]


def open_pool(settings: Settings) -> AsyncConnectionPool[Any]:
    """A (not yet opened) pool of autocommit connections for ``settings``."""
    assert settings.database_url is not None
    return AsyncConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=settings.pool_size,
        kwargs={"autocommit": True},
        open=False,
    )


def create_app(
    settings: Settings,
    *,
    pool: AsyncConnectionPool[Any] | None = None,
    on_sign_out: Sequence[SignOutHook] = (),
    extra_routes: Sequence[Route] = (),
    shape_routes: ShapeRoutes | None = None,
) -> Starlette:
    """The app. Without ``pool`` it opens (and closes) its own from ``settings``.

    The sync routes relay to ``settings.syncd_url``, or through ``shape_routes`` when given
    (e.g. :meth:`ShapeRoutes.in_process`). Its lifespan also LISTENs for sign-outs announced
    by the other processes (see :mod:`web.sync`).
    """
    owned = pool is None
    the_pool = open_pool(settings) if pool is None else pool
    recent = RecentSessions()
    sync = SyncRoutes(
        shape_routes or ShapeRoutes(settings.syncd_url, secret=settings.syncd_secret),
        sync_user,
        recent,
    )
    assert settings.database_url is not None
    listener = SignOutListener(settings.database_url, sync)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if owned:
            await the_pool.open(wait=True, timeout=30)
        try:
            async with listener.running():
                yield
        finally:
            await sync.aclose()
            if owned:
                await the_pool.close()

    app = Starlette(
        routes=[*ROUTES, *sync.routes(), *extra_routes],
        lifespan=lifespan,
        exception_handlers={
            ApiError: api_error_handler,
            HTTPException: _http_error,
            psycopg.OperationalError: _database_unavailable,
            PoolTimeout: _database_unavailable,
        },
    )
    app.state.backend = Backend(settings, the_pool, [sync.on_sign_out, *on_sign_out], recent)
    app.state.sync = sync
    app.state.sign_out_listener = listener
    return app
