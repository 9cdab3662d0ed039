"""Accounts and sessions: sign-up, sign-in with throttling, session tokens, sign-out.

Layer: ``web``. Passwords are hashed with argon2 (``argon2-cffi``) in a worker thread, so hashing
never stalls the event loop. A session is a row in ``burn_private.sessions``; its token is the
row's id signed and timestamped with ``itsdangerous``, so a token is refused without a database
read when forged or older than the session's lifetime, and refused after a read when the row is
revoked (signed out) or expired. Hashes and sessions live in ``burn_private``, which is never
published: no shape can reach them.

Sync tokens. Each session also has a *sync token*: the same session id signed under another
salt, so it is never accepted as a session token. It only reads the session's own sync routes,
and it dies with the session. The browser app sends it in a header on credential-less
requests: browsers give those their own connection pool, so the six long-lived sync requests
never hold back the app's writes on an HTTP/1.1 connection limit.

Sync requests are many (every live request of every stream of every tab), so a session found
valid for one is remembered for :data:`SYNC_SESSION_MEMORY` seconds (:class:`RecentSessions`)
and the next ones skip the database. A sign-out forgets the session at once in the process that
handles it and, through the sign-out notification, in every other process; if a process misses
notifications (its LISTEN connection dropped) it forgets every session it remembers.

Throttling (theory of operation). Sign-in attempts are rows in ``burn_private.attempts``, so the
limit holds across every process of the app. Before a password is checked, one short
transaction takes an advisory lock per account and per client address (always in that order,
so two of them never deadlock), counts the attempts in the window that did not succeed, and
either refuses with 429 or records this attempt as ``pending``. Pending attempts count, so
parallel guesses cannot all slip through before the first is marked ``failed``. A successful
attempt is marked ``succeeded`` and stops counting. Sign-ups are counted per client address.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadData, URLSafeTimedSerializer
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from web.errors import ApiError, conflict

TOKEN_SALT = "burn-session"
SYNC_TOKEN_SALT = "burn-sync"
SIGN_OUT_CHANNEL = "burn_sign_out"
"""``LISTEN`` channel on which each signed-out session's id is announced."""
_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("a password no account has")
"""Checked when the account does not exist, so both answers take as long."""
SYNC_SESSION_MEMORY = 5.0
"""Seconds a session found valid for a sync request is trusted without a database read."""


@dataclass(frozen=True)
class Principal:
    """A signed-in user, as found from a request's session."""

    user_id: uuid.UUID
    name: str
    session_id: uuid.UUID


class RecentSessions:
    """Sessions recently found valid, each until ``memory`` seconds after the check (and never
    past the session's own expiry); forgotten one by one on sign-out, or all at once."""

    def __init__(self, memory: float = SYNC_SESSION_MEMORY) -> None:
        self.memory = memory
        self._valid_until: dict[uuid.UUID, tuple[float, Principal]] = {}
        self._prune_at = 1_024

    def get(self, session_id: uuid.UUID) -> Principal | None:
        entry = self._valid_until.get(session_id)
        if entry is None:
            return None
        if entry[0] <= time.time():
            del self._valid_until[session_id]
            return None
        return entry[1]

    def remember(self, principal: Principal, expires_at: datetime) -> None:
        now = time.time()
        until = min(now + self.memory, expires_at.timestamp())
        self._valid_until[principal.session_id] = (until, principal)
        if len(self._valid_until) >= self._prune_at:
            self._valid_until = {k: v for k, v in self._valid_until.items() if v[0] > now}
            self._prune_at = max(1_024, 2 * len(self._valid_until))

    def forget(self, session_id: uuid.UUID) -> None:
        self._valid_until.pop(session_id, None)

    def forget_all(self) -> None:
        self._valid_until.clear()


@dataclass(frozen=True)
class NewSession:
    """A session just opened: its user and its token."""

    principal: Principal
    token: str
    sync_token: str
    expires_at: datetime


@dataclass(frozen=True)
class Limits:
    """How many attempts the throttle allows, over what window (seconds)."""

    window: float
    per_account: int
    per_client: int
    sign_ups_per_client: int


