"""Accounts: passwords, signed expiring sessions, sign-out, throttled sign-in."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from itsdangerous import URLSafeTimedSerializer
from psycopg_pool import AsyncConnectionPool

from web.accounts import Principal
from web.app import COOKIE, create_app
from web.config import Settings

from .conftest import Api, client_for, with_settings


async def me(api: Api, headers: dict[str, str]) -> int:
    return (await api.client.get("/api/auth/me", headers=headers)).status_code


async def test_sign_up_answers_a_token_and_sets_a_private_cookie(api: Api) -> None:
    answer = await api.client.post(
        "/api/auth/sign-up", json={"name": "Alice", "password": "correct horse"}
    )
    assert answer.status_code == 201
    assert answer.json()["user"]["name"] == "alice"
    cookie = answer.headers["set-cookie"].lower()
    assert cookie.startswith(f"{COOKIE}=") and "httponly" in cookie and "samesite=lax" in cookie
    assert answer.headers["cache-control"] == "no-store"
    # the client now holds the cookie: it authenticates without a bearer header
    assert (await api.client.get("/api/auth/me")).json()["name"] == "alice"
    token = answer.json()["token"]
    api.client.cookies.clear()
    assert await me(api, {}) == 401
    assert await me(api, {"authorization": f"Bearer {token}"}) == 200


async def test_passwords_are_argon2_hashes_outside_the_published_tables(api: Api) -> None:
    user = await api.sign_up("bob", "correct horse")
    rows = await api.fetch(
        "SELECT password_hash FROM burn_private.credentials WHERE user_id = %s", user.id
    )
    assert rows[0][0].startswith("$argon2id$") and "correct horse" not in rows[0][0]
    columns = await api.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'users'"
    )
    assert not {"password", "password_hash"} & {row[0] for row in columns}


async def test_names_are_unique_and_agents_cannot_be_claimed(api: Api) -> None:
    await api.sign_up("carol")
    for name in ("carol", "CAROL", "sarah", "jerry"):
        answer = await api.client.post(
            "/api/auth/sign-up", json={"name": name, "password": "whatever123"}
        )
        assert answer.status_code == 409, name
        assert answer.json()["message"] == "That name is taken"
    answer = await api.client.post(
        "/api/auth/sign-in", json={"name": "sarah", "password": "whatever123"}
    )
    assert answer.status_code == 401


async def test_sign_in_checks_the_password(api: Api) -> None:
    await api.sign_up("dave", "correct horse")
    wrong = await api.client.post("/api/auth/sign-in", json={"name": "dave", "password": "x" * 9})
    assert wrong.status_code == 401
    assert wrong.json() == {"message": "Wrong name or password", "errors": {}}
    right = await api.client.post(
        "/api/auth/sign-in", json={"name": "Dave", "password": "correct horse"}
    )
    assert right.status_code == 200
    assert await me(api, {"authorization": f"Bearer {right.json()['token']}"}) == 200


async def test_a_bare_user_id_or_a_forged_token_is_not_a_session(api: Api) -> None:
    """§8.1: the original took the user's UUID as its bearer token."""
    user = await api.sign_up()
    assert await me(api, {"authorization": f"Bearer {user.id}"}) == 401
    forged = URLSafeTimedSerializer("another secret", salt="burn-session").dumps(str(uuid.uuid4()))
    assert await me(api, {"authorization": f"Bearer {forged}"}) == 401
    tampered = user.token[:-2] + ("AA" if not user.token.endswith("AA") else "BB")
    assert await me(api, {"authorization": f"Bearer {tampered}"}) == 401
    assert await me(api, user.headers) == 200


async def test_an_expired_session_is_refused(api: Api) -> None:
    user = await api.sign_up()
    async with api.pool.connection() as conn:
        await conn.execute(
            "UPDATE burn_private.sessions SET expires_at = now() - interval '1 second'"
            " WHERE user_id = %s",
            (user.id,),
        )
    assert await me(api, user.headers) == 401


async def test_sign_out_revokes_the_session_and_tells_the_hooks(
    settings: Settings, pool: AsyncConnectionPool[Any]
) -> None:
    signed_out: list[Principal] = []

    async def hook(principal: Principal) -> None:
        signed_out.append(principal)

    async with client_for(create_app(settings, pool=pool, on_sign_out=[hook])) as client:
        api = Api(client, settings, pool)
        user = await api.sign_up()
        other = await api.client.post(
            "/api/auth/sign-in", json={"name": user.name, "password": "correct horse"}
        )
        client.cookies.clear()
        answer = await client.post("/api/auth/sign-out", headers=user.headers)
        assert answer.status_code == 204
        assert f'{COOKIE}=""' in answer.headers["set-cookie"]
        assert await me(api, user.headers) == 401
        client.cookies.set(COOKIE, user.token)
        assert await me(api, {}) == 401
        client.cookies.clear()
        # only that session ended: the other one still works
        assert await me(api, {"authorization": f"Bearer {other.json()['token']}"}) == 200
        assert [p.user_id for p in signed_out] == [user.id]
        # the next sign-in forgets ended sessions; their tokens stay refused
        await client.post(
            "/api/auth/sign-in", json={"name": user.name, "password": "correct horse"}
        )
        client.cookies.clear()
        ended = "SELECT count(*) FROM burn_private.sessions WHERE revoked_at IS NOT NULL"
        assert await api.fetch(ended) == [(0,)]
        assert await me(api, user.headers) == 401


