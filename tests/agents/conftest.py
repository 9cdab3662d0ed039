"""Fixtures for the agents: the offline Messages API served on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agents.fake_api import FakeApi, serve


@pytest.fixture
def fake() -> FakeApi:
    return FakeApi(seed=7)


@pytest.fixture
async def base_url(fake: FakeApi) -> AsyncIterator[str]:
    async with serve(fake) as url:
        yield url
