"""The write API: every authorisation rule, the holes of the original, idempotent retries."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from psycopg_pool import AsyncConnectionPool

from web.app import create_app
from web.config import Settings

from .conftest import AGENTS, FRANKIE, JERRY, SARAH, Api, client_for, with_settings


async def roles(api: Api, thread: uuid.UUID) -> dict[uuid.UUID, str]:
    rows = await api.fetch("SELECT user_id, role FROM memberships WHERE thread_id = %s", thread)
    return {row[0]: row[1] for row in rows}


async def events(api: Api, thread: uuid.UUID) -> list[tuple[Any, ...]]:
    return await api.fetch(
        "SELECT user_id, kind, data FROM events WHERE thread_id = %s ORDER BY seq", thread
    )


def refused(answer: Any, status: int) -> None:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"message", "errors"} and body["message"]


# -- creating, renaming, deleting ---------------------------------------------------------------


async def test_creating_a_thread_adds_owner_agents_and_event_in_one_transaction(api: Api) -> None:
    alice = await api.sign_up()
    thread = uuid.uuid4()
    answer = await api.post(alice, "/api/threads", {"id": str(thread), "name": "roast me"})
    assert answer.status_code == 200
    txid = answer.json()["txid"]
    assert await roles(api, thread) == {
        alice.id: "owner",
        SARAH: "producer",
        JERRY: "comedian",
        FRANKIE: "comedian",
    }
    assert await events(api, thread) == [
        (alice.id, "system", {"action": "created", "target": "thread"})
    ]
    writers = await api.fetch(
        "SELECT xmin::text FROM threads WHERE id = %s"
        " UNION ALL SELECT xmin::text FROM memberships WHERE thread_id = %s"
        " UNION ALL SELECT xmin::text FROM events WHERE thread_id = %s",
        thread,
        thread,
        thread,
    )
    assert {int(row[0]) for row in writers} == {txid}


async def test_only_the_owner_renames_or_deletes(api: Api) -> None:
    owner, member, outsider = await api.sign_up(), await api.sign_up(), await api.sign_up()
    thread = await api.create_thread(owner)
    assert (await api.write(member, thread, "join")).status_code == 200
    for user in (member, outsider):
        refused(await api.write(user, thread, "rename", name="mine now"), 403)
        refused(await api.write(user, thread, "delete"), 403)
    assert (await api.write(owner, thread, "rename", name="new name")).status_code == 200
    assert await api.fetch("SELECT name, status FROM threads") == [("new name", "started")]
    assert (await api.write(owner, thread, "delete")).status_code == 200
    for table in ("threads", "memberships", "events"):
        assert await api.fetch(f"SELECT count(*) FROM {table}") == [(0,)], table


async def test_rename_writes_only_the_name(api: Api) -> None:
    """§8.4: the original let any member change a thread's ``status`` and even its ``id``."""
    owner = await api.sign_up()
    thread = await api.create_thread(owner)
    for extra in ({"status": "completed"}, {"new_id": str(uuid.uuid4())}):
        refused(await api.write(owner, thread, "rename", name="x", **extra), 422)
    assert await api.fetch("SELECT id, status FROM threads") == [(thread, "started")]


async def test_a_user_owns_a_bounded_number_of_threads(
    settings: Settings, pool: AsyncConnectionPool[Any]
) -> None:
    """§8.16: each thread costs three agents; the original had no cap."""
    tight = with_settings(settings, max_threads_per_user=2)
    async with client_for(create_app(tight, pool=pool)) as client:
        api = Api(client, tight, pool)
        user = await api.sign_up()
        await api.create_thread(user)
        await api.create_thread(user)
        refused(await api.post(user, "/api/threads", {"id": str(uuid.uuid4())}), 403)


# -- joining and leaving ------------------------------------------------------------------------


async def test_joining_makes_a_member_with_a_joined_event(api: Api) -> None:
    owner, bob = await api.sign_up(), await api.sign_up()
    thread = await api.create_thread(owner)
    membership = uuid.uuid4()
    answer = await api.write(bob, thread, "join", id=str(membership))
    assert answer.status_code == 200
    assert await api.fetch("SELECT id, role FROM memberships WHERE user_id = %s", bob.id) == [
        (membership, "member")
    ]
    assert (await events(api, thread))[-1] == (
        bob.id,
        "system",
        {"action": "joined", "target": "thread"},
    )
    refused(await api.write(bob, thread, "join"), 409)
    refused(await api.write(owner, thread, "join"), 409)
    refused(await api.write(bob, uuid.uuid4(), "join"), 404)


