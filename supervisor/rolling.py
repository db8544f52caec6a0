"""The rolling replacement of one slot's worker (`twindns restart`, reload,
upgrade): start a new worker beside the old one, wait until it is ready, let
it copy the old one's cache and take its open TCP connections as they
come, then retire (drain) the old one. Also the drain
itself, which a shutdown uses too, and the cache hand-over a respawned
worker gets from its sibling.

`pool` is the supervisor.pool.WorkerPool that owns the slots.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Callable

from supervisor import logs
from supervisor.channel import ChannelClosed, ControlChannel, hand_fds
from supervisor.slot import Worker
from supervisor.states import RestartCause, SlotPhase, SlotState

log = logging.getLogger("twindns.pool")

DRAIN_GRACE = 2.0               # past drain_timeout before a draining worker is killed
KILL_WAIT = 3.0


class RestartAborted(RuntimeError):
    """A replacement worker did not become ready; the old one keeps serving."""


class WorkerGone(RuntimeError):
    """The worker exited before it became ready."""


async def replace(pool, name: str, progress: Callable[[str], None]) -> None:
    """Start a new worker for slot `name`, wait until ready, then retire the old one."""
    slot = pool.slots[name]
    if slot.phase is SlotPhase.GIVEN_UP:
        slot.change_phase(SlotPhase.EMPTY, "rolling replacement")
    new = pool.start(name)
    slot.incoming = new
    rt = new.runtime
    progress(f"slot {name}: started pid {new.pid} generation {new.generation}")
    try:
        await asyncio.wait_for(asyncio.shield(rt.ready), pool.config.supervisor.ready_timeout + 1.0)
    except (TimeoutError, WorkerGone) as e:
        if new.alive:
            pool.kill(new, RestartCause.BOOT)
            await asyncio.shield(rt.exited)
        raise RestartAborted(f"slot {name}: new worker pid {new.pid} did not become ready "
                             f"({e or 'timeout'}); the old worker keeps serving") from None
    if not new.alive or new.kill_cause is not None:
        # Ready, then gone (or being killed) before we got here: the exit path already
        # took it out of `incoming`, or is about to.
        if new.alive:
            await asyncio.shield(rt.exited)
        if slot.incoming is new:
            slot.incoming = None
        raise RestartAborted(f"slot {name}: new worker pid {new.pid} exited after it became ready; "
                             "the old worker keeps serving")
    old = slot.current
    slot.incoming = None
    slot.serve(new)
    if slot.orphans is not None:
        slot.orphans.close()    # nothing left to hand over: the new worker is serving
        slot.orphans = None
    slot.restarts[RestartCause.ROLLING] += 1
    if pool.metrics is not None:
        pool.metrics.inc_worker_restart(RestartCause.ROLLING.value)   # as status counts it
    pool.on_change()
    if old is not None and old.alive:
        slot.retiring.append(old)   # serving still while it hands its cache over; drained next
        if not pool.plain_close:
            await hand_over_cache(old, new)
            await hand_over_tcp(old, new)
        progress(f"slot {name}: draining pid {old.pid} generation {old.generation}")
        await retire(pool, old)
    progress(f"slot {name}: done, pid {new.pid} generation {new.generation} serving")


async def hand_over_cache(old: Worker, new: Worker) -> None:
    """Give `new` a pipe to read `old`'s cache from (docs/internals.md,
    cache_send / cache_receive); the workers stream it while `old` goes
    on (serving, or draining). Best effort: without it `new` starts cold."""
    old_rt, new_rt = old.runtime, new.runtime
    if old_rt is None or new_rt is None:
        return
    read_end, write_end = os.pipe()
    try:
        error = await hand_fds([(new_rt.channel, "cache_receive", (read_end,)),
                                (old_rt.channel, "cache_send", (write_end,))])
    finally:
        os.close(read_end)
        os.close(write_end)
    if error is None:
        logs.event(log, "cache_handoff", slot=new.slot, from_pid=old.pid, to_pid=new.pid)
    else:
        logs.event(log, "cache_handoff_failed", logging.WARNING, slot=new.slot, from_pid=old.pid,
                   to_pid=new.pid, error=error)


async def hand_over_tcp(old: Worker, new: Worker) -> None:
    """Give `old` and `new` the two ends of a socketpair: when `old` drains,
    its open TCP connections go to `new` (worker/tcp_handoff.py) instead of
    being closed, so their clients lose nothing. Best effort: without it
    `old` closes them with a FIN, as a worker that knows no `tcp_send` does."""
    old_rt, new_rt = old.runtime, new.runtime
    if old_rt is None or new_rt is None:
        return
    error = await link_tcp(old_rt.channel, new_rt.channel)
    if error is not None:
        logs.event(log, "tcp_handoff_failed", logging.WARNING, slot=new.slot, from_pid=old.pid,
                   to_pid=new.pid, error=error)


async def link_tcp(sender: ControlChannel, receiver: ControlChannel) -> str | None:
    """Give the workers on these channels the two ends of one socketpair
    (`tcp_receive` first); None when both took theirs, else what went wrong."""
    send_end, receive_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        return await hand_fds([(receiver, "tcp_receive", (receive_end.fileno(),)),
                               (sender, "tcp_send", (send_end.fileno(),))])
    finally:
        send_end.close()
        receive_end.close()


async def take_tcp_from(sender: ControlChannel) -> socket.socket | str:
    """Give the worker on `sender` one end of a socketpair (`tcp_send`): the
    other end, which its open TCP connections will come out of when it
    drains, or what went wrong."""
    send_end, receive_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        error = await hand_fds([(sender, "tcp_send", (send_end.fileno(),))])
    finally:
        send_end.close()
    if error is not None:
        receive_end.close()
        return error
    return receive_end


async def retire(pool, worker: Worker) -> None:
    """Drain `worker` (steer away, tell it, wait) and wait until it exits."""
    slot = pool.slots[worker.slot]
    rt = worker.runtime
    if rt is None:
        return
    if worker.state is not SlotState.DRAINING:
        slot.change_state(worker, SlotState.DRAINING, "replaced" if slot.current is not worker else "stopping")
    if slot.current is worker:
        slot.vacate()
    if worker not in slot.retiring:
        slot.retiring.append(worker)
    h = worker.handles
    drain_timeout = pool.config.supervisor.drain_timeout
    if pool.plain_close:
        h.sockets.close()
        pool.kill(worker, RestartCause.ROLLING)
    else:
        if not h.sockets.steered:
            h.sockets.steer_away()
        h.sockets.close_tcp()
        try:
            await rt.channel.request("drain", 1.0, timeout=drain_timeout)
        except (ChannelClosed, TimeoutError) as e:
            logs.event(log, "drain_request_failed", logging.WARNING, slot=worker.slot, pid=worker.pid,
                       error=str(e) or "timeout")
    try:
        await asyncio.wait_for(asyncio.shield(rt.exited), drain_timeout + DRAIN_GRACE)
    except TimeoutError:
        logs.event(log, "drain_overrun", logging.WARNING, slot=worker.slot, pid=worker.pid)
        pool.kill(worker, RestartCause.ROLLING)
        try:
            await asyncio.wait_for(asyncio.shield(rt.exited), KILL_WAIT)
        except TimeoutError:
            pass
