"""The client examples as a person runs them: against a live daemon, stopped with Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys

import psycopg
import pytest

from tests.syncd_process import ROOT, SyncdProcess

pytestmark = [pytest.mark.timeout(120)]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_follow_items_stops_quietly_on_ctrl_c(syncd: SyncdProcess) -> None:
    follower = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "follow_items.py"), syncd.url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as in a terminal: a runner started in the background may have SIGINT ignored,
        # which the child would inherit (and then never see the Ctrl-C)
        preexec_fn=_default_sigint,
    )
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
