"""The OpenAPI 3.1 document of the web app's API, built from the body Structs themselves.

Layer: ``web``. Request schemas come from ``msgspec`` (the same Structs that decode the bodies),
so the document cannot drift from what the server accepts.
"""

from __future__ import annotations

from typing import Any

import msgspec

from web import bodies

ERROR = {
    "type": "object",
    "required": ["message", "errors"],
    "properties": {
        "message": {"type": "string"},
        "errors": {
            "type": "object",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
        },
    },
}
TXID = {
    "type": "object",
    "required": ["txid"],
    "properties": {
        "txid": {
            "type": "integer",
            "description": "id of the writing transaction, as in the sync stream's `txids`",
        }
    },
}
SYNC_TOKEN = {
    "type": "string",
    "description": "bearer token for the sync routes only, ended with the session",
}
SESSION = {
    "type": "object",
    "required": ["user", "token", "sync_token", "expires_at"],
    "properties": {
        "user": {"$ref": "#/components/schemas/User"},
        "token": {"type": "string", "description": "bearer token (also set as a cookie)"},
        "sync_token": SYNC_TOKEN,
        "expires_at": {"type": "string", "format": "date-time"},
    },
}
USER = {
    "type": "object",
    "required": ["id", "name"],
    "properties": {"id": {"type": "string", "format": "uuid"}, "name": {"type": "string"}},
}
ME = {
    "type": "object",
    "required": ["id", "name", "sync_token"],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "name": {"type": "string"},
        "sync_token": SYNC_TOKEN,
    },
}
REASONS = {
    "400": "malformed JSON",
    "401": "not signed in (or a wrong name or password)",
    "403": "not allowed",
    "404": "no such thread or member",
    "409": "conflicts with the current state, or the id was used for another write",
    "413": "body too large",
    "415": "body is not application/json",
    "422": "body has the wrong shape",
    "429": "too many attempts",
    "503": "the database is unavailable",
}
BODY_ERRORS = ("400", "413", "415", "422", "503")
THREAD_ERRORS = ("401", "403", "404", "409", *BODY_ERRORS)
THREAD_ID = {
    "name": "thread_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}
BEARER: list[dict[str, list[str]]] = [{"bearer": []}, {"cookie": []}]


def _errors(codes: tuple[str, ...]) -> dict[str, Any]:
    return {
        code: {
            "description": REASONS[code],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for code in codes
    }


def _ok(status: str, schema_name: str, description: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema_name}"}
    return {status: {"description": description, "content": {"application/json": {"schema": ref}}}}


def _body(kind: type[bodies.Body]) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{kind.__name__}"}
    return {"required": True, "content": {"application/json": {"schema": ref}}}


def _write(kind: type[bodies.Body], summary: str, path_id: bool = True) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "operationId": kind.__name__[0].lower() + kind.__name__[1:],
        "security": BEARER,
        "requestBody": _body(kind),
        "responses": {
            **_ok("200", "Txid", "applied (or applied before)"),
            **_errors(THREAD_ERRORS),
        },
    }
    if path_id:
        operation["parameters"] = [THREAD_ID]
    return {"post": operation}


def _auth(operation_id: str, status: str, summary: str, codes: tuple[str, ...]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "operationId": operation_id,
            "requestBody": _body(bodies.Credentials),
            "responses": {**_ok(status, "Session", "signed in"), **_errors(codes)},
        }
    }


def document() -> dict[str, Any]:
    """The document."""
    kinds = [
        bodies.Credentials,
        bodies.CreateThread,
        bodies.RenameThread,
        bodies.DeleteThread,
        bodies.JoinThread,
        bodies.LeaveThread,
        bodies.PostMessage,
    ]
    _, schemas = msgspec.json.schema_components(kinds, ref_template="#/components/schemas/{name}")
    schemas.update(Error=ERROR, Txid=TXID, Session=SESSION, User=USER, Me=ME)
    threads = "/api/threads/{thread_id}"
    return {
        "openapi": "3.1.0",
        "info": {"title": "Burn web API", "version": "1"},
        "paths": {
            "/api/auth/sign-up": _auth(
                "signUp", "201", "Create an account and sign in", ("409", "429", *BODY_ERRORS)
            ),
            "/api/auth/sign-in": _auth("signIn", "200", "Sign in", ("401", "429", *BODY_ERRORS)),
            "/api/auth/sign-out": {
                "post": {
                    "summary": "End the session (the token is refused from now on)",
                    "operationId": "signOut",
                    "responses": {"204": {"description": "signed out"}, **_errors(("503",))},
                }
            },
            "/api/auth/me": {
                "get": {
                    "summary": "The signed-in user",
                    "operationId": "me",
                    "security": BEARER,
                    "responses": {**_ok("200", "Me", "the user"), **_errors(("401", "503"))},
                }
            },
            "/api/threads": _write(bodies.CreateThread, "Create a thread", path_id=False),
            f"{threads}/rename": _write(bodies.RenameThread, "Rename a thread (owner only)"),
            f"{threads}/delete": _write(bodies.DeleteThread, "Delete a thread (owner only)"),
            f"{threads}/join": _write(bodies.JoinThread, "Join a thread as a member"),
            f"{threads}/leave": _write(
                bodies.LeaveThread, "Leave a thread, or remove someone (owner only)"
            ),
            f"{threads}/messages": _write(bodies.PostMessage, "Post a message"),
            "/api/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": {"200": {"description": "the document"}},
                }
            },
            "/api/health": {
                "get": {
                    "summary": "Liveness",
                    "operationId": "health",
                    "responses": {"200": {"description": "alive"}},
                }
            },
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "burn_session"},
            },
        },
    }
