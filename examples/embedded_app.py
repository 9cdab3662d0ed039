"""A whole app with syncd inside it: each signed-in user follows their own rows of ``todos``
through the app's own route, served by a syncd embedded in the same process (no daemon, no
second port).

Usage: DATABASE_URL=postgresql://... python examples/embedded_app.py   (listens on port 8000)

The table it serves: CREATE TABLE todos (id int PRIMARY KEY, owner text NOT NULL, title text)

The embedded syncd has a slot and a publication of its own (``app_slot``, ``app_publication``),
so it runs next to a syncd daemon on the same database without either noticing the other.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from syncd.embed import EmbeddedSyncd
from syncd.routes import ShapeRoutes, ShapeScope


async def authorize(request: Request) -> ShapeScope | Response:
    """The caller's rows: here the bearer token names the user (check a real session instead)."""
    user = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not user:
        return JSONResponse({"message": "sign in first"}, status_code=401)
    return ShapeScope(where="owner = $1", params=[user], key=user)


def create_app(database_url: str, storage_dir: Path, *, slot: str = "app_slot") -> Starlette:
    """The app: ``GET /todos`` speaks the shape protocol, narrowed to the caller's rows."""
    syncd = EmbeddedSyncd(database_url, storage_dir, slot=slot, publication="app_publication")
    routes = ShapeRoutes.in_process(syncd)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with syncd:  # starts with the app, stops with it
            yield
        await routes.aclose()

    todos = routes.route("/todos", table="todos", authorize=authorize)
    return Starlette(routes=[todos], lifespan=lifespan)


if __name__ == "__main__":
    app = create_app(os.environ["DATABASE_URL"], Path(".syncd-app"))
    uvicorn.run(app, port=8000, timeout_graceful_shutdown=1)