async def test_nobody_makes_themselves_owner(api: Api) -> None:
    """§8.3: the original's join accepted any role, so anyone could join as ``owner``."""
    owner, mallory = await api.sign_up(), await api.sign_up()
    thread = await api.create_thread(owner)
    for extra in ({"role": "owner"}, {"role": "producer"}, {"user_id": str(owner.id)}):
        refused(await api.write(mallory, thread, "join", **extra), 422)
    assert mallory.id not in await roles(api, thread)
    await api.write(mallory, thread, "join")
    assert (await roles(api, thread))[mallory.id] == "member"


async def test_a_member_leaves_on_their_own(api: Api) -> None:
    """§8.5: self-leave failed in the original."""
    owner, bob = await api.sign_up(), await api.sign_up()
    thread = await api.create_thread(owner)
    await api.write(bob, thread, "join")
    assert (await api.write(bob, thread, "leave")).status_code == 200
    assert bob.id not in await roles(api, thread)
    assert (await events(api, thread))[-1] == (
        bob.id,
        "system",
        {"action": "left", "target": "thread"},
    )
    refused(await api.write(bob, thread, "leave"), 403)


async def test_only_the_owner_removes_others_and_the_owner_stays(api: Api) -> None:
    owner, bob, carol = await api.sign_up(), await api.sign_up(), await api.sign_up()
    thread = await api.create_thread(owner)
    await api.write(bob, thread, "join")
    await api.write(carol, thread, "join")
    for target in (carol.id, owner.id, JERRY):
        refused(await api.write(bob, thread, "leave", user_id=str(target)), 403)
    refused(await api.write(owner, thread, "leave"), 409)
    refused(await api.write(owner, thread, "leave", user_id=str(uuid.uuid4())), 404)
    assert (await api.write(owner, thread, "leave", user_id=str(JERRY))).status_code == 200
    assert (await api.write(owner, thread, "leave", user_id=str(carol.id))).status_code == 200
    assert set(await roles(api, thread)) == {owner.id, bob.id, SARAH, FRANKIE}
    assert (await events(api, thread))[-2][:2] == (JERRY, "system")


# -- posting ------------------------------------------------------------------------------------


async def test_members_post_only_to_their_threads_and_only_as_themselves(api: Api) -> None:
    owner, outsider = await api.sign_up(), await api.sign_up()
    thread = await api.create_thread(owner)
    refused(await api.write(outsider, thread, "messages", text="hi"), 403)
    refused(await api.write(outsider, uuid.uuid4(), "messages", text="hi"), 404)
    refused(await api.post(None, f"/api/threads/{thread}/messages", {"id": str(uuid.uuid4())}), 401)
    for extra in ({"user_id": str(owner.id)}, {"author": "sarah"}):
        refused(await api.write(outsider, thread, "messages", text="as you", **extra), 422)
    assert (await api.write(owner, thread, "messages", text="hello")).status_code == 200
    assert (await events(api, thread))[-1] == (owner.id, "text", {"text": "hello"})


async def test_no_system_or_agent_events_through_the_api(api: Api) -> None:
    """§8.4: humans could forge ``system`` events (``left``, ``closed``) in the original."""
    owner = await api.sign_up()
    thread = await api.create_thread(owner)
    forged: list[dict[str, Any]] = [
        {"kind": "system", "data": {"action": "closed", "target": "thread"}},
        {"kind": "tool_use"},
        {"type": "system"},
        {"data": {"text": "x"}},
        {"user_id": str(SARAH)},
        {"inserted_at": "2000-01-01T00:00:00Z"},
    ]
    for extra in forged:
        refused(await api.write(owner, thread, "messages", text="x", **extra), 422)
    assert [row[1] for row in await events(api, thread)] == ["system"]


async def test_messages_keep_their_order(api: Api) -> None:
    """§8.11: the original ordered by a one-second timestamp; events carry a monotonic seq."""
    owner = await api.sign_up()
    thread = await api.create_thread(owner)
    texts = [f"message {n}" for n in range(20)]
    for text in texts:
        await api.write(owner, thread, "messages", text=text)
    rows = await api.fetch("SELECT data->>'text' FROM events WHERE kind = 'text' ORDER BY seq")
    assert [row[0] for row in rows] == texts


async def test_bad_message_bodies_are_4xx(api: Api) -> None:
    owner = await api.sign_up()
    thread = await api.create_thread(owner)
    for text, status in (("", 422), ("   ", 422), ("x" * 4001, 422), ("a\x00b", 422), (3, 422)):
        refused(await api.write(owner, thread, "messages", text=text), status)
    refused(
        await api.post(owner, f"/api/threads/{thread}/messages", {"id": "nope", "text": "x"}), 422
    )
    refused(await api.post(owner, "/api/threads/not-a-uuid/messages", {"text": "x"}), 404)
    big = {"id": str(uuid.uuid4()), "text": "x", "pad": "y" * 20_000}
    refused(await api.post(owner, f"/api/threads/{thread}/messages", big), 413)
    answer = await api.client.post(
        f"/api/threads/{thread}/messages",
        content=b'{"id": "\\ud800", "text": "x"}',
        headers={**owner.headers, "content-type": "application/json"},
    )
    assert answer.status_code in (400, 422)
    answer = await api.client.post(
        f"/api/threads/{thread}/messages",
        content=b'{"id": "' + str(uuid.uuid4()).encode() + b'", "text": "\\ud800"}',
        headers={**owner.headers, "content-type": "application/json"},
    )
    assert answer.status_code in (400, 422)  # a lone surrogate: never reaches Postgres


