"""States of a worker and causes of a restart. Imports nothing, so anything
(status rendering, tests, snapshots) can use them cheaply."""
from enum import Enum


class SlotState(Enum):
    STARTING = "starting"   # spawned, not yet answered a probe
    READY = "ready"         # answered a probe; serving
    DRAINING = "draining"   # told to drain (or steered away); finishing queued work
    STOPPED = "stopped"     # exited on request
    FAILED = "failed"       # exited unexpectedly, was killed as hung, or never became ready

    def may_become(self, target: "SlotState") -> bool:
        return (self, target) in _TRANSITIONS


class SlotPhase(Enum):
    """Where a slot (A or B) is, as supervisord's process states: the worker in
    it has a SlotState of its own while the slot is SERVING."""
    EMPTY = "empty"         # no worker and none scheduled (before the first spawn, after a stop)
    SERVING = "serving"     # a current worker (starting, ready or draining)
    BACKOFF = "backoff"     # its worker died or could not be spawned; a respawn is scheduled
    GIVEN_UP = "given_up"   # its worker exited 78 (configuration error): no respawn until a reload

    def may_become(self, target: "SlotPhase") -> bool:
        return (self, target) in _PHASE_TRANSITIONS


class RestartCause(Enum):
    ROLLING = "rolling"     # twindns restart / reload / upgrade
    CRASH = "crash"         # unexpected exit
    HANG = "hang"           # probe_failures probes missed, then SIGKILL
    BOOT = "boot"           # never became ready within ready_timeout, or exit 3


# Allowed transitions (source, target). STOPPED and FAILED are final: a
# replacement is a new worker with a state of its own.
_TRANSITIONS = frozenset({
    (SlotState.STARTING, SlotState.READY), (SlotState.STARTING, SlotState.FAILED),
    (SlotState.STARTING, SlotState.DRAINING),
    (SlotState.READY, SlotState.DRAINING), (SlotState.READY, SlotState.FAILED),
    (SlotState.DRAINING, SlotState.STOPPED), (SlotState.DRAINING, SlotState.FAILED),
})


# A slot may go back to EMPTY from anywhere (a rolling replacement after a
# give-up, a stop); GIVEN_UP is left only that way or by a new worker.
_PHASE_TRANSITIONS = frozenset({
    (SlotPhase.EMPTY, SlotPhase.SERVING), (SlotPhase.EMPTY, SlotPhase.BACKOFF),
    (SlotPhase.SERVING, SlotPhase.SERVING), (SlotPhase.SERVING, SlotPhase.BACKOFF),
    (SlotPhase.SERVING, SlotPhase.GIVEN_UP), (SlotPhase.SERVING, SlotPhase.EMPTY),
    (SlotPhase.BACKOFF, SlotPhase.SERVING), (SlotPhase.BACKOFF, SlotPhase.BACKOFF),
    (SlotPhase.BACKOFF, SlotPhase.EMPTY),
    (SlotPhase.GIVEN_UP, SlotPhase.SERVING), (SlotPhase.GIVEN_UP, SlotPhase.EMPTY),
})


class SupervisorState(Enum):
    STARTING = "starting"   # network state and sockets being put in place
    RUNNING = "running"
    STOPPING = "stopping"   # draining workers after SIGTERM
    STOPPED = "stopped"
