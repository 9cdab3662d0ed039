"""The built app's serving (web.ui_static): assets, the shell for app paths, never for /api."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from web.errors import ApiError, api_error_handler
from web.ui_static import mount_ui


async def _health(request: object) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def _app() -> Starlette:
    return Starlette(
        routes=[Route("/api/health", _health)],
        exception_handlers={ApiError: api_error_handler},
    )


def test_shell_for_app_paths_assets_and_api_untouched(tmp_path: Path) -> None:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<div id=root></div>")
    (tmp_path / "assets" / "app-1234.js").write_text("console.log(1)")
    app = _app()
    assert mount_ui(app, tmp_path)
    client = TestClient(app)
    for path in ("/", "/threads/0b9e7a3c-0000-4000-8000-000000000000", "/join/x", "/welcome"):
        answer = client.get(path)
        assert answer.status_code == 200, path
        assert answer.text == "<div id=root></div>"
        assert answer.headers["content-type"].startswith("text/html")
    assert client.get("/assets/app-1234.js").text == "console.log(1)"
    assert client.get("/assets/missing.js").status_code == 404
    assert client.get("/api/health").json() == {"status": "ok"}
    missing = client.get("/api/no-such-route")
    assert missing.status_code == 404
    assert missing.json()["message"] == "No such route"


def test_nothing_mounted_when_not_built(tmp_path: Path) -> None:
    app = _app()
    assert not mount_ui(app, tmp_path)
    assert TestClient(app).get("/").status_code == 404
