"""The workers' cache across a `systemctl restart`: the new workers must not
start cold, or the queries that queued in the held sockets during the
restart all become misses at once.

On a stop under systemd (held sockets exist), one ready worker streams its
cache (worker/handoff.py) into a memfd before it drains; once it has exited
the memfd goes into the fd store as FDNAME=cache, replacing an older one.
The next supervisor gets it back with $LISTEN_FDS (supervisor/listenfds.py)
and starts each new worker with its own read-only open of it (`--cache-fd`),
which the worker loads before it reads its sockets: the queries that queued
during the restart find their answers, instead of all becoming misses at once
(past [cache] max_concurrent, SERVFAIL). Entries keep their monotonic expiry,
the same clock on the whole host. Then the store drops it. A stop for good discards it with the store.
"""
from __future__ import annotations

import logging
import os

from supervisor import logs, restartconns
from supervisor.channel import ChannelClosed
from supervisor.listenfds import CACHE_FDNAME
from supervisor.states import SlotState

log = logging.getLogger("twindns.restartcache")


async def save(pool) -> int | None:
    """A memfd the first ready worker is filling with its cache, or None."""
    worker = next((s.current for s in pool.slots.values() if s.current is not None
                   and s.current.state is SlotState.READY and s.current.runtime is not None), None)
    if worker is None:
        return None
    fd = os.memfd_create("twindns-cache", os.MFD_CLOEXEC)
    try:
        reply = await worker.runtime.channel.request("cache_send", 1.0, fds=(fd,))
    except (ChannelClosed, TimeoutError) as e:
        reply = {"ok": False, "error": str(e) or "timeout"}
    if not reply.get("ok"):
        logs.event(log, "restart_cache_not_saved", logging.WARNING, pid=worker.pid, error=reply.get("error"))
        os.close(fd)
        return None
    return fd


async def stop_all_leaving_state(pool, notifier) -> None:
    """pool.stop_all(); under systemd the next supervisor may be a `systemctl
    restart` away, so first leave it our cache and our workers' TCP
    connections (supervisor/restartconns.py) in the fd store."""
    kept = pool.held is not None and notifier.enabled
    cache = await save(pool) if kept else None
    connections = restartconns.ConnectionStore(notifier) if kept else None
    if connections is not None:
        await connections.attach(pool)
    try:
        await pool.stop_all()
    finally:
        if cache is not None:
            store(notifier, cache)
        if connections is not None:
            await connections.finish()


def store(notifier, fd: int) -> None:
    """Once the worker has exited (its drain waits for the stream): into the fd store."""
    notifier.remove_fds(CACHE_FDNAME)
    stored = notifier.store_fds(CACHE_FDNAME, [fd])
    logs.event(log, "restart_cache_saved", bytes=os.fstat(fd).st_size, stored=stored)
    os.close(fd)


def handed_out(notifier, fd: int) -> None:
    """Every new worker has its own open of the cache (spawned with --cache-fd):
    drop it from the store, so that it lives only as long as their loading."""
    logs.event(log, "restart_cache_handed_out", bytes=os.fstat(fd).st_size)
    notifier.remove_fds(CACHE_FDNAME)
    os.close(fd)
