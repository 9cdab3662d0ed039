"""The agents' settings, read from the environment.

``ANTHROPIC_API_KEY`` and ``ANTHROPIC_BASE_URL`` are the SDK's own variables; the rest are
``AGENTS_*``. Without a key, a base URL is required (the offline fake accepts any key).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field


class SettingsError(ValueError):
    """A setting is missing or malformed."""


OFFLINE_KEY = "offline"
"""The key sent to a base URL when ``ANTHROPIC_API_KEY`` is unset (the fake accepts any)."""


@dataclass(frozen=True)
class LlmSettings:
    api_key: str = field(repr=False)
    base_url: str | None = None
    model: str = "claude-haiku-4-5"
    max_tokens: int = 512
    timeout_seconds: float = 30.0
    """Longest wait for a response (read, write and pool), per attempt."""
    connect_timeout_seconds: float = 5.0
    max_retries: int = 2
    """The SDK's retries on 408/409/429/5xx, connection errors and timeouts."""


def _number(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, not {raw!r}") from None
    if not value >= minimum:
        raise SettingsError(f"{name} must be at least {minimum}, not {raw!r}")
    return value


def _integer(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, not {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, not {raw!r}")
    return value


def llm_settings_from_env(env: Mapping[str, str] | None = None) -> LlmSettings:
    env = os.environ if env is None else env
    key = env.get("ANTHROPIC_API_KEY") or None
    base_url = env.get("ANTHROPIC_BASE_URL") or None
    if key is None and base_url is None:
        raise SettingsError("set ANTHROPIC_API_KEY, or ANTHROPIC_BASE_URL for an offline API")
    return LlmSettings(
        api_key=key or OFFLINE_KEY,
        base_url=base_url,
        model=env.get("AGENTS_MODEL") or LlmSettings.model,
        max_tokens=_integer(env, "AGENTS_MAX_TOKENS", LlmSettings.max_tokens, 1),
        timeout_seconds=_number(env, "AGENTS_TIMEOUT_SECONDS", LlmSettings.timeout_seconds, 0.001),
        connect_timeout_seconds=_number(
            env, "AGENTS_CONNECT_TIMEOUT_SECONDS", LlmSettings.connect_timeout_seconds, 0.001
        ),
        max_retries=_integer(env, "AGENTS_MAX_RETRIES", LlmSettings.max_retries, 0),
    )
