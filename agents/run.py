"""``python -m agents run``: one worker process, configured from the environment.

Settings (besides the Messages API's, see :mod:`agents.settings`):

| variable | meaning (default) |
|---|---|
| ``AGENTS_DATABASE_URL`` (or ``DATABASE_URL``) | the Burn database (required) |
| ``AGENTS_SYNCD_URL`` | syncd's base URL (``http://127.0.0.1:3000``) |
| ``AGENTS_WORKER_ID`` | this worker's name (host-pid) |
| ``AGENTS_LEASE_TTL`` | seconds a worker's leases last without a heartbeat (3) |
| ``AGENTS_SCAN_INTERVAL`` | seconds between scans for claimable agents (0.5) |
| ``AGENTS_MAX_AGENTS`` | most agents this worker runs (100000) |
| ``AGENTS_DEBOUNCE_SECONDS`` | quiet time that ends a burst of messages (1.5) |
| ``AGENTS_TOKEN_BUDGET`` | tokens a thread may spend (200000) |
| ``AGENTS_CALLS_PER_MINUTE`` | calls a thread may make per minute (30) |
| ``AGENTS_MAX_FAILURES`` | failed attempts in a row that quarantine an agent (5) |
| ``AGENTS_STREAM`` | stream replies into their event rows (true) |

SIGTERM and SIGINT stop the worker gracefully: its agents stop and their leases are released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping

from agents.agent import AgentSettings
from agents.decide import Rules
from agents.llm import LlmClient
from agents.settings import SettingsError, _integer, _number, llm_settings_from_env
from agents.turns import BudgetLimits
from agents.worker import Worker, WorkerSettings, open_pool
from shapes.client import AiohttpTransport

logger = logging.getLogger(__name__)


def worker_settings_from_env(env: Mapping[str, str] | None = None) -> WorkerSettings:
    env = os.environ if env is None else env
    stream = (env.get("AGENTS_STREAM") or "true").lower()
    if stream not in ("true", "false", "1", "0"):
        raise SettingsError(f"AGENTS_STREAM must be true or false, not {stream!r}")
    agent = AgentSettings(
        rules=Rules(debounce_seconds=_number(env, "AGENTS_DEBOUNCE_SECONDS", 1.5, 0.0)),
        budget=BudgetLimits(
            token_cap=_integer(env, "AGENTS_TOKEN_BUDGET", BudgetLimits.token_cap, 0),
            calls_per_minute=_integer(
                env, "AGENTS_CALLS_PER_MINUTE", BudgetLimits.calls_per_minute, 1
            ),
        ),
        max_failures=_integer(env, "AGENTS_MAX_FAILURES", AgentSettings.max_failures, 1),
        stream=stream in ("true", "1"),
    )
    defaults = WorkerSettings()
    return WorkerSettings(
        worker_id=env.get("AGENTS_WORKER_ID") or defaults.worker_id,
        lease_ttl=_number(env, "AGENTS_LEASE_TTL", defaults.lease_ttl, 0.5),
        scan_interval=_number(env, "AGENTS_SCAN_INTERVAL", defaults.scan_interval, 0.01),
        max_agents=_integer(env, "AGENTS_MAX_AGENTS", defaults.max_agents, 0),
        agent=agent,
    )


def database_url_from_env(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    url = env.get("AGENTS_DATABASE_URL") or env.get("DATABASE_URL")
    if not url:
        raise SettingsError("set AGENTS_DATABASE_URL (or DATABASE_URL)")
    return url


async def run_worker(env: Mapping[str, str] | None = None) -> None:
    env = os.environ if env is None else env
    settings = worker_settings_from_env(env)
    syncd_url = (env.get("AGENTS_SYNCD_URL") or "http://127.0.0.1:3000").rstrip("/")
    pool = open_pool(database_url_from_env(env))
    await pool.open(wait=True, timeout=30)
    llm = LlmClient(llm_settings_from_env(env))
    # Each followed shape holds a connection (three per thread, plus users and memberships),
    # with no limit on their number; aiohttp, since a worker may follow thousands of shapes.
    transport = AiohttpTransport()
    worker = Worker(pool, syncd_url + "/v1/shape", transport, llm, settings)
    task = asyncio.create_task(worker.run())
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    logger.info("agents worker %s running", settings.worker_id)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        await transport.aclose()
        await llm.aclose()
        await pool.close()
        logger.info("worker %s stopped", settings.worker_id)
