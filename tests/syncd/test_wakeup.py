"""The signals live requests wait on: every waiter wakes once, and none is left behind."""

from __future__ import annotations

import asyncio

from syncd.shape_state import Notifier, Wakeup, wait_briefly


async def test_every_waiter_wakes_at_the_signal() -> None:
    wakeup = Wakeup()
    waiters = [asyncio.create_task(wait_briefly((wakeup,), 30.0)) for _ in range(1_000)]
    await asyncio.sleep(0)
    wakeup.set()
    await asyncio.wait_for(asyncio.gather(*waiters), 5.0)
    assert wakeup.done()


async def test_waiters_that_time_out_leave_nothing_behind() -> None:
    wakeup = Wakeup()
    await asyncio.gather(*(wait_briefly((wakeup,), 0.01) for _ in range(5_000)))
    assert not wakeup.done()
    assert not wakeup._wakers


async def test_a_signal_already_set_does_not_wait() -> None:
    wakeup = Wakeup()
    wakeup.set()
    await asyncio.wait_for(wait_briefly((wakeup,), 30.0), 1.0)


async def test_futures_and_signals_mix() -> None:
    wakeup = Wakeup()
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiting = asyncio.create_task(wait_briefly((wakeup, future), 30.0))
    await asyncio.sleep(0)
    future.set_result(None)
    await asyncio.wait_for(waiting, 1.0)
    assert not wakeup._wakers


async def test_a_notify_between_taking_the_signal_and_waiting_is_not_missed() -> None:
    notifier = Notifier()
    signal = notifier.wait()
    notifier.notify()  # the log grew after the waiter looked at it
    await asyncio.wait_for(wait_briefly((signal,), 30.0), 1.0)
    assert notifier.wait() is not signal  # the next wait takes a fresh signal
