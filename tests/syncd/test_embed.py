"""``EmbeddedSyncd`` without a database: argument checks (the rest is in the conformance suite)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shapes.client import ShapeDefinition
from syncd.config import ConfigError
from syncd.embed import EmbeddedSyncd


async def test_streams_use_the_in_process_url(tmp_path: Path) -> None:
    embedded = EmbeddedSyncd("dbname=nothing", tmp_path)
    stream = embedded.stream("items", offset="-1", live_mode="sse")
    assert stream.definition == ShapeDefinition.of("items")
    assert stream.live_mode == "sse"
    assert stream.url == "http://syncd.embedded/v1/shape"
    await embedded.default_client.aclose()


def test_not_running_and_bad_settings(tmp_path: Path) -> None:
    embedded = EmbeddedSyncd("dbname=nothing", tmp_path, slot="s1")
    assert embedded.settings.slot == "s1"
    with pytest.raises(RuntimeError, match="not running"):
        _ = embedded.engine
    with pytest.raises(ConfigError):
        EmbeddedSyncd("dbname=nothing", tmp_path, long_poll_timeout=0)
