"""The browser the UI benchmarks and tests drive: Debian's ``chromium`` package (``make
chromium`` installs it; no browser is ever downloaded), headless, with the flags that keep it
quiet and offline."""

from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
