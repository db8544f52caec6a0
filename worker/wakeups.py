"""Wake-ups for many short-lived misses, almost all of which end before
theirs is due.

Every miss on its way upstream must wake at its hand-over time (the next
server, or a repeated ask after the server's RTO, 50 ms or more) and at its
zone's timeout, typically a second or more away, while its answer comes
within milliseconds. An event-loop timer
armed and cancelled per miss was ~4% of a miss's instructions. Here a
sleeper waiting longer than SWEEP only joins a set; a sweep every SWEEP
seconds, while the set is not empty, arms a precise event-loop timer for
the few sleepers due before the next sweep. So wake-ups keep their exact
time, and a miss that ends early costs a set insertion and a removal.
SWEEP is below the shortest RTO, so that wake-up joins the set too (a timer
per miss was back when it was 0.1 s: +3% of a miss's instructions,
bench/miss_instructions.py); sweeping that often is cheap because the set
holds only misses upstream, about [cache] max_in_flight (128) at most.

A sleeper is any object with a `wake_at` attribute, a `timer` attribute
(its event-loop timer once armed, else None) and a `wake()` method.
"""
from __future__ import annotations

import asyncio
import time

# Seconds between sweeps; a wake-up due sooner than this gets its timer at once.
SWEEP = 0.02


class Wakeups:
    """The sleepers of one forwarder and the sweep that arms their timers."""

    def __init__(self) -> None:
        self.sleeping: set = set()
        self._sweep: asyncio.TimerHandle | None = None

    def sleep(self, sleeper, when: float, now: float) -> None:
        """sleeper.wake() at `when` (time.monotonic(); `now` is the current
        one), replacing its earlier wake-up; sleeper.timer must be None."""
        delay = when - now
        if delay < SWEEP:
            self.sleeping.discard(sleeper)
            sleeper.timer = asyncio.get_running_loop().call_later(delay, sleeper.wake)
            return
        sleeper.wake_at = when
        self.sleeping.add(sleeper)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(SWEEP, self._sweep_due)

    def forget(self, sleeper) -> None:
        """No wake-up for sleeper from the set (its armed timer is its own to cancel)."""
        self.sleeping.discard(sleeper)

    def _sweep_due(self) -> None:
        self._sweep = None
        sleeping, loop = self.sleeping, asyncio.get_running_loop()
        now = time.monotonic()
        horizon = now + SWEEP
        for sleeper in [s for s in sleeping if s.wake_at <= horizon]:
            sleeping.discard(sleeper)
            sleeper.timer = loop.call_later(max(0.0, sleeper.wake_at - now), sleeper.wake)
        if sleeping:
            self._sweep = loop.call_later(SWEEP, self._sweep_due)

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self.sleeping.clear()
