"""A worker whose supervisor died (its control channel closed without a
drain request) goes on serving, unsupervised, and waits for a successor:
it listens on the abstract AF_UNIX SOCK_SEQPACKET address
`\\0twindns-orphan.<pid>` (abstract names are per network namespace, the
scope a successor serves in) and takes the first connection from uid 0 as
its new control channel, which speaks the same protocol (stats, drain,
cache_send). A successor finds us in /proc/net/unix.

Nobody watches an orphan (no hang detection, no repair of the network
state, no reload), so it does not serve for ever: after ORPHAN_SERVE_LIMIT
seconds without a successor it drains and exits (README, "Supervisor crash").
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from collections.abc import Callable

log = logging.getLogger(__name__)

ORPHAN_SERVE_LIMIT = 600.0
NAME_PREFIX = "twindns-orphan."


def orphan_address(pid: int | None = None) -> bytes:
    return b"\0" + f"{NAME_PREFIX}{os.getpid() if pid is None else pid}".encode()


def peer_uid(sock: socket.socket) -> int:
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          struct.calcsize("3i")))
    return uid


class Orphanage:
    """Listens for a successor; `adopted(sock)` gets its connection, `expire()`
    is called when ORPHAN_SERVE_LIMIT passes first."""

    def __init__(self, adopted: Callable[[socket.socket], None], expire: Callable[[], None],
                 limit: float = ORPHAN_SERVE_LIMIT) -> None:
        self.loop = asyncio.get_running_loop()
        self.adopted = adopted
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK
                                      | socket.SOCK_CLOEXEC)
        self.listener.bind(orphan_address())
        self.listener.listen(4)
        self.loop.add_reader(self.listener.fileno(), self._accept)
        self.timer = self.loop.call_later(limit, self._expired, expire)
        log.warning("supervisor gone: serving unsupervised for up to %.0f s, waiting for a successor on @%s",
                    limit, orphan_address()[1:].decode())

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if peer_uid(conn) != 0:
            log.warning("orphan: refused a successor that is not root (uid %d)", peer_uid(conn))
            conn.close()
            return
        self.close()
        log.info("orphan: adopted by a successor supervisor")
        self.adopted(conn)

    def _expired(self, expire: Callable[[], None]) -> None:
        log.warning("orphan: no successor within the limit; draining")
        self.close()
        expire()

    def close(self) -> None:
        self.timer.cancel()
        if self.listener.fileno() >= 0:
            self.loop.remove_reader(self.listener.fileno())
            self.listener.close()
