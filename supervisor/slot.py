"""A worker slot (A or B): its phase (serving, backing off, given up), the
worker serving in it, the one replacing it and the ones it is retiring, the
UDP sockets of a dead worker awaiting a replacement, its restart history and
crash-loop backoff. A worker's state changes go through
WorkerSlot.change_state() and the slot's own through change_phase(); both
check the state table in supervisor/states.py.

`snapshot()` gives the slot as a supervisor/snapshot.py record.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from contract import stats as keys
from supervisor.snapshot import SlotRecord, WorkerRecord
from supervisor.states import RestartCause, SlotPhase, SlotState

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
class Runtime:
    """Loop-bound helpers of one live worker (supervisor.probe.Prober,
    supervisor.channel.ControlChannel); dropped when its exit is handled."""
    prober: Any
    channel: Any
    ready: Any                  # asyncio.Future: True once READY, WorkerGone if it exits first
    exited: Any                 # asyncio.Future: its exit code
    log: Any = None             # supervisor.workerlog.WorkerLog: its stdout/stderr pipe
    next_probe: float = 0.0
    next_stats: float = 0.0
    stats_pending: bool = False


@dataclass
class Worker:
    """One worker process. Its handles (process, sockets, channels) and
    runtime are attached by the pool; only plain fields go into snapshots."""
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
    runtime: Runtime | None = None             # None once its exit is handled

    @property
    def alive(self) -> bool:
        return self.state in (SlotState.STARTING, SlotState.READY, SlotState.DRAINING)

    def snapshot(self) -> WorkerRecord:
        return WorkerRecord(self.slot, self.generation, self.pid, self.state.value,
                            time.monotonic() - self.started_at,
                            self.handles.fd_numbers() if self.handles is not None else None)


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
    incoming: Worker | None = None       # its replacement under a rolling restart
    retiring: list[Worker] = field(default_factory=list)
    orphans: Any = None                  # SocketSet: a dead worker's UDP sockets awaiting a replacement
    restarts: dict[RestartCause, int] = field(default_factory=lambda: {c: 0 for c in RestartCause})
    phase: SlotPhase = SlotPhase.EMPTY
    respawn_at: float | None = None      # BACKOFF: monotonic time of the respawn
    given_up: str | None = None          # GIVEN_UP: why this slot is not respawned (exit 78)
    events: deque = field(default_factory=lambda: deque(maxlen=EVENTS_KEPT))

    def change_phase(self, target: SlotPhase, reason: str = "", respawn_at: float | None = None) -> None:
        """Move the slot to `target`; `respawn_at` for BACKOFF, `reason` kept for GIVEN_UP."""
        if not self.phase.may_become(target):
            raise TransitionError(f"slot {self.name}: {self.phase.value} -> {target.value} is not allowed "
                                  f"({reason})")
        self.phase = target
        self.respawn_at = respawn_at if target is SlotPhase.BACKOFF else None
        self.given_up = reason if target is SlotPhase.GIVEN_UP else None

    def serve(self, worker: Worker) -> None:
        """`worker` is the one serving in this slot from now on."""
        self.change_phase(SlotPhase.SERVING)
        self.current = worker

    def vacate(self) -> None:
        """No worker serves here any more, and none is scheduled (a stop)."""
        self.current = None
        if self.phase is not SlotPhase.EMPTY:
            self.change_phase(SlotPhase.EMPTY, "stopping")

    def respawn_due(self, now: float) -> bool:
        return self.phase is SlotPhase.BACKOFF and self.current is None and now >= self.respawn_at

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
        return SlotState.FAILED if self.phase in (SlotPhase.BACKOFF, SlotPhase.GIVEN_UP) else SlotState.STOPPED

    def workers(self) -> list[Worker]:
        """The serving worker and the retiring ones."""
        return ([self.current] if self.current else []) + list(self.retiring)

    def watched(self) -> list[Worker]:
        """The serving worker and its replacement: the ones probed and polled."""
        return [w for w in (self.current, self.incoming) if w is not None]

    def everyone(self) -> list[Worker]:
        """Every worker the slot knows of: serving, replacing, retiring."""
        return self.watched() + list(self.retiring)

    def find(self, pid: int) -> Worker | None:
        return next((w for w in self.workers() if w.pid == pid), None)

    def status(self, now: float) -> dict:
        """The slot's line in `twindns status`."""
        w = self.current
        stats = w.stats if w else {}
        hits, misses = stats.get(keys.CACHE_HITS, 0), stats.get(keys.CACHE_MISSES, 0)
        return {
            "slot": self.name,
            "pid": w.pid if w else None,
            "state": self.state.value,
            "generation": w.generation if w else None,
            "uptime": round(now - w.started_at, 3) if w else None,
            "restarts": sum(self.restarts.values()),
            "restarts_by_cause": {c.value: n for c, n in self.restarts.items()},
            "last_probe_latency": w.last_probe_latency if w else None,
            "queries": stats.get(keys.QUERIES_TOTAL, 0),
            "cache_entries": stats.get(keys.CACHE_ENTRIES, 0),
            "version": stats.get(keys.VERSION),
            "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
            "respawn_in": round(self.respawn_at - now, 3) if self.respawn_at is not None else None,
            "given_up": self.given_up,
            "replacing": self.incoming.pid if self.incoming is not None else None,
            # a replaced worker handing its cache over is retiring, not draining yet
            "draining": [r.pid for r in self.retiring if r.state is SlotState.DRAINING],
        }

    def snapshot(self) -> SlotRecord:
        return SlotRecord(self.name, self.current.snapshot() if self.current else None,
                          tuple(w.snapshot() for w in self.retiring),
                          {c.value: n for c, n in self.restarts.items()}, self.backoff.failures, self.given_up)
