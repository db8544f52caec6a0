"""A worker's process is gone: settle its slot. A draining worker has
stopped; a replacement that died leaves the old worker serving; any other
exit is the crash path: steer its sockets away if another worker serves,
keep the ones holding queries for its replacement (supervisor/custody.py),
then back off and respawn, or give the slot up on exit 78.

`pool` is the supervisor.pool.WorkerPool that owns the worker.
"""
from __future__ import annotations

import logging
import signal
import socket
import time

from contract.exits import EX_BOOT, EX_CONFIG
from supervisor import custody, logs
from supervisor.rolling import WorkerGone
from supervisor.slot import Worker, WorkerSlot
from supervisor.sockets import SocketSet, is_bound
from supervisor.spawn import WorkerHandles
from supervisor.states import RestartCause, SlotPhase, SlotState

log = logging.getLogger("twindns.pool")


def _connected(s: socket.socket) -> bool:
    try:
        s.getpeername()
        return True
    except OSError:
        return False


def worker_exited(pool, worker: Worker, code: int) -> None:
    """The worker's process is gone (exit code, or -signal): settle its slot."""
    slot = pool.slots[worker.slot]
    rt, worker.runtime = worker.runtime, None
    rt.prober.close()
    rt.channel.close()
    if rt.log is not None:
        rt.log.close()
    how = f"exit {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
    replacement = slot.incoming is worker
    if replacement:
        slot.incoming = None
    if worker.state is SlotState.DRAINING:
        slot.change_state(worker, SlotState.STOPPED if code == 0 else SlotState.FAILED, how)
        if worker in slot.retiring:
            slot.retiring.remove(worker)
        worker.handles.close()
        logs.event(log, "worker_stopped", slot=worker.slot, pid=worker.pid,
                   generation=worker.generation, how=how)
    elif replacement:
        slot.change_state(worker, SlotState.FAILED, how)
        worker.handles.close()
        logs.event(log, "replacement_failed", logging.ERROR, slot=worker.slot, pid=worker.pid, how=how)
    else:
        _crash(pool, slot, worker, code, how)
    if pool.metrics is not None:
        pool.metrics.worker_exited(worker.slot, worker.generation,
                                   worker.stats if worker.final_stats else None)
    if not rt.ready.done():
        rt.ready.set_exception(WorkerGone(how))
        rt.ready.exception()    # retrieved: nobody may be waiting for it
    rt.exited.set_result(code)
    pool.on_change()


def _crash(pool, slot: WorkerSlot, worker: Worker, code: int, how: str) -> None:
    """The crash path: steer its sockets away (if another worker serves), respawn (after
    backoff) with them adopted."""
    h: WorkerHandles = worker.handles
    if pool.plain_close:
        h.sockets.close()       # the control: what dies with the worker is lost
    elif custody.steer_when_lost(worker, custody.others_serving(pool.slots.values(), worker)):
        h.sockets.steer_away()
    # else: nobody else serves (see supervisor/custody.py): left in the group, queueing.
    cause = worker.kill_cause or (RestartCause.BOOT if code == EX_BOOT or worker.state is SlotState.STARTING
                                  else RestartCause.CRASH)
    slot.change_state(worker, SlotState.FAILED, f"{how} ({cause.value})")
    slot.restarts[cause] += 1
    if pool.metrics is not None:
        pool.metrics.inc_worker_restart(cause.value)
    h.sockets.close_tcp()
    kept, stale = custody.orphans_to_keep((h.adopted.udp if h.adopted else []) + h.sockets.udp, is_bound,
                                          len(pool.config.listen))
    leftover = SocketSet(udp=kept, steered=all(_connected(s) for s in kept))
    for s in stale:
        s.close()
    h.sockets.udp, h.adopted = [], None      # moved to `leftover` or closed
    h.close()
    if slot.current is not worker:
        # Replaced already, it died before its drain began: its successor serves.
        if worker in slot.retiring:
            slot.retiring.remove(worker)
        leftover.close()
        logs.event(log, "worker_failed", logging.WARNING, slot=slot.name, pid=worker.pid,
                   generation=worker.generation, how=how, cause=cause.value, respawn_in="none")
        return
    slot.current = None
    if code == EX_CONFIG:
        leftover.close()
        slot.change_phase(SlotPhase.GIVEN_UP, f"worker pid {worker.pid} exited {EX_CONFIG} (configuration "
                                              "error); not respawned until a reload succeeds")
        logs.event(log, "slot_given_up", logging.ERROR, slot=slot.name, reason=slot.given_up)
        return
    uptime = time.monotonic() - worker.started_at
    delay = slot.backoff.next_delay(uptime)
    slot.orphans = leftover
    logs.event(log, "worker_failed", logging.WARNING, slot=slot.name, pid=worker.pid,
               generation=worker.generation, how=how, cause=cause.value,
               uptime=f"{uptime:.1f}", respawn_in=f"{delay:.1f}")
    slot.change_phase(SlotPhase.BACKOFF, how, respawn_at=time.monotonic() + delay)
    if delay == 0:
        pool.respawn(slot.name)
