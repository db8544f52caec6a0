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
It leaves sooner once none of its listen addresses is on the host any more
(`systemctl stop` while the crashed service waited for its restart: the
network unit removed them), since then no query can reach it.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable

log = logging.getLogger(__name__)

ORPHAN_SERVE_LIMIT = 600.0
# How often an orphan checks that its listen addresses are still on the host.
ADDRESS_CHECK_INTERVAL = 1.0
NAME_PREFIX = "twindns-orphan."


def orphan_address(pid: int | None = None) -> bytes:
    return b"\0" + f"{NAME_PREFIX}{os.getpid() if pid is None else pid}".encode()


def address_present(ip: str) -> bool:
    """Whether `ip` is one of this host's addresses (a wildcard always is):
    binding to it without IP_FREEBIND fails with EADDRNOTAVAIL otherwise."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((ip, 0))
        except OSError as e:
            return e.errno != errno.EADDRNOTAVAIL
    return True


def peer_uid(sock: socket.socket) -> int:
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          struct.calcsize("3i")))
    return uid


class Orphanage:
    """Listens for a successor; `adopted(sock)` gets its connection, `expire()`
    is called when ORPHAN_SERVE_LIMIT passes first, or once none of
    `addresses` (our listen IPs) is on the host."""

    def __init__(self, adopted: Callable[[socket.socket], None], expire: Callable[[], None],
                 addresses: list[str], limit: float = ORPHAN_SERVE_LIMIT,
                 check_interval: float = ADDRESS_CHECK_INTERVAL) -> None:
        self.loop = asyncio.get_running_loop()
        self.adopted, self.expire = adopted, expire
        self.addresses, self.check_interval = addresses, check_interval
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK
                                      | socket.SOCK_CLOEXEC)
        self.listener.bind(orphan_address())
        self.listener.listen(4)
        self.loop.add_reader(self.listener.fileno(), self._accept)
        self.timer = self.loop.call_later(limit, self._leave, "no successor within the limit")
        self.check = self.loop.call_later(check_interval, self._check_addresses)
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

    def _leave(self, why: str) -> None:
        log.warning("orphan: %s; draining", why)
        self.close()
        self.expire()

    def _check_addresses(self) -> None:
        if self.addresses and not any(address_present(ip) for ip in self.addresses):
            return self._leave(f"none of our listen addresses ({', '.join(self.addresses)}) is on the host any more")
        self.check = self.loop.call_later(self.check_interval, self._check_addresses)

    def close(self) -> None:
        self.timer.cancel()
        self.check.cancel()
        if self.listener.fileno() >= 0:
            self.loop.remove_reader(self.listener.fileno())
            self.listener.close()
