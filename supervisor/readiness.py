"""A worker answered its probe: a STARTING one becomes READY once it holds
no capability and its UDP sockets are bound (it joins the reuseport group
only then), the dead workers' sockets it replaces are steered away, and a
respawned worker gets a copy of its sibling's cache.

`pool` is the supervisor.pool.WorkerPool that owns the worker.
"""
from __future__ import annotations

import logging
import time

from supervisor import custody, logs, rolling
from supervisor.slot import Worker
from supervisor.sockets import SocketSetupError
from supervisor.spawn import SpawnError, effective_caps
from supervisor.states import RestartCause, SlotState

log = logging.getLogger("twindns.pool")


def probe_answered(pool, worker: Worker, latency: float, text: str) -> None:
    """The worker answered a probe: a STARTING one becomes READY and joins the group."""
    if worker.kill_cause is not None:
        return      # SIGKILLed already (an answer sent before): it must not become READY or bind
    worker.probe_misses = 0
    worker.last_probe_latency = latency
    if worker.state is SlotState.STARTING:
        if pool.run_as is not None and not _unprivileged(pool, worker):
            return
        try:
            worker.handles.sockets.bind_udp()
        except SocketSetupError as e:
            logs.event(log, "bind_failed", logging.ERROR, slot=worker.slot, pid=worker.pid, error=str(e))
            pool.kill(worker, RestartCause.BOOT)
            return
        slot = pool.slots[worker.slot]
        slot.change_state(worker, SlotState.READY, f"probe answered: {text}")
        # Its own sockets are in the group now: the dead ones' it drains (and any orphans
        # left in the group while nobody was serving) may leave it. The worker waits for
        # this before it closes its copies.
        for held in custody.unserved_sockets(pool.slots.values()):
            held.steer_away()
        worker.handles.release_adopted()     # it holds its own copies and drains them
        rt = worker.runtime
        if rt is not None and not rt.ready.done():
            rt.ready.set_result(True)
        logs.event(log, "worker_ready", slot=worker.slot, pid=worker.pid,
                   generation=worker.generation, after=f"{time.monotonic() - worker.started_at:.3f}")
        if slot.incoming is not worker and any(slot.restarts.values()):
            _copy_cache_from_sibling(pool, worker)
        pool.on_change()


def _copy_cache_from_sibling(pool, worker: Worker) -> None:
    """A respawned worker (after a crash, hang or failed boot) has no
    predecessor to hand it a cache: take a copy of the other slot's, which
    holds the popular names too (clients' source ports spread every name
    over both workers). Rolling replacements get their predecessor's."""
    for slot in pool.slots.values():
        other = slot.current
        if (other is not None and other is not worker and other.state is SlotState.READY
                and other.kill_cause is None and other.alive):
            pool.background(rolling.hand_over_cache(other, worker))
            return


def _unprivileged(pool, worker: Worker) -> bool:
    """A worker must hold no capability; one that does is killed before it counts as ready."""
    try:
        caps = effective_caps(worker.pid)
    except (OSError, SpawnError):
        return False          # already gone: the exit path reports it
    if caps == 0:
        return True
    logs.event(log, "worker_privileged", logging.ERROR, slot=worker.slot, pid=worker.pid, cap_eff=f"{caps:x}")
    pool.kill(worker, RestartCause.BOOT)
    return False
