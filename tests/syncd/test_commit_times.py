"""The replication lag in seconds: commit times kept per position (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from syncd.commit_times import COALESCE_SECONDS, POSTGRES_EPOCH, CommitTimes, commit_unix_time


def us(unix: float) -> int:
    """A Unix time as a pgoutput commit time."""
    return round((unix - POSTGRES_EPOCH) * 1_000_000)


def test_commit_times_are_read_in_the_postgres_epoch() -> None:
    assert commit_unix_time(0) == POSTGRES_EPOCH
    assert commit_unix_time(us(1_800_000_000.5)) == 1_800_000_000.5


def test_age_is_the_oldest_commit_beyond_a_position() -> None:
    times = CommitTimes()
    times.note(100, us(1000.0), now=1000.2)
    times.note(200, us(1001.0), now=1001.1)
    times.note(300, us(1002.0), now=1002.0)
    assert times.last_receive_delay == 0.0
    assert times.age(0, now=1010.0) == 10.0
    assert times.age(100, now=1010.0) == 9.0
    assert times.age(250, now=1010.0) == 8.0
    assert times.age(300, now=1010.0) == 0.0
    times.forget(200)
    assert len(times) == 1
    assert times.age(0, now=1010.0) == 8.0


def test_commits_close_together_share_one_entry_and_err_towards_more_lag() -> None:
    times = CommitTimes()
    times.note(100, us(1000.0), now=1000.0)
    times.note(200, us(1000.0 + COALESCE_SECONDS / 2), now=1000.1)
    assert len(times) == 1
    assert times.age(100, now=1001.0) == 1.0  # the later commit is reported as old as the first
    assert times.age(200, now=1001.0) == 0.0
    assert times.last_receive_delay > 0


@given(st.lists(st.tuples(st.integers(1, 50), st.floats(0, 5)), min_size=1, max_size=60))
def test_age_never_understates_the_true_lag(steps: list[tuple[int, float]]) -> None:
    times = CommitTimes()
    lsn, clock = 0, 1000.0
    commits: list[tuple[int, float]] = []
    for lsn_step, time_step in steps:
        lsn += lsn_step
        clock += time_step
        times.note(lsn, us(clock), now=clock)
        commits.append((lsn, clock))
    now = clock + 1
    for position in range(0, lsn + 2, max(1, lsn // 7)):
        pending = [committed for end, committed in commits if end > position]
        truth = now - min(pending) if pending else 0.0
        assert times.age(position, now=now) >= truth - 1e-6
        assert times.age(position, now=now) <= truth + COALESCE_SECONDS + 1e-6 or not pending