async def test_failed_sign_ins_are_throttled_per_account(api: Api) -> None:
    await api.sign_up("erin", "correct horse")
    limit = api.settings.sign_in_account_limit
    for _ in range(limit):
        answer = await api.client.post(
            "/api/auth/sign-in", json={"name": "erin", "password": "guess1234"}
        )
        assert answer.status_code == 401
    blocked = await api.client.post(
        "/api/auth/sign-in", json={"name": "erin", "password": "correct horse"}
    )
    assert blocked.status_code == 429
    assert int(blocked.headers["retry-after"]) >= 1
    assert "Too many" in blocked.json()["message"]


async def test_failed_sign_ins_are_throttled_per_client_across_processes(
    settings: Settings, pool: AsyncConnectionPool[Any]
) -> None:
    """Two app instances (as two processes would) share the count, which lives in Postgres."""
    tight = with_settings(settings, sign_in_client_limit=4, sign_in_account_limit=100)
    first = client_for(create_app(tight, pool=pool), address="203.0.113.7")
    second = client_for(create_app(tight, pool=pool), address="203.0.113.7")
    elsewhere = client_for(create_app(tight, pool=pool), address="198.51.100.1")
    async with first, second, elsewhere:
        await Api(elsewhere, tight, pool).sign_up("frank", "correct horse")
        statuses = []
        for index in range(6):
            client = first if index % 2 else second
            answer = await client.post(
                "/api/auth/sign-in", json={"name": f"nobody{index}", "password": "guess1234"}
            )
            statuses.append(answer.status_code)
        assert statuses == [401] * 4 + [429] * 2
        answer = await elsewhere.post(
            "/api/auth/sign-in", json={"name": "frank", "password": "correct horse"}
        )
        assert answer.status_code == 200


async def test_parallel_guesses_cannot_overrun_the_limit(api: Api) -> None:
    await api.sign_up("grace", "correct horse")
    limit = api.settings.sign_in_account_limit

    async def guess(index: int) -> int:
        answer = await api.client.post(
            "/api/auth/sign-in", json={"name": "grace", "password": f"guess{index:04}"}
        )
        return answer.status_code

    statuses = await asyncio.gather(*(guess(i) for i in range(limit * 3)))
    assert sorted(statuses) == [401] * limit + [429] * (limit * 2)


async def test_sign_ups_are_throttled_per_client(
    settings: Settings, pool: AsyncConnectionPool[Any]
) -> None:
    tight = with_settings(settings, sign_up_client_limit=2)
    async with client_for(create_app(tight, pool=pool), address="192.0.2.9") as client:
        statuses = [
            (
                await client.post(
                    "/api/auth/sign-up", json={"name": f"spam{i}", "password": "correct horse"}
                )
            ).status_code
            for i in range(3)
        ]
    assert statuses == [201, 201, 429]


async def test_bad_credentials_bodies_are_4xx(api: Api) -> None:
    cases: list[tuple[Any, int]] = [
        ({"name": "x", "password": "correct horse"}, 422),
        ({"name": "has space", "password": "correct horse"}, 422),
        ({"name": "okname", "password": "short"}, 422),
        ({"name": "okname"}, 422),
        ({"name": "okname", "password": "correct horse", "avatar_url": "https://x"}, 422),
        ([], 422),
    ]
    for body, status in cases:
        answer = await api.client.post("/api/auth/sign-up", json=body)
        assert answer.status_code == status, body
        assert set(answer.json()) == {"message", "errors"}
    raw = await api.client.post(
        "/api/auth/sign-in", content=b'{"name": ', headers={"content-type": "application/json"}
    )
    assert raw.status_code == 400
    form = await api.client.post("/api/auth/sign-in", data={"name": "a", "password": "b"})
    assert form.status_code == 415


async def test_current_user_is_the_seam_for_routes_mounted_beside_the_api(
    settings: Settings, pool: AsyncConnectionPool[Any]
) -> None:
    """What a future ``authorize`` for sync routes builds on."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from web.app import current_user

    async def whoami(request: Request) -> Response:
        principal = await current_user(request)
        if principal is None:
            return JSONResponse({"message": "sign in first"}, status_code=401)
        return JSONResponse({"name": principal.name, "session": str(principal.session_id)})

    app = create_app(settings, pool=pool, extra_routes=[Route("/sync/whoami", whoami)])
    async with client_for(app) as client:
        api = Api(client, settings, pool)
        user = await api.sign_up("heidi")
        assert (await client.get("/sync/whoami")).status_code == 401
        by_bearer = await client.get("/sync/whoami", headers=user.headers)
        assert by_bearer.json()["name"] == "heidi"
        client.cookies.set(COOKIE, user.token)
        assert (await client.get("/sync/whoami")).json() == by_bearer.json()
        await client.post("/api/auth/sign-out")
        assert (await client.get("/sync/whoami", headers=user.headers)).status_code == 401


async def test_sign_out_is_announced_to_every_process(api: Api) -> None:
    """Another process LISTENs for revoked sessions (to end their live requests there)."""
    import psycopg

    from web.accounts import SIGN_OUT_CHANNEL

    user = await api.sign_up()
    session = await api.client.get("/api/auth/me", headers=user.headers)
    assert session.status_code == 200
    assert api.settings.database_url is not None
    async with await psycopg.AsyncConnection.connect(
        api.settings.database_url, autocommit=True
    ) as listener:
        await listener.execute(f"LISTEN {SIGN_OUT_CHANNEL}")
        await api.client.post("/api/auth/sign-out", headers=user.headers)
        async for notice in listener.notifies(timeout=60, stop_after=1):
            rows = await api.fetch(
                "SELECT user_id FROM burn_private.sessions WHERE id = %s::uuid", notice.payload
            )
            assert rows == [(user.id,)]
            break
        else:
            raise AssertionError("no notification")
