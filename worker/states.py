"""The worker's lifecycle states. Imports nothing but enum, so anything may import it."""
from enum import Enum


class WorkerState(Enum):
    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"

    def may_become(self, new: "WorkerState") -> bool:
        """Whether `new` may follow this state; anything else is a bug."""
        return (self, new) in _TRANSITIONS


_TRANSITIONS = frozenset({
    (WorkerState.STARTING, WorkerState.SERVING),
    (WorkerState.STARTING, WorkerState.DRAINING),
    (WorkerState.SERVING, WorkerState.DRAINING),
    (WorkerState.DRAINING, WorkerState.STOPPED),
})
