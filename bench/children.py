"""Child processes of the benchmarks (and of the browser tests): a free loopback port, waiting
until a child answers HTTP, a child's CPU time, and stopping a child; and stopping a
benchmark's own tasks."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of process ``pid`` so far (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def stop_child(process: subprocess.Popen[bytes]) -> None:
    """Stop a child: SIGTERM, then SIGKILL if it has not exited within 10 s."""
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


async def cancel_tasks(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until each has ended (whatever it ended with)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def wait_http(process: subprocess.Popen[bytes], url: str, timeout: float = 60.0) -> None:
    """Return once ``url`` answers below 500.

    Raises:
        RuntimeError: the process exited first, or nothing answered within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the child exited early (waiting for {url})")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing answered at {url}")
