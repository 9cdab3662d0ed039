"""``python -m web.dev``: the whole Burn product on one machine, for development (``make dev``).

Layer: ``web``. Theory of operation: this process owns an embedded Postgres (the dev provider of
:mod:`syncd.pgprovider`, or ``DATABASE_URL`` when set) and applies the migrations; then it starts,
each as a child in its own session, syncd, the web app (API, per-user sync routes and the built
browser app), the offline Messages API when ``ANTHROPIC_API_KEY`` is unset, and one agent
worker. It prints the one URL to open and waits. Ctrl-C (SIGINT) or SIGTERM, or any child
exiting, stops the children in reverse order (SIGTERM, then SIGKILL after a grace period) and
then Postgres.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
GRACE_SECONDS = 10.0


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
    web = supervisor.start("web", [python, "-m", "web", "serve"], web_env)

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
    parser.add_argument("--data-dir", type=Path, default=Path(".dev"))
    parser.add_argument("--port", type=int, default=4000)
    parser.add_argument("--syncd-port", type=int, default=3000)
    args = parser.parse_args(argv)
    return run_dev(args.data_dir.absolute(), args.port, args.syncd_port)


if __name__ == "__main__":
    sys.exit(main())
