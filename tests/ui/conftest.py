"""Fixtures of the browser tests: one running product per module, one Chromium per session.

Screenshots go to ``$UI_SCREENSHOTS`` (default ``.tmp/ui-screenshots`` in the repository).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Playwright, expect, sync_playwright

from bench.chromium import CHROMIUM, CHROMIUM_ARGS
from syncd.pgprovider import PostgresServer
from tests.syncd_process import ROOT
from tests.ui.stack import BurnStack, missing_prerequisites, running_stack

# a loaded 2-core machine is slow; each wait still ends as soon as its condition holds
expect.set_options(timeout=15_000)


@pytest.fixture(scope="session")
def screenshots() -> Path:
    folder = Path(os.environ.get("UI_SCREENSHOTS", ROOT / ".tmp" / "ui-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")  # its event loop must be gone before other modules' tests
def playwright() -> Iterator[Playwright]:
    reason = missing_prerequisites()
    if reason is not None:
        pytest.fail(reason)
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def burn(pg_server: PostgresServer) -> Iterator[BurnStack]:
    with tempfile.TemporaryDirectory(prefix="burn-ui-") as work:
        with running_stack(pg_server.dsn, Path(work)) as stack:
            yield stack
