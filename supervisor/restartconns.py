"""Open TCP connections across a `systemctl restart`, as restartcache.py
carries the cache: without them, every client connected to a draining
worker sees a FIN and loses what it sent after it (a rolling restart hands
them to the replacement worker instead; here there is none yet).

On a stop under systemd (held sockets exist), each ready worker gets one end
of a socketpair (`tcp_send`) before it drains; every connection it hands
into it goes into the fd store under a name of its own (CONN_PREFIX, and
"-k" when the client asked for edns-tcp-keepalive). The next supervisor gets
them back with $LISTEN_FDS and, once a worker of its own serves, hands them
to its workers (`tcp_receive`), alternating, then drops them from the store.
What the clients sent meanwhile waits in each socket's receive queue. A stop
for good discards the store: those connections close then.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

from contract.tcphandoff import receive_ready, send_connection
from supervisor import logs
from supervisor.channel import ChannelClosed
from supervisor.rolling import take_tcp_from
from supervisor.states import SlotState

log = logging.getLogger("twindns.restartconns")

CONN_PREFIX = "tcpconn-"
KEEPALIVE_SUFFIX = "-k"
# How long the stopping supervisor waits for systemd to take the last connections.
STORE_WAIT = 2.0
# How long the next supervisor waits for a worker to serve before it gives them up,
# and then for a worker to take them.
READY_WAIT = 30.0
GIVE_WAIT = 5.0


def _ready_workers(pool) -> list:
    return [s.current for s in pool.slots.values() if s.current is not None
            and s.current.state is SlotState.READY and s.current.runtime is not None]


class ConnectionStore:
    """The stopping supervisor's side: takes the draining workers' connections into the fd store."""

    def __init__(self, notifier) -> None:
        self.notifier = notifier
        self.ends: list[socket.socket] = []
        self.stored = 0
        self.loop = asyncio.get_running_loop()

    async def attach(self, pool) -> None:
        """Before the drain: each ready worker hands its connections to us."""
        for worker in _ready_workers(pool):
            ours = await take_tcp_from(worker.runtime.channel)
            if isinstance(ours, str):
                logs.event(log, "restart_connections_not_kept", logging.WARNING, pid=worker.pid, error=ours)
                continue
            ours.setblocking(False)
            self.ends.append(ours)
            self.loop.add_reader(ours.fileno(), self._readable, ours)

    def _readable(self, end: socket.socket) -> None:
        if receive_ready(end, self._store):
            self._close(end)

    def _store(self, conn: socket.socket, keepalive: bool) -> None:
        name = f"{CONN_PREFIX}{os.getpid()}-{self.stored}{KEEPALIVE_SUFFIX if keepalive else ''}"
        self.notifier.store_fds(name, [conn.fileno()])      # held as a copy when systemd's queue is full
        conn.close()
        self.stored += 1

    def _close(self, end: socket.socket) -> None:
        if end in self.ends:
            self.ends.remove(end)
            self.loop.remove_reader(end.fileno())
            end.close()

    async def finish(self) -> None:
        """The workers have exited: read what is left, and wait (bounded) until
        systemd has taken every connection."""
        for end in list(self.ends):
            self._readable(end)
            self._close(end)
        deadline = time.monotonic() + STORE_WAIT
        while self.notifier.held_fd_count() and time.monotonic() < deadline:
            self.notifier.flush()
            await asyncio.sleep(0.01)
        if self.stored:
            logs.event(log, "restart_connections_kept", connections=self.stored,
                       not_stored=self.notifier.held_fd_count())


def take_connections(listen_fds: dict) -> list[tuple[str, socket.socket, bool]]:
    """The connections in what systemd handed us, taken out of `listen_fds`."""
    names = [name for name in listen_fds if name.startswith(CONN_PREFIX)]
    return [(name, listen_fds.pop(name), name.endswith(KEEPALIVE_SUFFIX)) for name in names]


async def hand_out(pool, notifier, conns: list[tuple[str, socket.socket, bool]]) -> None:
    """Once our workers serve: each connection to one of them, alternating; then out of the store."""
    deadline = time.monotonic() + READY_WAIT
    while not _ready_workers(pool) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    workers = _ready_workers(pool)
    handed = 0
    try:
        for i, worker in enumerate(workers):
            mine = conns[i::len(workers)]
            if mine:
                handed += await _give(worker, mine)
    finally:
        for name, conn, _keepalive in conns:
            notifier.remove_fds(name)
            conn.close()
    logs.event(log, "restart_connections_handed_out", connections=len(conns), handed=handed)


async def _give(worker, conns: list[tuple[str, socket.socket, bool]]) -> int:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        try:
            reply = await worker.runtime.channel.request("tcp_receive", 2.0, fds=(theirs.fileno(),))
        except (ChannelClosed, TimeoutError, AttributeError) as e:      # AttributeError: it exited meanwhile
            reply = {"ok": False, "error": str(e) or "timeout"}
        if not reply.get("ok"):
            logs.event(log, "restart_connections_not_handed", logging.WARNING, pid=worker.pid,
                       error=reply.get("error"))
            return 0
        ours.setblocking(False)
        sent = 0
        deadline = time.monotonic() + GIVE_WAIT
        for _name, conn, keepalive in conns:
            while True:
                try:
                    send_connection(ours, conn.fileno(), keepalive)
                    sent += 1
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        logs.event(log, "restart_connections_not_handed", logging.WARNING, pid=worker.pid,
                                   error="the worker takes none")
                        return sent
                    await asyncio.sleep(0.005)      # the worker is adopting: room soon
                except OSError as e:
                    logs.event(log, "restart_connections_not_handed", logging.WARNING, pid=worker.pid, error=str(e))
                    return sent
        return sent
    finally:
        ours.close()
        theirs.close()