class Accounts:
    """Sign-up, sign-in and sessions over one connection pool."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        secret: str,
        ttl: float,
        limits: Limits,
        recent: RecentSessions | None = None,
    ) -> None:
        self.pool = pool
        self.ttl = ttl
        self.limits = limits
        self._serializer = URLSafeTimedSerializer(secret, salt=TOKEN_SALT)
        self._sync_serializer = URLSafeTimedSerializer(secret, salt=SYNC_TOKEN_SALT)
        self.recent = RecentSessions() if recent is None else recent
        """Sessions that passed a sync request's check (see :meth:`sync_principal`)."""

    # -- sign-up and sign-in -----------------------------------------------------------------

    async def sign_up(self, name: str, password: str, client: str) -> NewSession:
        """Create a human user with ``password``; 409 when the name is taken."""
        name = name.lower()
        await self._reserve_sign_up(client)
        password_hash = await asyncio.to_thread(_hasher.hash, password)
        user_id = uuid.uuid4()
        async with self.pool.connection() as conn, conn.transaction():
            try:
                await conn.execute(
                    "INSERT INTO users (id, name, kind) VALUES (%s, %s, 'human')", (user_id, name)
                )
            except psycopg.errors.UniqueViolation:
                raise conflict("That name is taken") from None
            await conn.execute(
                "INSERT INTO burn_private.credentials (user_id, password_hash) VALUES (%s, %s)",
                (user_id, password_hash),
            )
            return await self._open_session(conn, user_id, name)

    async def sign_in(self, name: str, password: str, client: str) -> NewSession:
        """Check ``password``; 401 when wrong, 429 when too many attempts failed lately."""
        name = name.lower()
        attempt = await self._reserve_sign_in(name, client)
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT u.id, c.password_hash FROM users u"
                " JOIN burn_private.credentials c ON c.user_id = u.id"
                " WHERE u.name = %s AND u.kind = 'human'",
                (name,),
            )
            row = await cursor.fetchone()
        user_id, stored = (row[0], row[1]) if row is not None else (None, _DUMMY_HASH)
        good = await asyncio.to_thread(_verify, stored, password)
        async with self.pool.connection() as conn, conn.transaction():
            outcome = "succeeded" if good and user_id is not None else "failed"
            await conn.execute(
                "UPDATE burn_private.attempts SET outcome = %s WHERE id = %s", (outcome, attempt)
            )
            if outcome == "failed":
                raise ApiError(401, "Wrong name or password")
            if _hasher.check_needs_rehash(stored):
                await self._rehash(conn, user_id, password)
            return await self._open_session(conn, user_id, name)

    async def _rehash(self, conn: psycopg.AsyncConnection[Any], user_id: Any, pw: str) -> None:
        password_hash = await asyncio.to_thread(_hasher.hash, pw)
        await conn.execute(
            "UPDATE burn_private.credentials SET password_hash = %s, updated_at = now()"
            " WHERE user_id = %s",
            (password_hash, user_id),
        )

    # -- throttling --------------------------------------------------------------------------

    async def _reserve_sign_in(self, account: str, client: str) -> int:
        limits = self.limits
        async with self.pool.connection() as conn, conn.transaction():
            await _lock(conn, "account", account)
            await _lock(conn, "client", client)
            await _forget_old(conn, limits.window)
            for column, value, limit in (
                ("account", account, limits.per_account),
                ("client", client, limits.per_client),
            ):
                await _refuse_over_limit(conn, "sign-in", column, value, limit, limits.window)
            cursor = await conn.execute(
                "INSERT INTO burn_private.attempts (action, account, client, outcome)"
                " VALUES ('sign-in', %s, %s, 'pending') RETURNING id",
                (account, client),
            )
            row = await cursor.fetchone()
        assert row is not None
        return int(row[0])

    async def _reserve_sign_up(self, client: str) -> None:
        limits = self.limits
        async with self.pool.connection() as conn, conn.transaction():
            await _lock(conn, "client", client)
            await _forget_old(conn, limits.window)
            await _refuse_over_limit(
                conn, "sign-up", "client", client, limits.sign_ups_per_client, limits.window
            )
            await conn.execute(
                "INSERT INTO burn_private.attempts (action, account, client, outcome)"
                " VALUES ('sign-up', '', %s, 'succeeded')",
                (client,),
            )

    # -- sessions ----------------------------------------------------------------------------

    async def _open_session(
        self, conn: psycopg.AsyncConnection[Any], user_id: Any, name: str
    ) -> NewSession:
        session_id = uuid.uuid4()
        # a user's ended sessions are no longer needed: a token without its row is refused
        await conn.execute(
            "DELETE FROM burn_private.sessions"
            " WHERE user_id = %s AND (expires_at < now() OR revoked_at IS NOT NULL)",
            (user_id,),
        )
        cursor = await conn.execute(
            "INSERT INTO burn_private.sessions (id, user_id, expires_at)"
            " VALUES (%s, %s, now() + make_interval(secs => %s)) RETURNING expires_at",
            (session_id, user_id, self.ttl),
        )
        row = await cursor.fetchone()
        assert row is not None
        token = self._serializer.dumps(str(session_id))
        principal = Principal(user_id, name, session_id)
        return NewSession(principal, token, self.sync_token(principal), row[0])

    def sync_token(self, principal: Principal) -> str:
        """The token that reads ``principal``'s sync routes, and nothing else."""
        return str(self._sync_serializer.dumps(str(principal.session_id)))

    async def principal(self, token: str) -> Principal | None:
        """The user of a valid (signed, unexpired, unrevoked) session token, else None."""
        session_id = self._session_id(self._serializer, token)
        if session_id is None:
            return None
        found = await self._session(session_id)
        return None if found is None else found[0]

    async def sync_principal(self, token: str) -> Principal | None:
        """The user of a valid session or sync token, else None; a session checked in the
        last :data:`SYNC_SESSION_MEMORY` seconds (and not signed out since) is not read again."""
        session_id = self._session_id(self._sync_serializer, token) or self._session_id(
            self._serializer, token
        )
        if session_id is None:
            return None
        known = self.recent.get(session_id)
        if known is not None:
            return known
        found = await self._session(session_id)
        if found is None:
            return None
        self.recent.remember(*found)
        return found[0]

    def _session_id(self, serializer: URLSafeTimedSerializer, token: str) -> uuid.UUID | None:
        try:
            return uuid.UUID(str(serializer.loads(token, max_age=math.ceil(self.ttl))))
        except (BadData, ValueError):
            return None

    async def _session(self, session_id: uuid.UUID) -> tuple[Principal, datetime] | None:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT u.id, u.name, s.expires_at FROM burn_private.sessions s"
                " JOIN users u ON u.id = s.user_id"
                " WHERE s.id = %s AND s.revoked_at IS NULL AND s.expires_at > now()",
                (session_id,),
            )
            row = await cursor.fetchone()
        return None if row is None else (Principal(row[0], row[1], session_id), row[2])

    async def sign_out(self, principal: Principal) -> None:
        """Revoke the session: its token is refused from now on.

        The same transaction sends the session id on the :data:`SIGN_OUT_CHANNEL`
        notification channel, so every process of the app (not only this one) can end the
        session's live requests.
        """
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE burn_private.sessions SET revoked_at = now()"
                " WHERE id = %s AND revoked_at IS NULL",
                (principal.session_id,),
            )
            await conn.execute(
                "SELECT pg_notify(%s, %s)", (SIGN_OUT_CHANNEL, str(principal.session_id))
            )
        self.recent.forget(principal.session_id)


