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


class SupervisorState(Enum):
    STARTING = "starting"   # network state and sockets being put in place
    RUNNING = "running"
    STOPPING = "stopping"   # draining workers after SIGTERM
    STOPPED = "stopped"
