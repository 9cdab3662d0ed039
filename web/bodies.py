"""Request bodies: one ``msgspec`` Struct per operation, and their decoding.

Layer: ``web``. Structs forbid unknown fields, so a body cannot smuggle in a role, an author, an
event kind or a timestamp: what a client may say is exactly what the Struct lists. Decoding
answers 415 (not JSON), 413 (too large), 400 (malformed JSON) or 422 (valid JSON, wrong shape).
"""

from __future__ import annotations

import uuid
from typing import Annotated, TypeVar

import msgspec
from starlette.requests import Request

from web.errors import ApiError

MAX_BODY_BYTES = 16 * 1024
NOT_BLANK = r"[^\s]"
USERNAME = r"^[A-Za-z0-9_-]{2,16}$"

Name = Annotated[str, msgspec.Meta(pattern=USERNAME, description="2-16 letters, digits, _ or -")]
Password = Annotated[str, msgspec.Meta(min_length=8, max_length=256)]
ThreadName = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=NOT_BLANK)]
MessageText = Annotated[str, msgspec.Meta(min_length=1, max_length=4000, pattern=NOT_BLANK)]


class Body(msgspec.Struct, forbid_unknown_fields=True):
    """Base of every request body."""


class Credentials(Body):
    """Sign up or sign in."""

    name: Name
    password: Password


class CreateThread(Body):
    """Create a thread; ``id`` is the new thread's (client-generated) id."""

    id: uuid.UUID
    name: ThreadName = "Untitled thread"


class RenameThread(Body):
    """Rename a thread; ``id`` identifies this write."""

    id: uuid.UUID
    name: ThreadName


class DeleteThread(Body):
    """Delete a thread; ``id`` identifies this write."""

    id: uuid.UUID


class JoinThread(Body):
    """Join a thread as a member; ``id`` is the new membership's id."""

    id: uuid.UUID


class LeaveThread(Body):
    """Leave a thread, or (the owner) remove ``user_id`` from it; ``id`` identifies this write."""

    id: uuid.UUID
    user_id: uuid.UUID | None = None


class PostMessage(Body):
    """Post a text message; ``id`` is the new event's id."""

    id: uuid.UUID
    text: MessageText


B = TypeVar("B", bound=Body)


async def read_body(request: Request, kind: type[B]) -> B:
    """The request's JSON body decoded as ``kind``, or an :class:`ApiError`."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(415, "Send the body as application/json")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, f"The body is larger than {MAX_BODY_BYTES} bytes")
    try:
        body = msgspec.json.decode(bytes(raw), type=kind)
    except msgspec.ValidationError as exc:
        raise ApiError(422, "Invalid body", {"body": [str(exc)]}) from exc
    except msgspec.DecodeError as exc:
        raise ApiError(400, "Malformed JSON", {"body": [str(exc)]}) from exc
    _check_storable(body)
    return body


def _check_storable(body: Body) -> None:
    """Postgres text holds neither NUL characters nor lone surrogates."""
    for field in body.__struct_fields__:
        value = getattr(body, field)
        if not isinstance(value, str):
            continue
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ApiError(422, "Invalid body", {field: ["not valid Unicode text"]}) from None
        if "\x00" in value:
            raise ApiError(422, "Invalid body", {field: ["contains a NUL character"]})
