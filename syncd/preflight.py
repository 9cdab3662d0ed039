"""Checks before syncd starts: the database URL, the connection, the server's settings and the
role's privileges, each failing with one line that names the cause and the fix.

Layer: ``syncd``. :class:`~syncd.daemon.Syncd` parses the URL when it is made and runs
:func:`check_database` before the engine opens, so that a mistake made while setting syncd up
costs a few seconds rather than a 30 s wait for a connection pool, and leaves nothing behind:
the publication and the slot are only created once every check has passed.
"""

from __future__ import annotations

import re
from typing import Final

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

from syncd.errors import SyncdError

CONNECT_TIMEOUT: Final = 4
"""Seconds the first connection may take, unless the URL sets ``connect_timeout``."""
URL_FORMS: Final = "postgresql://user:password@host:5432/database or host=... dbname=..."

_SIGN_IN_FAILURES: Final = ("authentication", "role ", "no pg_hba.conf entry")
_FIX_SIGN_IN: Final = (
    "check the user and password in the database URL (--database-url / SYNCD_DATABASE_URL), "
    "and that pg_hba.conf lets this user in"
)
_FIX_DATABASE: Final = "create the database, or fix its name in the database URL"
_FIX_REACH: Final = (
    "check the host and port in the database URL (--database-url / SYNCD_DATABASE_URL), and "
    "that Postgres is running and accepts connections there"
)


class StartupError(SyncdError):
    """syncd cannot start; the message (one line) names the cause and the fix."""


AsyncConn = psycopg.AsyncConnection[TupleRow]


def parse_database_url(conninfo: str) -> dict[str, str]:
    """The parameters of a database URL or conninfo string.

    Raises:
        StartupError: it does not parse, or its port is not a number.
    """
    try:
        params = {k: str(v) for k, v in conninfo_to_dict(conninfo).items() if v is not None}
    except psycopg.ProgrammingError as exc:
        reason = " ".join(str(exc).split())
        raise StartupError(
            f"the database URL is malformed ({reason}); write it as {URL_FORMS}"
        ) from None
    ports = params.get("port", "")
    if ports and not all(part.strip().isdigit() for part in ports.split(",")):
        raise StartupError(
            f"the database URL's port is not a number ({ports!r}); write it as {URL_FORMS}"
        )
    return params


def describe_target(params: dict[str, str]) -> str:
    """Where a conninfo points, for messages: host (or socket), port, user and database;
    never the password."""
    host = params.get("host") or params.get("hostaddr") or "the default socket"
    port = params.get("port") or "5432"
    place = f"socket {host}" if host.startswith("/") else f"{host}:{port}"
    user = params.get("user")
    database = params.get("dbname")
    who = ", ".join(
        part
        for part in (f"user {user}" if user else "", f"database {database}" if database else "")
        if part
    )
    return f"{place}" + (f" ({who})" if who else "")


async def check_database(conninfo: str, publication: str, slot: str) -> None:
    """Connect once and check what syncd needs before it creates anything.

    Raises:
        StartupError: the server cannot be reached or refuses the role, ``wal_level`` is not
            ``logical``, the role may not replicate, the publication is missing and the role may
            not create it, or the slot is missing and no slot is free.
    """
    params = parse_database_url(conninfo)
    target = describe_target(params)
    timeout = int(params["connect_timeout"]) if params.get("connect_timeout") else CONNECT_TIMEOUT
    try:
        conn = await psycopg.AsyncConnection.connect(
            conninfo, autocommit=True, connect_timeout=timeout
        )
    except psycopg.OperationalError as exc:
        raise StartupError(connect_failure(target, str(exc))) from None
    async with conn:
        await _check_wal_level(conn, target)
        await _check_replication_role(conn)
        await _check_publication(conn, publication)
        await _check_slot(conn, slot)


def connect_failure(target: str, error: str) -> str:
    """One line for a failed connection: libpq's reason and what to check."""
    reason = _reason(error)
    lowered = reason.lower()
    if "database" in lowered and "does not exist" in lowered:
        fix = _FIX_DATABASE
    elif any(part in lowered for part in _SIGN_IN_FAILURES):
        fix = _FIX_SIGN_IN
    else:
        fix = _FIX_REACH
    return f"cannot connect to Postgres at {target}: {reason}; {fix}"


def _reason(error: str) -> str:
    """libpq's reason from a connection error: its first line, after the last ``failed:``."""
    first = error.strip().splitlines()[0] if error.strip() else "unknown error"
    reason = first.rsplit("failed: ", 1)[-1]
    reason = re.sub(r"^(FATAL|ERROR):\s+", "", reason.strip())
    return " ".join(reason.split())


async def _value(conn: AsyncConn, query: str, params: tuple[str, ...] = ()) -> object:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    return None if row is None else row[0]


async def _check_wal_level(conn: AsyncConn, target: str) -> None:
    level = await _value(conn, "SELECT current_setting('wal_level')")
    if level != "logical":
        raise StartupError(
            f"the Postgres at {target} has wal_level = {level}, and syncd needs logical "
            "decoding: as a superuser run ALTER SYSTEM SET wal_level = logical, then restart "
            "Postgres (a reload is not enough)"
        )


async def _check_replication_role(conn: AsyncConn) -> None:
    allowed = await _value(
        conn, "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user"
    )
    if not allowed:
        user = conn.info.user
        raise StartupError(
            f"role {user} may not use replication: as a superuser run ALTER ROLE {user} "
            "REPLICATION (sql/001_syncd_role.sql creates a role with what syncd needs)"
        )


async def _check_publication(conn: AsyncConn, publication: str) -> None:
    exists = await _value(conn, "SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,))
    if exists:
        return
    may_create = await _value(conn, "SELECT has_database_privilege(current_database(), 'CREATE')")
    if not may_create:
        user, database = conn.info.user, conn.info.dbname
        raise StartupError(
            f"publication {publication} does not exist and role {user} may not create it: as "
            "the tables' owner run sql/002_publish_table.sql for a first table (it creates the "
            f"publication), or GRANT CREATE ON DATABASE {database} TO {user}"
        )


async def _check_slot(conn: AsyncConn, slot: str) -> None:
    cur = await conn.execute(
        "SELECT database::text, plugin::text FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    )
    found = await cur.fetchone()
    if found is not None:
        database, plugin = found
        if database != conn.info.dbname or plugin != "pgoutput":
            raise StartupError(
                f"replication slot {slot} belongs to database {database} (plugin {plugin}); give "
                "this syncd its own slot name (--slot / SYNCD_SLOT)"
            )
        return
    free = await _value(
        conn,
        "SELECT current_setting('max_replication_slots')::int - count(*) FROM pg_replication_slots",
    )
    if isinstance(free, int) and free <= 0:
        raise StartupError(
            f"replication slot {slot} does not exist and every slot is taken "
            "(max_replication_slots): drop an unused slot with "
            "SELECT pg_drop_replication_slot('<name>'), or raise max_replication_slots and "
            "restart Postgres"
        )
