"""A worker slot (A or B): the worker serving in it, the ones it is retiring,
its restart history and crash-loop backoff. Every state change goes through
WorkerSlot.change_state(), which checks the source state and records an event.

Records here are plain data: `snapshot()` gives what a re-executed
supervisor needs to adopt the slot (pids, generations, fd numbers, states).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from supervisor.states import RestartCause, SlotState

EVENTS_KEPT = 50


class TransitionError(RuntimeError):
    """A state change that the slot state machine does not allow."""


@dataclass(frozen=True)
class StateEvent:
    at: float                 # time.monotonic()
    slot: str
    pid: int
    generation: int
    source: SlotState
    target: SlotState
    reason: str


@dataclass
class Worker:
    """One worker process. Runtime handles (process, sockets, channels) are
    attached by the arbiter; only plain fields go into snapshots."""
    slot: str
    generation: int
    pid: int
    started_at: float
    state: SlotState = SlotState.STARTING
    ready_at: float | None = None
    kill_cause: RestartCause | None = None      # why we killed it, if we did
    probe_misses: int = 0
    last_probe_latency: float | None = None
    stats: dict = field(default_factory=dict)   # last STATS from the control channel
    final_stats: bool = False                   # stats are the ones it sent on a clean exit
    handles: Any = None                        # supervisor.spawn.WorkerHandles

    @property
    def alive(self) -> bool:
        return self.state in (SlotState.STARTING, SlotState.READY, SlotState.DRAINING)

    def snapshot(self) -> dict:
        return {"slot": self.slot, "generation": self.generation, "pid": self.pid,
                "state": self.state.value, "uptime": time.monotonic() - self.started_at,
                "fds": self.handles.fd_numbers() if self.handles is not None else {}}


@dataclass
class Backoff:
    """Delay before respawning after a crash: none for an isolated crash, then
    initial, 2*initial, ... up to maximum while crashes keep coming. A worker
    that ran `maximum` seconds or more resets the series."""
    initial: float
    maximum: float
    failures: int = 0

    def next_delay(self, uptime: float) -> float:
        if uptime >= self.maximum:
            self.failures = 0
        self.failures += 1
        if self.failures == 1:
            return 0.0
        return min(self.maximum, self.initial * 2 ** (self.failures - 2))


@dataclass
class WorkerSlot:
    name: str
    backoff: Backoff
    current: Worker | None = None
    retiring: list[Worker] = field(default_factory=list)
    restarts: dict[RestartCause, int] = field(default_factory=lambda: {c: 0 for c in RestartCause})
    respawn_at: float | None = None      # monotonic time of a scheduled respawn
    given_up: str | None = None          # why this slot is not respawned (exit 78)
    events: deque = field(default_factory=lambda: deque(maxlen=EVENTS_KEPT))

    def change_state(self, worker: Worker, target: SlotState, reason: str) -> StateEvent:
        if not worker.state.may_become(target):
            raise TransitionError(f"slot {self.name} pid {worker.pid}: {worker.state.value} -> "
                                  f"{target.value} is not allowed ({reason})")
        event = StateEvent(time.monotonic(), self.name, worker.pid, worker.generation,
                           worker.state, target, reason)
        worker.state = target
        if target is SlotState.READY:
            worker.ready_at = event.at
        self.events.append(event)
        return event

    @property
    def state(self) -> SlotState:
        """What status shows for the slot: its serving worker's state, or FAILED/STOPPED."""
        if self.current is not None:
            return self.current.state
        return SlotState.FAILED if (self.given_up or self.respawn_at is not None) else SlotState.STOPPED

    def workers(self) -> list[Worker]:
        return ([self.current] if self.current else []) + list(self.retiring)

    def find(self, pid: int) -> Worker | None:
        return next((w for w in self.workers() if w.pid == pid), None)

    def snapshot(self) -> dict:
        return {"name": self.name,
                "current": self.current.snapshot() if self.current else None,
                "retiring": [w.snapshot() for w in self.retiring],
                "restarts": {c.value: n for c, n in self.restarts.items()},
                "backoff_failures": self.backoff.failures,
                "given_up": self.given_up}
