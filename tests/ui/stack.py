"""The whole Burn product for browser tests and UI benches: syncd, the web app (API, sync
routes and the built browser app), the offline Messages API and an agent worker, each a child
process on a loopback port, stopped by PID; and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from bench.children import wait_http
from bench.chromium import CHROMIUM
from syncd.pgprovider import drop_database
from tests.syncd_process import ROOT, SyncdProcess, free_port, stop_child
from web.config import Settings
from web.migrate import migrate

UI_DIST = ROOT / "web" / "ui" / "dist" / "index.html"
AXE = ROOT / "web" / "ui" / "node_modules" / "axe-core" / "axe.min.js"
SECRET = "ui-tests-" + "s" * 40


def missing_prerequisites() -> str | None:
    """Why the browser tests cannot run here (``make ui chromium`` fixes it), or None."""
    if not CHROMIUM.exists():
        return "Debian's chromium is not installed (make chromium)"
    if not UI_DIST.exists() or not AXE.exists():
        return "the browser app is not built (make ui)"
    return None


class Child:
    """One child process with its log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with self.log_path.open("ab") as log:
            self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def wait_http(self, url: str, timeout: float = 60.0) -> None:
        assert self.process is not None
        try:
            wait_http(self.process, url, timeout)
        except RuntimeError as error:
            raise AssertionError(f"{self.name}: {error}:\n{self.log_tail()}") from None

    def stop(self) -> None:
        if self.process is not None:
            stop_child(self.process)
            self.process = None

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class BurnStack:
    """The running product; ``url`` is what a browser opens."""

    def __init__(self, dsn: str, work_dir: Path, *, agents: bool = True) -> None:
        self.dsn = dsn
        self.work_dir = work_dir
        self.agents = agents
        self.syncd = SyncdProcess(dsn, work_dir / "storage")
        self.children: list[Child] = []
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        prefixes = ("WEB_", "SYNCD_", "AGENTS_", "ANTHROPIC_")
        return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}

    def start(self) -> None:
        self.syncd.start()
        web = Child(
            "web",
            [sys.executable, "-m", "web", "serve"],
            self._env()
            | {
                "WEB_DATABASE_URL": self.dsn,
                "WEB_SECRET": SECRET,
                "WEB_PORT": str(self.port),
                "WEB_SIGN_UP_CLIENT_LIMIT": "10000",
                "WEB_LOG_LEVEL": "WARNING",
                "BURN_SYNCD_URL": self.syncd.url,
            },
            self.work_dir,
        )
        self.children.append(web)
        if self.agents:
            fake_port = free_port()
            fake = Child(
                "fake-api",
                [sys.executable, "-m", "agents", "fake-api", "--port", str(fake_port)],
                self._env(),
                self.work_dir,
            )
            self.children.append(fake)
            fake.wait_http(f"http://127.0.0.1:{fake_port}/")
            worker_env = self._env() | {
                "AGENTS_DATABASE_URL": self.dsn,
                "AGENTS_SYNCD_URL": self.syncd.url,
                "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{fake_port}",
                "AGENTS_DEBOUNCE_SECONDS": "0.3",
                "AGENTS_SCAN_INTERVAL": "0.2",
            }
            worker = Child(
                "agents", [sys.executable, "-m", "agents", "run"], worker_env, self.work_dir
            )
            self.children.append(worker)
        web.wait_http(self.url + "/api/health")

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.syncd.stop()

    def execute(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []


@contextmanager
def burn_database(admin_dsn: str) -> Iterator[str]:
    """A new database with the app's migrations, dropped afterwards."""
    name = f"ui_{secrets.token_hex(6)}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(admin_dsn, dbname=name)
    try:
        migrate(dsn, Settings().migrations_dir)
        yield dsn
    finally:
        drop_database(admin_dsn, name)


@contextmanager
def running_stack(admin_dsn: str, work_dir: Path, *, agents: bool = True) -> Iterator[BurnStack]:
    with burn_database(admin_dsn) as dsn:
        stack = BurnStack(dsn, work_dir, agents=agents)
        try:
            stack.start()
            yield stack
        finally:
            stack.stop()
