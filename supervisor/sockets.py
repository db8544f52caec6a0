"""The listening sockets of one worker generation, made by the supervisor.

Per listen address: one UDP and one TCP socket with SO_REUSEPORT, so every
generation joins the same reuseport group (all are created by this one uid).
The supervisor passes them to the worker and keeps these objects as its
duplicates; `steer_away()` connect()s the UDP ones to their own address so
the kernel stops choosing them for new datagrams while what is queued stays
readable (DESIGN.md, "Steering away").
"""
from __future__ import annotations

import platform
import re
import socket
from dataclasses import dataclass, field

from contract.endpoint import Endpoint, steer_away

# What a worker's socket queues while nobody reads it fast enough: a hung
# worker until the probes give up on it (~2 s), or a serving one starved of
# CPU while a successor supervisor and its workers start on a busy node. A
# small datagram costs ~1 KiB of buffer; at 10,000 qps per worker on 2 cores
# a takeover starved one for ~2 s and 8 MiB overflowed (~4,800 lost of
# 240,000; tests/chaos/test_replace_service.py). 32 MiB holds ~3 s at that
# rate. It is a limit, not an allocation: memory is only used while queued.
UDP_RCVBUF = 32 * 1024 * 1024
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)   # Linux value; Python does not export it
TCP_BACKLOG = 1024
# The held sockets carry the whole load while no worker reads (between a
# `systemctl restart`'s stop and the new workers' first read): at 20,000 qps
# a small datagram costs ~1 KiB of receive buffer, so 64 MiB (the kernel
# doubles it) holds several seconds.
HELD_RCVBUF = 64 * 1024 * 1024
STEERING_MIN_KERNEL = (5, 9)


class SocketSetupError(OSError):
    """A listen socket could not be created or bound."""


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bind(s: socket.socket, ep: Endpoint) -> None:
    try:
        s.bind((ep.host, ep.port))
        if s.type == socket.SOCK_STREAM:
            s.listen(TCP_BACKLOG)
    except OSError as e:
        proto = "UDP" if s.type == socket.SOCK_DGRAM else "TCP"
        raise SocketSetupError(e.errno, f"cannot bind {proto} {ep}: {e.strerror}") from None


def _reuseport_socket(ep: Endpoint, kind: socket.SocketKind, bind: bool,
                      rcvbuf: int = UDP_RCVBUF) -> socket.socket:
    s = socket.socket(_family(ep.host), kind)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if kind == socket.SOCK_DGRAM:
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:   # not root (development): take what rmem_max allows
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.setblocking(False)
        if bind:
            _bind(s, ep)
        return s
    except OSError:
        s.close()
        raise


def is_bound(s: socket.socket) -> bool:
    return s.fileno() >= 0 and s.getsockname()[1] != 0


@dataclass
class SocketSet:
    """One generation's sockets (the supervisor's duplicates).

    The TCP listeners are bound at once (a connection that arrives early
    waits in the backlog). The UDP sockets are bound only by `bind_udp()`,
    once their worker answers its probe: a bound socket joins the reuseport
    group and gets its share of queries at once, which would sit unanswered
    while a slow worker is still starting.
    """
    udp: list[socket.socket] = field(default_factory=list)
    tcp: list[socket.socket] = field(default_factory=list)
    steered: bool = False
    endpoints: tuple[Endpoint, ...] = ()

    @classmethod
    def open(cls, endpoints: tuple[Endpoint, ...]) -> "SocketSet":
        made = cls(endpoints=endpoints)
        try:
            for ep in endpoints:
                made.udp.append(_reuseport_socket(ep, socket.SOCK_DGRAM, bind=False))
                made.tcp.append(_reuseport_socket(ep, socket.SOCK_STREAM, bind=True))
        except OSError:
            made.close()
            raise
        return made

    @classmethod
    def adopt(cls, udp_fds: list[int], tcp_fds: list[int], steered: bool) -> "SocketSet":
        """Wrap fds inherited across a supervisor re-exec (bound already)."""
        return cls([socket.socket(fileno=fd) for fd in udp_fds],
                   [socket.socket(fileno=fd) for fd in tcp_fds], steered)

    def bind_udp(self) -> None:
        """Join the reuseport group: from now on this generation gets new queries."""
        for s, ep in zip(self.udp, self.endpoints):
            if not is_bound(s):
                _bind(s, ep)

    def udp_fds(self) -> list[int]:
        return [s.fileno() for s in self.udp if s.fileno() >= 0]

    def tcp_fds(self) -> list[int]:
        return [s.fileno() for s in self.tcp if s.fileno() >= 0]

    def steer_away(self) -> None:
        """Take the UDP sockets out of reuseport selection; queued datagrams stay."""
        bound = [s for s in self.udp if is_bound(s)]
        for s in bound:
            steer_away(s)
        # An unbound socket was not steered: if it is bound later it must be steered then.
        self.steered = len(bound) == len(self.udp)

    def close_tcp(self) -> None:
        """Drop our TCP listeners so the kernel stops picking them once the worker closes its copies."""
        for s in self.tcp:
            s.close()

    def close(self) -> None:
        for s in self.udp + self.tcp:
            s.close()