def _verify(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


async def _lock(conn: psycopg.AsyncConnection[Any], kind: str, value: str) -> None:
    """A transaction-scoped advisory lock on one throttle key."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"burn-attempts:{kind}:{value}",)
    )


async def _forget_old(conn: psycopg.AsyncConnection[Any], window: float) -> None:
    """Attempts older than the window no longer count: drop them (for every key)."""
    await conn.execute(
        "DELETE FROM burn_private.attempts WHERE attempted_at < now() - make_interval(secs => %s)",
        (window,),
    )


async def _refuse_over_limit(
    conn: psycopg.AsyncConnection[Any],
    action: str,
    column: str,
    value: str,
    limit: int,
    window: float,
) -> None:
    """429 with ``Retry-After`` when ``limit`` attempts in the window did not succeed."""
    counted = sql.SQL("outcome <> 'succeeded'" if action == "sign-in" else "true")
    query = sql.SQL(
        "SELECT count(*), extract(epoch FROM min(attempted_at) + make_interval(secs => %s)"
        " - now()) FROM burn_private.attempts WHERE action = %s AND {column} = %s"
        " AND {counted} AND attempted_at >= now() - make_interval(secs => %s)"
    ).format(column=sql.Identifier(column), counted=counted)
    cursor = await conn.execute(query, (window, action, value, window))
    row = await cursor.fetchone()
    assert row is not None
    count, wait = int(row[0]), row[1]
    if count >= limit:
        retry_after = str(max(1, math.ceil(float(wait or 1))))
        message = f"Too many {action} attempts; try again in {retry_after} s"
        raise ApiError(429, message, headers={"retry-after": retry_after})
