"""The signals live requests wait on: every waiter wakes once, and none is left behind."""

from __future__ import annotations

import asyncio
import functools
import time

from hypothesis import given
from hypothesis import strategies as st

from syncd.shape_state import Notifier, SharedTimers, Wakeup, wait_briefly


async def test_every_waiter_wakes_at_the_signal() -> None:
    wakeup = Wakeup()
    waiters = [wait_briefly((wakeup,), 30.0) for _ in range(1_000)]
    wakeup.set()
    await asyncio.wait_for(asyncio.gather(*waiters), 5.0)
    assert wakeup.done()


async def test_waiters_that_time_out_leave_nothing_behind() -> None:
    wakeup = Wakeup()
    await asyncio.gather(*(wait_briefly((wakeup,), 0.01) for _ in range(5_000)))
    assert not wakeup.done()
    assert wakeup.waiting() == 0


async def test_a_signal_already_set_does_not_wait() -> None:
    wakeup = Wakeup()
    wakeup.set()
    await asyncio.wait_for(wait_briefly((wakeup,), 30.0), 1.0)


async def test_futures_and_signals_mix() -> None:
    wakeup = Wakeup()
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiting = wait_briefly((wakeup, future), 30.0)
    future.set_result(None)
    await asyncio.wait_for(waiting, 1.0)
    assert wakeup.waiting() == 0


async def test_a_notify_between_taking_the_signal_and_waiting_is_not_missed() -> None:
    notifier = Notifier()
    signal = notifier.wait()
    notifier.notify()  # the log grew after the waiter looked at it
    await asyncio.wait_for(wait_briefly((signal,), 30.0), 1.0)
    assert notifier.wait() is not signal  # the next wait takes a fresh signal


async def test_a_cancelled_waiter_leaves_nothing_behind() -> None:
    wakeup = Wakeup()
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def hold() -> None:
        await wait_briefly((wakeup, future), 30.0)

    holders = [asyncio.create_task(hold()) for _ in range(100)]
    await asyncio.sleep(0)
    assert wakeup.waiting() == 100
    for holder in holders:
        holder.cancel()
    await asyncio.gather(*holders, return_exceptions=True)
    await asyncio.sleep(0)
    assert wakeup.waiting() == 0


async def test_waits_end_on_time_and_share_their_timers() -> None:
    loop = asyncio.get_running_loop()
    timers = SharedTimers.of(loop)
    assert SharedTimers.of(loop) is timers
    wakeup = Wakeup()
    started = time.monotonic()
    waits = [wait_briefly((wakeup,), 0.2 + k * 0.0001) for k in range(1_000)]
    assert len(timers._slots) <= 10  # a timer each would be a thousand
    await asyncio.gather(*waits)
    waited = time.monotonic() - started
    assert 0.2 <= waited < 1.0, waited  # never early; late by a quantum, and a slow machine
    assert wakeup.waiting() == 0
    assert not timers._slots


async def test_a_signal_ends_the_wait_before_its_time() -> None:
    wakeup = Wakeup()
    started = time.monotonic()
    waiting = wait_briefly((wakeup,), 30.0)
    asyncio.get_running_loop().call_later(0.05, wakeup.set)
    await asyncio.wait_for(waiting, 5.0)
    assert time.monotonic() - started < 5.0


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3)), max_size=30))
def test_a_signal_calls_exactly_the_wakers_left_once(steps: list[tuple[bool, int]]) -> None:
    calls: list[int] = []
    wakers = [functools.partial(calls.append, k) for k in range(4)]
    wakeup = Wakeup()
    expected: set[int] = set()
    for add, k in steps:
        if add:
            wakeup.add_waker(wakers[k])
            expected.add(k)
        else:
            wakeup.discard_waker(wakers[k])
            expected.discard(k)
        assert wakeup.waiting() == len(expected)
    wakeup.set()
    wakeup.set()
    assert sorted(calls) == sorted(expected)
    wakeup.add_waker(wakers[0])  # a waker added after the signal is called at once
    assert calls[-1] == 0
    assert wakeup.waiting() == 0
