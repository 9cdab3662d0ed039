"""``python -m web.dev``: the whole Burn product on one machine, for development (``make dev``).

Layer: ``web``. Theory of operation: this process owns an embedded Postgres (the dev provider of
:mod:`syncd.pgprovider`, or ``DATABASE_URL`` when set) and applies the migrations; then it starts,
each as a child in its own session, syncd, the web app (API, per-user sync routes and the built
browser app), the offline Messages API when ``ANTHROPIC_API_KEY`` is unset, and one agent
worker. It prints the one URL to open and waits. Ctrl-C (SIGINT) or SIGTERM, or any child
exiting, stops the children in reverse order (SIGTERM, then SIGKILL after a grace period) and
then Postgres. ``python -m web.dev web`` is the web-app child itself.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ROOT = Path(__file__).resolve().parent.parent
GRACE_SECONDS = 10.0

MEMBER_THREADS = "SELECT thread_id FROM memberships WHERE user_id = $1"
SYNC_SCOPES: dict[str, str] = {
    "threads": f"id IN ({MEMBER_THREADS})",
    "memberships": f"thread_id IN ({MEMBER_THREADS})",
    "events": f"thread_id IN ({MEMBER_THREADS})",
    "facts": f"thread_id IN ({MEMBER_THREADS})",
    "agent_status": f"thread_id IN ({MEMBER_THREADS})",
    "users": f"id IN (SELECT user_id FROM memberships WHERE thread_id IN ({MEMBER_THREADS}))",
}
"""The per-user sync routes' scopes (the contract of ``/api/sync/<table>``)."""
USER_COLUMNS = ("id", "name", "kind", "avatar_url", "inserted_at", "updated_at")


def sync_routes(syncd_url: str) -> list[Route]:
    """``/api/sync/<table>`` routes scoped to the signed-in user (upstream clients live as
    long as the process).

    Used only when the web app does not serve its own sync routes yet.
    """
    from syncd.routes import ShapeRoutes, ShapeScope
    from web.app import current_user

    routes = ShapeRoutes(syncd_url)

    def authorize_for(table: str) -> Callable[[Request], Any]:
        async def authorize(request: Request) -> ShapeScope | Response:
            principal = await current_user(request)
            if principal is None:
                return Response(status_code=401)
            return ShapeScope(
                where=SYNC_SCOPES[table],
                params=[str(principal.user_id)],
                key=str(principal.user_id),
                columns=USER_COLUMNS if table == "users" else None,
            )

        return authorize

    served = [
        routes.route(f"/api/sync/{table}", table=table, authorize=authorize_for(table))
        for table in SYNC_SCOPES
    ]
    return list(served)


def serves_sync_routes() -> bool:
    """Whether the web app mounts ``/api/sync/*`` itself (its ``web.sync`` module)."""
    return importlib.util.find_spec("web.sync") is not None


def run_web() -> int:
    """The web-app child: ``python -m web serve``, plus the sync routes when it lacks them."""
    from web.__main__ import main as web_main

    if serves_sync_routes():
        return web_main(["serve"])
    import uvicorn

    from web.app import create_app
    from web.config import load_settings
    from web.ui_static import mount_ui

    settings = load_settings([])
    extra = sync_routes(os.environ.get("BURN_SYNCD_URL", "http://127.0.0.1:3000"))
    app = create_app(settings, extra_routes=extra)
    mount_ui(app)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    return 0


def say(text: str, *, error: bool = False) -> None:
    """A line for the person running ``make dev``."""
    stream = sys.stderr if error else sys.stdout
    stream.write(text + "\n")
    stream.flush()


