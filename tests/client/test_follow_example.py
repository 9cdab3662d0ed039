"""The client examples as a person runs them: against a live daemon, stopped with Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from tests.syncd_process import ROOT, SyncdProcess, free_port

pytestmark = [pytest.mark.timeout(120)]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def follow_items(url: str) -> subprocess.Popen[str]:
    """``examples/follow_items.py`` following ``url``, its output piped."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "follow_items.py"), url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as in a terminal: a runner started in the background may have SIGINT ignored,
        # which the child would inherit (and then never see the Ctrl-C)
        preexec_fn=_default_sigint,
    )


def test_follow_items_stops_quietly_on_ctrl_c(syncd: SyncdProcess) -> None:
    follower = follow_items(syncd.url)
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline() == "0 rows\n"
        with psycopg.connect(syncd.dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO items VALUES (1, 0, 'hello')")
        change = follower.stdout.readline()  # it is live: the insert is printed
        assert "'operation': 'insert'" in change and "hello" in change
        follower.send_signal(signal.SIGINT)
        _, errors = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()  # reaps it and closes the pipes
    assert follower.returncode == 130
    assert errors == ""


def loading_the_client(pid: int) -> bool:
    """Whether process ``pid`` has started to load the HTTP client library (aiohttp's compiled
    ``multidict``), or has ended."""
    try:
        return "multidict" in Path(f"/proc/{pid}/maps").read_text()
    except FileNotFoundError:
        return True


def test_ctrl_c_while_the_example_starts_is_quiet_too() -> None:
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc to see what the child has loaded")
    follower = follow_items(f"http://127.0.0.1:{free_port()}")
    try:
        deadline = time.monotonic() + 30
        while not loading_the_client(follower.pid):
            assert time.monotonic() < deadline
            time.sleep(0.001)
        follower.send_signal(signal.SIGINT)
        _, errors = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert (follower.returncode, errors) == (130, "")