def held_name(kind: str, ep: Endpoint) -> str:
    """The fd store name of a held socket (FDNAME=, at most 255 characters of [A-Za-z0-9._:-])."""
    return f"{kind}-{ep.host.replace(':', '.')}-{ep.port}"


@dataclass
class HeldSockets:
    """One UDP and one TCP socket per listen address that belong to the
    service rather than to a worker generation: every worker serves them
    (`--shared-udp-fd`), none ever steers them away, and systemd's fd store
    keeps them open across a `systemctl restart` (or a crash and Restart=),
    so the reuseport group never empties and queries wait in their buffers
    until the next supervisor's workers read them (README, "systemctl
    restart"). Keyed by fd store name (held_name), so a reload that changes
    the listen addresses never pairs a socket with another address's name."""
    udp: dict[str, socket.socket] = field(default_factory=dict)
    tcp: dict[str, socket.socket] = field(default_factory=dict)
    inherited: bool = False          # came from LISTEN_FDS (a restart), not made by us

    @classmethod
    def open(cls, endpoints: tuple[Endpoint, ...], inherited: dict[str, socket.socket]) -> "HeldSockets":
        """Take the inherited ones named for `endpoints`, make the missing ones; close the rest."""
        held = cls(inherited=bool(inherited))
        try:
            held._take_or_make(endpoints, inherited)
        except OSError:
            held.close()
            raise
        finally:
            for stale in inherited.values():     # an address the config no longer listens on
                stale.close()
            inherited.clear()
        return held

    def add(self, endpoints: tuple[Endpoint, ...]) -> list[tuple[str, socket.socket]]:
        """Make the held sockets of the endpoints that have none (a reload
        added them): the new ones, for the fd store. All or none on OSError."""
        before = set(self.udp) | set(self.tcp)
        try:
            self._take_or_make(endpoints, {})
        except OSError:
            self.drop([name for name, _ in self.named() if name not in before])
            raise
        return [(name, sock) for name, sock in self.named() if name not in before]

    def _take_or_make(self, endpoints: tuple[Endpoint, ...], inherited: dict[str, socket.socket]) -> None:
        for ep in endpoints:
            for kind, held in (("udp", self.udp), ("tcp", self.tcp)):
                name = held_name(kind, ep)
                if name in held:
                    continue
                sock = inherited.pop(name, None)
                if sock is None:
                    sock = _reuseport_socket(ep, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM,
                                             bind=True, rcvbuf=HELD_RCVBUF)
                sock.setblocking(False)
                held[name] = sock

    def unlisted(self, endpoints: tuple[Endpoint, ...]) -> list[str]:
        """Names of the held sockets of addresses not among `endpoints`."""
        wanted = {held_name(kind, ep) for ep in endpoints for kind in ("udp", "tcp")}
        return [name for name, _ in self.named() if name not in wanted]

    def drop(self, names: list[str]) -> None:
        """Close our copies of these: a worker that was given one keeps
        serving it until it exits, and no worker spawned from now on gets it."""
        for name in names:
            for held in (self.udp, self.tcp):
                sock = held.pop(name, None)
                if sock is not None:
                    sock.close()

    def named(self) -> list[tuple[str, socket.socket]]:
        return [*self.udp.items(), *self.tcp.items()]

    def udp_fds(self) -> list[int]:
        return [s.fileno() for s in self.udp.values() if s.fileno() >= 0]

    def tcp_fds(self) -> list[int]:
        return [s.fileno() for s in self.tcp.values() if s.fileno() >= 0]

    def close(self) -> None:
        self.drop([name for name, _ in self.named()])


def kernel_release() -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", platform.release())
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def check_kernel() -> str | None:
    """A warning when this kernel cannot steer by connect() correctly, else None."""
    if kernel_release() < STEERING_MIN_KERNEL:
        return (f"kernel {platform.release()} is older than 5.9: after a worker is steered away, "
                "all traffic may go to one socket; Linux >= 5.10 is supported")
    return None