# -- the supervisor -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_or_free(wanted: int) -> int:
    """``wanted`` when nothing listens there, else any free port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", wanted))
        except OSError:
            return free_port()
    return wanted


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]


@dataclass
class Supervisor:
    """Starts the children, and stops every one of them (reverse order) exactly once."""

    log_dir: Path
    children: list[Child] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> Child:
        log = (self.log_dir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        child = Child(name, process)
        self.children.append(child)
        return child

    def wait_http(self, child: Child, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping.is_set():
            if child.process.poll() is not None:
                raise RuntimeError(f"{child.name} exited; see {self.log_dir / child.name}.log")
            try:
                if httpx.get(url, timeout=1.0).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        if not self.stopping.is_set():
            raise RuntimeError(f"{child.name} did not answer at {url}")

    def first_exit(self) -> Child | None:
        """Block until a child exits or a stop is asked for; the child that exited, if any."""
        while not self.stopping.wait(0.2):
            for child in self.children:
                if child.process.poll() is not None:
                    return child
        return None

    def stop_all(self) -> None:
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        for child in reversed(self.children):
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("WEB_", "SYNCD_"))}


def _secret(data_dir: Path) -> str:
    path = data_dir / "web-secret"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def run_dev(data_dir: Path, port: int, syncd_port: int) -> int:
    """The whole product until Ctrl-C; returns the exit code."""
    from syncd.pgprovider import provide_postgres
    from web.migrate import MigrationError, migrate

    data_dir.mkdir(parents=True, exist_ok=True)
    log_dir = data_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    supervisor = Supervisor(log_dir)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: supervisor.stopping.set())

    say("burn: starting Postgres…")
    server = provide_postgres(data_dir / "postgres")
    (data_dir / "dsn").write_text(server.dsn + "\n")
    try:
        try:
            migrate(server.dsn, ROOT / "sql")
        except MigrationError as exc:
            say(f"burn: {exc}", error=True)
            return 1
        return _run_children(supervisor, server.dsn, data_dir, port, syncd_port)
    except RuntimeError as exc:
        say(f"burn: {exc}", error=True)
        return 1
    finally:
        supervisor.stop_all()
        server.stop()
        say("burn: stopped")


def _run_children(
    supervisor: Supervisor, dsn: str, data_dir: Path, port: int, syncd_port: int
) -> int:
    python = sys.executable
    port = port_or_free(port)
    syncd_port = port_or_free(syncd_port)
    syncd_url = f"http://127.0.0.1:{syncd_port}"
    syncd = supervisor.start(
        "syncd",
        [
            python,
            "-m",
            "syncd",
            "--database-url",
            dsn,
            "--port",
            str(syncd_port),
            "--storage-dir",
            str(data_dir / "storage"),
        ],
        _base_env(),
    )
    supervisor.wait_http(syncd, f"{syncd_url}/v1/health")

    web_env = _base_env() | {
        "WEB_DATABASE_URL": dsn,
        "WEB_SECRET": _secret(data_dir),
        "WEB_PORT": str(port),
        "BURN_SYNCD_URL": syncd_url,
    }
    web = supervisor.start("web", [python, "-m", "web.dev", "web"], web_env)

    agents_env = _base_env() | {"AGENTS_DATABASE_URL": dsn, "AGENTS_SYNCD_URL": syncd_url}
    if not os.environ.get("ANTHROPIC_API_KEY"):
        fake_port = free_port()
        fake = supervisor.start(
            "fake-api",
            [python, "-m", "agents", "fake-api", "--port", str(fake_port)],
            _base_env(),
        )
        supervisor.wait_http(fake, f"http://127.0.0.1:{fake_port}/")
        agents_env["ANTHROPIC_BASE_URL"] = f"http://127.0.0.1:{fake_port}"
        say("burn: no ANTHROPIC_API_KEY: the agents use the offline Messages API")
    supervisor.start("agents", [python, "-m", "agents", "run"], agents_env)

    url = f"http://127.0.0.1:{port}"
    supervisor.wait_http(web, f"{url}/api/health")
    if not (ROOT / "web" / "ui" / "dist" / "index.html").exists():
        say("burn: the browser app is not built (make ui)", error=True)
    say(f"\n  Burn is running: open {url}\n  (logs in {data_dir / 'logs'}; Ctrl-C stops it)\n")
    exited = supervisor.first_exit()
    if exited is not None:
        say(
            f"burn: {exited.name} exited (code {exited.process.returncode}); "
            f"see {supervisor.log_dir / exited.name}.log",
            error=True,
        )
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m web.dev", description=__doc__)
    parser.add_argument("command", nargs="?", choices=["all", "web"], default="all")
    parser.add_argument("--data-dir", type=Path, default=Path(".dev"))
    parser.add_argument("--port", type=int, default=4000)
    parser.add_argument("--syncd-port", type=int, default=3000)
    args = parser.parse_args(argv)
    if args.command == "web":
        return run_web()
    return run_dev(args.data_dir.absolute(), args.port, args.syncd_port)


if __name__ == "__main__":
    sys.exit(main())
