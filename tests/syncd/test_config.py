"""Daemon settings from flags and the environment: cache lifetimes, retention, log format."""

from __future__ import annotations

import pytest

from syncd.config import ConfigError, load_settings, parse_size

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


@pytest.mark.parametrize(
    ("text", "size"),
    [("512", 512), ("500K", 500 * 1024), ("10GiB", 10 << 30), ("1.5t", int(1.5 * (1 << 40)))],
)
def test_sizes_take_binary_units(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_retention_is_off_by_default_and_set_by_flags_or_environment() -> None:
    settings = load_settings(DATABASE, env={})
    assert (settings.shape_ttl, settings.storage_quota, settings.min_free_disk) == (None,) * 3
    env = {"SYNCD_SHAPE_TTL": "86400", "SYNCD_STORAGE_QUOTA": "50G", "SYNCD_LOG_FORMAT": "JSON"}
    settings = load_settings([*DATABASE, "--min-free-disk", "2G"], env=env)
    assert settings.shape_ttl == 86400
    assert settings.storage_quota == 50 << 30
    assert settings.min_free_disk == 2 << 30
    assert settings.log_format == "json"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SYNCD_SHAPE_TTL", "0"),
        ("SYNCD_SHAPE_TTL", "a week"),
        ("SYNCD_STORAGE_QUOTA", "lots"),
        ("SYNCD_STORAGE_QUOTA", "0"),
        ("SYNCD_MIN_FREE_DISK", "-5G"),
        ("SYNCD_RETENTION_INTERVAL", "0"),
    ],
)
def test_bad_retention_settings_are_refused(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_settings(DATABASE, env={variable: value})
