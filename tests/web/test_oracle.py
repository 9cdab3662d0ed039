"""The API's validation against Postgres's own: the constraints in the schema are the oracle.

For generated message texts and thread names, an API that accepts must store exactly what it
was sent, and what the database's constraints refuse must be a 422, never a 5xx.
"""

from __future__ import annotations

import uuid

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Api, User

WHITESPACE = " \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u1680\u2028\u200b\u3000"
TEXTS = st.text(max_size=40) | st.text(alphabet=WHITESPACE + "a\x00", max_size=5)
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_owners: dict[int, tuple[User, uuid.UUID]] = {}
"""One owner and thread per ``Api`` (per test run): examples share them."""


async def owner_and_thread(api: Api) -> tuple[User, uuid.UUID]:
    if id(api) not in _owners:
        owner = await api.sign_up()
        _owners[id(api)] = (owner, await api.create_thread(owner))
    return _owners[id(api)]


async def database_accepts(api: Api, query: str, value: str) -> bool:
    try:
        rows = await api.fetch(query, value)
    except psycopg.DataError:  # e.g. a NUL character: not text Postgres can hold
        return False
    return bool(rows[0][0])


@SETTINGS
@given(text=TEXTS)
async def test_message_texts_agree_with_the_schema(api: Api, text: str) -> None:
    owner, thread = await owner_and_thread(api)
    event = uuid.uuid4()
    answer = await api.write(owner, thread, "messages", id=str(event), text=text)
    assert answer.status_code in (200, 422), answer.text
    valid = await database_accepts(
        api, "SELECT event_data_is_valid('text', jsonb_build_object('text', %s::text))", text
    )
    if answer.status_code == 200:
        assert valid
        stored = await api.fetch("SELECT data->>'text' FROM events WHERE id = %s", event)
        assert stored == [(text,)]
    else:
        assert answer.json()["message"]


@SETTINGS
@given(name=TEXTS)
async def test_thread_names_agree_with_the_schema(api: Api, name: str) -> None:
    owner, thread = await owner_and_thread(api)
    answer = await api.write(owner, thread, "rename", name=name)
    assert answer.status_code in (200, 422), answer.text
    valid = await database_accepts(
        api,
        "SELECT char_length(n) BETWEEN 1 AND 200 AND n ~ '[^[:space:]]' FROM (SELECT %s::text n) v",
        name,
    )
    if answer.status_code == 200:
        assert valid
        assert await api.fetch("SELECT name FROM threads WHERE id = %s", thread) == [(name,)]
