"""Serving the built browser app (``web/ui``, built into ``web/ui/dist`` by ``make ui``).

Layer: ``web``. :func:`mount_ui` adds, after every other route of the app, the hashed assets
under ``/assets`` and the HTML shell for every other ``GET`` path outside ``/api/`` (the app
routes in the browser). The shell is read per request, so a rebuild needs no restart.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from web.errors import NO_STORE, not_found

UI_DIST = Path(__file__).resolve().parent / "ui" / "dist"


def ui_routes(dist: Path) -> list[BaseRoute]:
    """The built app's routes: its assets, and its shell for every other non-API path."""
    shell = dist / "index.html"

    async def index(request: Request) -> Response:
        if request.url.path.startswith("/api/"):
            raise not_found("route")
        return Response(shell.read_bytes(), media_type="text/html", headers=NO_STORE)

    return [
        Mount("/assets", app=StaticFiles(directory=dist / "assets"), name="assets"),
        Route("/{path:path}", index, methods=["GET", "HEAD"]),
    ]


def mount_ui(app: Starlette, dist: Path = UI_DIST) -> bool:
    """Serve the app built in ``dist`` from ``app``; False (nothing mounted) when not built."""
    if not (dist / "index.html").exists():
        return False
    app.router.routes.extend(ui_routes(dist))
    return True
