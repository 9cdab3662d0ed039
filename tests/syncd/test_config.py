"""Daemon settings from flags and the environment: the cache lifetimes of catch-up responses."""

from __future__ import annotations

import pytest

from syncd.config import ConfigError, load_settings

DATABASE = ["--database-url", "postgresql://localhost/db"]


def test_cache_lifetimes_default_to_a_minute_and_five() -> None:
    settings = load_settings(DATABASE, env={})
    assert (settings.cache_max_age, settings.cache_stale_age) == (60, 300)


def test_cache_lifetimes_from_the_environment_and_flags() -> None:
    env = {"SYNCD_CACHE_MAX_AGE": "5", "SYNCD_CACHE_STALE_AGE": "7"}
    settings = load_settings(DATABASE, env=env)
    assert (settings.cache_max_age, settings.cache_stale_age) == (5, 7)
    flags = [*DATABASE, "--cache-max-age", "0", "--cache-stale-age", "9"]
    settings = load_settings(flags, env=env)
    assert (settings.cache_max_age, settings.cache_stale_age) == (0, 9)


@pytest.mark.parametrize("value", ["-1", "soon", "1.5"])
def test_bad_cache_lifetimes_are_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="SYNCD_CACHE_MAX_AGE"):
        load_settings(DATABASE, env={"SYNCD_CACHE_MAX_AGE": value})
