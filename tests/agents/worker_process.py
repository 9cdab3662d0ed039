"""Run ``python -m agents run`` as a child process, to kill, pause and restart it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.syncd_process import ROOT, stop_child


class WorkerProcess:
    """One agents worker process."""

    def __init__(
        self, name: str, dsn: str, syncd_url: str, api_url: str, log_dir: Path, **env: Any
    ) -> None:
        self.name = name
        self.env = {
            "AGENTS_DATABASE_URL": dsn,
            "AGENTS_SYNCD_URL": syncd_url,
            "ANTHROPIC_BASE_URL": api_url,
            "AGENTS_WORKER_ID": name,
            "AGENTS_MAX_RETRIES": "0",
            "AGENTS_LOG_LEVEL": "INFO",
            **{k: str(v) for k, v in env.items()},
        }
        self.log_path = log_dir / f"worker-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.process is None
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTS_", "ANTHROPIC_"))}
        env.update(self.env)
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agents", "run"],
                cwd=ROOT,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def signal(self, signum: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a paused process must hear the SIGTERM
            stop_child(self.process)
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
