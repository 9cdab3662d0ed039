"""The memory of recently checked sessions that spares sync requests a database read."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from web.accounts import Principal, RecentSessions


def principal() -> Principal:
    return Principal(uuid.uuid4(), "alice", uuid.uuid4())


def later(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def test_a_session_is_trusted_for_the_memory_then_read_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recent = RecentSessions(memory=5.0)
    alice = principal()
    now = time.time()
    recent.remember(alice, later(3_600))
    monkeypatch.setattr(time, "time", lambda: now + 4.9)
    assert recent.get(alice.session_id) == alice
    monkeypatch.setattr(time, "time", lambda: now + 5.1)
    assert recent.get(alice.session_id) is None


def test_never_past_the_sessions_own_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    recent = RecentSessions(memory=5.0)
    alice = principal()
    now = time.time()
    recent.remember(alice, later(1.0))
    monkeypatch.setattr(time, "time", lambda: now + 1.5)
    assert recent.get(alice.session_id) is None


def test_forgetting_one_session_keeps_the_others() -> None:
    recent = RecentSessions()
    alice, bob = principal(), principal()
    recent.remember(alice, later(3_600))
    recent.remember(bob, later(3_600))
    recent.forget(alice.session_id)
    assert recent.get(alice.session_id) is None
    assert recent.get(bob.session_id) == bob
    recent.forget_all()
    assert recent.get(bob.session_id) is None


def test_expired_entries_are_pruned_as_it_grows(monkeypatch: pytest.MonkeyPatch) -> None:
    recent = RecentSessions(memory=1.0)
    now = time.time()
    old = [principal() for _ in range(1_023)]
    for person in old:
        recent.remember(person, later(3_600))
    monkeypatch.setattr(time, "time", lambda: now + 2.0)
    fresh = principal()
    recent.remember(fresh, later(3_600))
    assert len(recent._valid_until) == 1
    assert recent.get(fresh.session_id) == fresh
