"""The periodic checks of live workers, one verb each, run by
WorkerPool.tick(): a worker that does not become ready within ready_timeout
is killed (boot), every worker is probed (often while starting, every
probe_interval once ready) and one that misses probe_failures probes in a
row is killed (hang), and ready workers are asked for their STATS.

`pool` is the supervisor.pool.WorkerPool that owns the workers.
"""
from __future__ import annotations

import asyncio
import logging

from supervisor import logs
from supervisor.channel import ChannelClosed
from supervisor.slot import Runtime, Worker
from supervisor.states import RestartCause, SlotState

log = logging.getLogger("twindns.pool")

STARTING_PROBE_EVERY = 0.05     # readiness is checked often: a restart waits on it
STATS_EVERY = 1.0
FRESH_STATS_WAIT = 0.25


def watched(pool) -> list[Worker]:
    """Serving and incoming workers whose exit is not handled yet and that we are not killing."""
    return [w for slot in pool.slots.values() for w in slot.watched()
            if w.runtime is not None and w.kill_cause is None]


def time_out_boots(pool, now: float) -> None:
    for worker in watched(pool):
        if worker.state is SlotState.STARTING and now - worker.started_at > pool.config.supervisor.ready_timeout:
            pool.kill(worker, RestartCause.BOOT)


def probe(pool, now: float) -> None:
    sup = pool.config.supervisor
    for worker in watched(pool):
        rt = worker.runtime
        if now < rt.next_probe:
            continue
        if worker.state is SlotState.STARTING:
            rt.prober.tick()
            rt.next_probe = now + STARTING_PROBE_EVERY
        elif worker.state is SlotState.READY:
            if rt.prober.tick():
                worker.probe_misses += 1
            rt.next_probe = now + sup.probe_interval
            if worker.probe_misses >= sup.probe_failures:
                logs.event(log, "worker_hung", logging.WARNING, slot=worker.slot, pid=worker.pid,
                           missed=worker.probe_misses)
                pool.kill(worker, RestartCause.HANG)


def poll_stats(pool, now: float) -> None:
    for worker in watched(pool):
        rt = worker.runtime
        if worker.state is SlotState.READY and now >= rt.next_stats and not rt.stats_pending:
            rt.next_stats = now + STATS_EVERY
            rt.stats_pending = True
            pool.background(ask_stats(pool, worker, rt))


async def fresh_stats(pool) -> None:
    """Ask every ready worker for its counters now, so a scrape or a status
    reflects the moment it was asked; a worker that does not answer within
    FRESH_STATS_WAIT is shown with its last report (hangs are the probe's job)."""
    if pool is None:
        return          # asked while starting: the control socket is up before the workers
    asks = []
    for worker in watched(pool):
        rt = worker.runtime
        if worker.state is SlotState.READY and not rt.stats_pending:
            rt.stats_pending = True
            asks.append(ask_stats(pool, worker, rt, FRESH_STATS_WAIT))
    if asks:
        await asyncio.gather(*asks)


async def ask_stats(pool, worker: Worker, rt: Runtime, timeout: float | None = None) -> None:
    try:
        reply = await rt.channel.request("stats", timeout or pool.config.supervisor.probe_interval)
    except (ChannelClosed, TimeoutError):
        return
    finally:
        rt.stats_pending = False
    stats = reply.get("stats")
    if isinstance(stats, dict):
        worker.stats = stats
        if pool.metrics is not None:
            try:
                pool.metrics.update_worker(worker.slot, worker.generation, stats)
            except ValueError as e:
                logs.event(log, "bad_stats", logging.WARNING, slot=worker.slot, error=str(e))
