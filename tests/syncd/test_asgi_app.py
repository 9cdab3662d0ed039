"""The ASGI application around the shape API: ``GET /v1/shape`` outside Starlette keeps the
router's promises (normalised paths, a JSON 500 for a bug, every response counted)."""

from __future__ import annotations

from typing import cast

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from syncd.engine import Engine
from syncd.http import ApiSettings, ShapeApi, SyncdApp, create_app
from syncd.metrics import Metrics


class BuggyApi(ShapeApi):
    """A shape API whose GET fails as a bug would; other requests as usual."""

    def __init__(self) -> None:
        super().__init__(cast(Engine, None), ApiSettings(), lambda: "active")
        self.paths: list[str] = []

    async def shape_request(self, request: Request) -> Response:
        self.paths.append(request.url.path)
        if request.method == "GET" and "bug" in request.query_params:
            raise RuntimeError("a bug")
        return Response(b"[]", media_type="application/json")


def app_with_metrics(api: ShapeApi) -> tuple[SyncdApp, Metrics]:
    app = create_app(api)
    metrics = Metrics()
    return SyncdApp(api, app.router, metrics), metrics


def counted(metrics: Metrics, status: str) -> float:
    value = metrics.registry.get_sample_value(
        "syncd_http_responses_total", {"route": "shape", "status": status}
    )
    return value or 0.0


@pytest.mark.parametrize("path", ["/v1/shape", "/v1/shape/", "/v1//shape", "/v1///shape//"])
async def test_every_spelling_of_the_path_reaches_the_api(path: str) -> None:
    api = BuggyApi()
    app, metrics = app_with_metrics(api)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://syncd") as client:
        answer = await client.get(path, params={"table": "items"})
    assert answer.status_code == 200
    assert api.paths == ["/v1/shape"]
    assert counted(metrics, "200") == 1


async def test_a_bug_answers_a_json_500_is_counted_and_reaches_the_server() -> None:
    api = BuggyApi()
    app, metrics = app_with_metrics(api)
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://syncd") as client:
        answer = await client.get("/v1/shape", params={"table": "items", "bug": "1"})
    assert answer.status_code == 500
    assert answer.json() == {"message": "Internal server error"}
    assert answer.headers["cache-control"] == "no-store"
    assert counted(metrics, "500") == 1

    raising = httpx.ASGITransport(app)  # the server sees the exception, to log it
    async with httpx.AsyncClient(transport=raising, base_url="http://syncd") as client:
        with pytest.raises(RuntimeError, match="a bug"):
            await client.get("/v1/shape", params={"table": "items", "bug": "1"})


async def test_other_requests_go_through_the_router() -> None:
    api = BuggyApi()
    transport = httpx.ASGITransport(create_app(api))
    async with httpx.AsyncClient(transport=transport, base_url="http://syncd") as client:
        missing = await client.get("/v1/nowhere")
        health = await client.get("/v1/health/")
        deleted = await client.delete("/v1/shape", params={"table": "items"})
    assert missing.status_code == 404
    assert missing.json() == {"message": "Not found"}
    assert health.status_code == 200
    assert deleted.status_code == 200
    assert api.paths == ["/v1/shape"]  # the DELETE, through the router
