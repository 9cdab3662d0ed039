"""A sync route whose syncd cannot be reached answers 503 with ``Retry-After`` (the clients
retry it), never a 500."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool

from tests.syncd_process import free_port
from web.app import create_app
from web.config import Settings

from .conftest import Api, client_for, with_settings


async def test_an_unreachable_syncd_is_a_503(
    api: Api, settings: Settings, pool: AsyncConnectionPool[Any]
) -> None:
    alice = await api.sign_up()
    nowhere = with_settings(settings, syncd_url=f"http://127.0.0.1:{free_port()}")
    async with client_for(create_app(nowhere, pool=pool)) as client:
        for table in ("threads", "events", "users"):
            answer = await client.get(
                f"/api/sync/{table}", params={"offset": "-1"}, headers=alice.headers
            )
            assert answer.status_code == 503
            assert answer.headers["retry-after"] == "1"
            assert answer.json()["message"] == "Sync is unavailable"