# -- idempotent retries -------------------------------------------------------------------------


async def test_a_retried_write_gets_the_same_answer_and_writes_nothing_twice(api: Api) -> None:
    owner = await api.sign_up()
    thread = uuid.uuid4()
    body = {"id": str(thread), "name": "once"}
    first = await api.post(owner, "/api/threads", body)
    again = await api.post(owner, "/api/threads", body)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert await api.fetch("SELECT count(*) FROM memberships") == [(4,)]
    message = {"id": str(uuid.uuid4()), "text": "only once"}
    path = f"/api/threads/{thread}/messages"
    answers = [await api.post(owner, path, message) for _ in range(2)]
    # the same ids in capitals are the same write
    shouting = {"id": message["id"].upper(), "text": "only once"}
    answers.append(await api.post(owner, f"/api/threads/{str(thread).upper()}/messages", shouting))
    assert len({answer.json()["txid"] for answer in answers}) == 1
    assert await api.fetch("SELECT count(*) FROM events WHERE kind = 'text'") == [(1,)]


async def test_concurrent_retries_are_applied_once(api: Api) -> None:
    owner, bob = await api.sign_up(), await api.sign_up()
    thread = await api.create_thread(owner)
    join = {"id": str(uuid.uuid4())}
    answers = await asyncio.gather(
        *(api.post(bob, f"/api/threads/{thread}/join", join) for _ in range(4))
    )
    assert [answer.status_code for answer in answers] == [200] * 4
    assert len({answer.json()["txid"] for answer in answers}) == 1
    joined = await api.fetch("SELECT count(*) FROM events WHERE data->>'action' = 'joined'")
    assert joined == [(1,)]


async def test_an_id_reused_for_another_write_is_refused(api: Api) -> None:
    owner, other = await api.sign_up(), await api.sign_up()
    thread = await api.create_thread(owner)
    write_id = str(uuid.uuid4())
    assert (await api.write(owner, thread, "messages", id=write_id, text="one")).status_code == 200
    refused(await api.write(owner, thread, "messages", id=write_id, text="two"), 409)
    refused(await api.write(owner, thread, "rename", id=write_id, name="two"), 409)
    await api.write(other, thread, "join")
    refused(await api.write(other, thread, "messages", id=write_id, text="one"), 409)
    # a thread id already taken by someone else's thread
    refused(await api.post(other, "/api/threads", {"id": str(thread)}), 409)
    # an id that an agent's row already uses (written without the API)
    async with api.pool.connection() as conn:
        cursor = await conn.execute("SELECT id FROM events LIMIT 1")
        row = await cursor.fetchone()
    assert row is not None
    refused(await api.write(owner, thread, "messages", id=str(row[0]), text="clash"), 409)
    assert [
        r[0] for r in await api.fetch("SELECT data->>'text' FROM events WHERE kind='text'")
    ] == ["one"]


async def test_writes_need_a_session(api: Api) -> None:
    thread = uuid.uuid4()
    for path in ("/api/threads", f"/api/threads/{thread}/rename", f"/api/threads/{thread}/delete"):
        refused(await api.post(None, path, {"id": str(uuid.uuid4()), "name": "x"}), 401)
    user = await api.sign_up()
    assert AGENTS.isdisjoint({user.id})


async def test_a_cookie_alone_cannot_write_without_a_json_body(api: Api) -> None:
    """A form another site posts with the user's cookie is not JSON: refused, nothing written."""
    owner = await api.sign_up()
    thread = await api.create_thread(owner)
    api.client.cookies.set("burn_session", owner.token)
    try:
        form = await api.client.post(
            f"/api/threads/{thread}/messages", data={"id": str(uuid.uuid4()), "text": "csrf"}
        )
        refused(form, 415)
        plain = await api.client.post(
            f"/api/threads/{thread}/messages",
            content=b'{"id": "' + str(uuid.uuid4()).encode() + b'", "text": "csrf"}',
            headers={"content-type": "text/plain"},
        )
        refused(plain, 415)
        ok = await api.client.post(
            f"/api/threads/{thread}/messages", json={"id": str(uuid.uuid4()), "text": "mine"}
        )
        assert ok.status_code == 200
    finally:
        api.client.cookies.clear()
    assert [row[2] for row in await events(api, thread)][1:] == [{"text": "mine"}]
