"""A Starlette app that serves each signed-in user their own rows of ``todos``.

The app decides the ``where`` from the request (here: a bearer token naming the user); a client
may narrow it with its own ``where`` but never widen it. Shape requests are proxied to syncd.

Usage: python examples/authorised_routes.py [http://127.0.0.1:3000]   (listens on port 8000)

The table it serves: CREATE TABLE todos (id int PRIMARY KEY, owner text NOT NULL, title text)
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from syncd.routes import ShapeRoutes, ShapeScope


def create_app(syncd_url: str) -> Starlette:
    routes = ShapeRoutes(syncd_url)

    async def authorize(request: Request) -> ShapeScope | Response:
        token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not token:
            return JSONResponse({"message": "sign in first"}, status_code=401)
        return ShapeScope(where="owner = $1", params=[token], key=token)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await routes.aclose()  # closes the connections to syncd

    app = Starlette(
        routes=[routes.route("/todos", table="todos", authorize=authorize)], lifespan=lifespan
    )
    app.state.shape_routes = routes
    return app


if __name__ == "__main__":
    uvicorn.run(
        create_app(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:3000"), port=8000
    )
