"""Run ``python -m syncd`` as a child process for end-to-end and crash tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from psycopg.conninfo import conninfo_to_dict

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_child(process: subprocess.Popen[bytes]) -> None:
    """Stop a child process gracefully: SIGTERM, then SIGKILL after 10 s."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


class SyncdProcess:
    """One syncd daemon on a loopback port; restartable, killable with SIGKILL."""

    def __init__(self, dsn: str, storage_dir: Path, **settings: Any) -> None:
        self.dsn = dsn
        self.storage_dir = storage_dir
        self.port = free_port()
        # Slots are cluster-wide: one per database keeps daemons of different tests apart.
        database = conninfo_to_dict(dsn).get("dbname", "postgres")
        self.settings = {"slot": f"syncd_{database}", **settings}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = storage_dir.parent / f"syncd-{self.port}.log"

    @property
    def url(self) -> str:
        """Base URL of the daemon."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def shape_url(self) -> str:
        """URL of the shape endpoint."""
        return self.url + "/v1/shape"

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
        env.update(
            SYNCD_DATABASE_URL=self.dsn,
            SYNCD_STORAGE_DIR=str(self.storage_dir),
            SYNCD_PORT=str(self.port),
            SYNCD_ALLOW_SHAPE_DELETION="true",
            SYNCD_LOG_LEVEL=os.environ.get("TEST_SYNCD_LOG_LEVEL", "INFO"),
        )
        env.update({f"SYNCD_{k.upper()}": str(v) for k, v in self.settings.items()})
        return env

    def start(self, timeout: float = 30.0) -> None:
        """Start the daemon and wait until its health check says ``active``."""
        assert self.process is None
        log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "syncd"],
            cwd=ROOT,
            env=self.environment(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        log_file.close()
        try:
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()  # never leave an orphaned daemon behind
            raise

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"syncd exited early:\n{self.log_tail()}")
            try:
                answer = httpx.get(self.url + "/v1/health", timeout=1.0)
                if answer.status_code == 200 and answer.json() == {"status": "active"}:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"syncd did not become healthy:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the daemon, as a crash would."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        """Stop the daemon gracefully (SIGTERM, then SIGKILL after 10 s)."""
        if self.process is None:
            return
        stop_child(self.process)
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port and storage."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
