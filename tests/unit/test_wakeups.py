"""worker/wakeups.py: a miss's wake-up comes at its exact time whether it
was held by the sweep or armed at once, never after it was forgotten, and
only the latest one asked for comes."""
from __future__ import annotations

import asyncio
import time

import uvloop

from worker import wakeups
from worker.wakeups import Wakeups


class Sleeper:
    def __init__(self) -> None:
        self.timer = None
        self.wake_at = 0.0
        self.woken: list[float] = []

    def wake(self) -> None:
        self.timer = None
        self.woken.append(time.monotonic())


def test_wake_ups_come_on_time_near_or_far_and_the_sweep_stops_when_nobody_sleeps():
    async def scenario():
        w = Wakeups()
        start = time.monotonic()
        near, far, farther = Sleeper(), Sleeper(), Sleeper()
        w.sleep(near, start + wakeups.SWEEP / 2, start)         # armed at once
        w.sleep(far, start + 2.1 * wakeups.SWEEP, start)        # held by the sweep, then armed
        w.sleep(farther, start + 4.2 * wakeups.SWEEP, start)
        await asyncio.sleep(5 * wakeups.SWEEP)
        return start, near, far, farther, w._sweep, w.sleeping
    start, near, far, farther, sweep, sleeping = uvloop.run(scenario())
    for sleeper, due in ((near, 0.5), (far, 2.1), (farther, 4.2)):
        assert len(sleeper.woken) == 1
        late = sleeper.woken[0] - (start + due * wakeups.SWEEP)
        # Never early; late by the event loop's timer slack, not by the 0.8-0.9 SWEEP to the next sweep.
        assert -0.002 <= late < wakeups.SWEEP / 2, (due, late)
    assert sweep is None and not sleeping


def test_a_forgotten_or_replaced_wake_up_does_not_come():
    async def scenario():
        w = Wakeups()
        now = time.monotonic()
        gone, moved = Sleeper(), Sleeper()
        w.sleep(gone, now + 1.5 * wakeups.SWEEP, now)
        w.sleep(moved, now + 1.5 * wakeups.SWEEP, now)
        w.forget(gone)                                          # the miss ended first
        w.sleep(moved, now + 3.5 * wakeups.SWEEP, now)         # its hand-over moved later
        await asyncio.sleep(5 * wakeups.SWEEP)
        w.close()
        return now, gone, moved
    now, gone, moved = uvloop.run(scenario())
    assert gone.woken == []
    assert len(moved.woken) == 1 and moved.woken[0] >= now + 3.5 * wakeups.SWEEP - 0.002
