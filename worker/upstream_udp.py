"""One query to one upstream server over UDP.

Each exchange uses a new socket, connect()ed to the server, on a port the
kernel picks at random (Linux randomises ephemeral UDP ports), so an attacker
must guess port and ID together (RFC 5452). A pool of long-lived sockets would
make the port guessable after one observation. Connecting (rather than a new
unconnected socket) has two more effects we want: the kernel drops datagrams
from any other address or port before they reach us, and an ICMP "port
unreachable" from a server that is down arrives as ConnectionRefusedError, so
failover starts at once instead of after a timeout.

The socket is a plain non-blocking one and results are delivered through
callbacks: an asyncio datagram endpoint and a Task per query cost more CPU
than the rest of a cache miss. The sockets are watched through one epoll
set of our own (SocketWatch), itself one fd on the event loop: uvloop's
add_reader/remove_reader make and free a poll handle per socket (~4 us),
epoll.register is one system call, and close() takes the socket out.
"""
from __future__ import annotations

import asyncio
import logging
import resource
import select
import socket
from typing import Callable

from worker.upstream_query import CaseMismatch, RandomCase, RandomIds, Rejected, UpstreamQuery

# An answer in other letter case than asked is a forgery that guessed port
# and ID, or comes from a server that does not echo 0x20. The real server's
# answer in our case is waited for this long; then the query is asked again
# in lower case, and a server that needed that this many times in a row is
# asked in lower case from then on (unbound's caps fallback).
CASE_WAIT = 0.3
CASE_MISMATCHES_BEFORE_FALLBACK = 3

log = logging.getLogger(__name__)

# Unbound's default outgoing-range: UDP sockets per thread.
MAX_SOCKETS = 4096
# The largest UDP payload; servers may send more than the size we offered.
MAX_DATAGRAM = 65535
# Ready sockets taken from the epoll set per wake-up; the rest wait a turn.
READY_BATCH = 64


def socket_budget() -> int:
    """How many upstream UDP sockets may be open at once: half the file
    descriptor limit (the rest serve clients, TCP and the supervisor's
    channels), at most MAX_SOCKETS."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_SOCKETS
    return max(16, min(MAX_SOCKETS, soft // 2))


class SocketWatch:
    """Calls a socket's callback when it is readable, for many short-lived
    sockets: one epoll set, watched by the running loop as a single fd."""

    def __init__(self) -> None:
        self._epoll: select.epoll | None = None      # made on first use, inside the loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._callbacks: dict[int, Callable[[], None]] = {}

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        """Until unwatch(fd): callback() whenever fd is readable. Closing the
        socket after unwatch() takes it out of the set (it is never dup()ed)."""
        if self._epoll is None:
            self._epoll = select.epoll()
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._epoll.fileno(), self._ready)
        self._epoll.register(fd, select.EPOLLIN)
        self._callbacks[fd] = callback

    def unwatch(self, fd: int) -> None:
        del self._callbacks[fd]

    def _ready(self) -> None:
        callbacks = self._callbacks
        for fd, _events in self._epoll.poll(0, READY_BATCH):
            # An fd closed by an earlier callback of this batch has no
            # callback, or belongs to a new socket: reading it finds nothing.
            callback = callbacks.get(fd)
            if callback is not None:
                callback()

    def close(self) -> None:
        if self._epoll is not None:
            self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None


class UdpUpstream:
    """One upstream server reached over UDP: opens an exchange per query."""

    def __init__(self, server: tuple[str, int], on_reject: Callable[[], None], sockets: SocketWatch) -> None:
        self.server = server
        self.family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        self.on_reject = on_reject
        self.sockets = sockets
        # The server's address as the kernel reports a datagram's source
        # (getpeername of a connected socket): learnt once, then compared.
        self.peer: tuple[str, int] | None = None
        self.ids = RandomIds()
        self.case = RandomCase()
        self.use_0x20 = True
        self.case_mismatches = 0        # in a row; reset by an answer in our case

    def ask(self, query: UpstreamQuery, on_answer: Callable[[bytes], None],
            on_error: Callable[[Exception], None]) -> UdpExchange:
        """Send `query` on a new socket now; later on_answer(wire) with the
        first datagram that answers it, or on_error(OSError), unless the
        exchange is closed first. Raises OSError if it cannot be sent."""
        sock = socket.socket(self.family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        try:
            # A numeric address: connect() resolves nothing and never blocks.
            sock.connect(self.server)
            if self.peer is None:
                self.peer = sock.getpeername()[:2]
            query_id = self.ids.next()
            name = self.case.mix(query.qname) if self.use_0x20 else None
            sock.send(query.wire(query_id, name))
            return UdpExchange(self, sock, query, query_id, name, on_answer, on_error)
        except BaseException:
            sock.close()
            raise


class UdpExchange:
    """One query sent on its own connected socket, waiting for its answer."""

    __slots__ = ("_upstream", "_sock", "_fd", "_query", "_query_id", "_name", "_on_answer", "_on_error",
                 "_case_timer")

    def __init__(self, upstream: UdpUpstream, sock: socket.socket, query: UpstreamQuery, query_id: int,
                 name: bytes | None, on_answer: Callable[[bytes], None],
                 on_error: Callable[[Exception], None]) -> None:
        self._upstream, self._sock, self._query, self._query_id = upstream, sock, query, query_id
        self._name = name               # the 0x20 name sent; None: asked in lower case
        self._case_timer: asyncio.TimerHandle | None = None
        self._on_answer, self._on_error = on_answer, on_error
        self._fd = sock.fileno()
        upstream.sockets.watch(self._fd, self._readable)

    def _readable(self) -> None:
        upstream = self._upstream
        while True:
            try:
                data, source = self._sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:     # e.g. ConnectionRefusedError: ICMP port unreachable
                self.close()
                self._on_error(e)
                return
            # The kernel already filters a connected socket; checked again so
            # the rule does not depend on how the socket was set up.
            if (source[0], source[1]) != upstream.peer:
                upstream.on_reject()
                continue
            try:
                self._query.check(data, self._query_id, self._name)
            except CaseMismatch:
                upstream.on_reject()
                if self._case_timer is None:
                    self._case_timer = asyncio.get_running_loop().call_later(CASE_WAIT, self._reask_in_lower_case)
                continue
            except Rejected:
                upstream.on_reject()
                continue
            if self._name is not None:
                upstream.case_mismatches = 0
            self.close()
            self._on_answer(data)
            return

    def _reask_in_lower_case(self) -> None:
        """Only answers in other case came within CASE_WAIT: ask again, a new
        ID, in lower case, and take only that answer; after
        CASE_MISMATCHES_BEFORE_FALLBACK in a row the server is asked without
        0x20 from then on."""
        self._case_timer = None
        upstream = self._upstream
        upstream.case_mismatches += 1
        if upstream.case_mismatches >= CASE_MISMATCHES_BEFORE_FALLBACK and upstream.use_0x20:
            upstream.use_0x20 = False
            log.warning("upstream %s:%d does not echo the letter case of questions: 0x20 off for it",
                        *upstream.server[:2])
        self._query_id = upstream.ids.next()
        self._name = None
        try:
            self._sock.send(self._query.wire(self._query_id))
        except OSError as e:
            self.close()
            self._on_error(e)

    def close(self) -> None:
        """Stop waiting; no callback comes after this. Idempotent."""
        if self._case_timer is not None:
            self._case_timer.cancel()
            self._case_timer = None
        if self._fd >= 0:
            self._upstream.sockets.unwatch(self._fd)
            self._sock.close()
            self._fd = -1
