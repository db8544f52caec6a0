"""One query to one upstream server over UDP.

Each exchange uses a new socket, connect()ed to the server, on a port the
kernel picks at random (Linux randomises ephemeral UDP ports), so an attacker
must guess port and ID together (RFC 5452). A pool of long-lived sockets would
make the port guessable after one observation. Connecting (rather than a new
unconnected socket) has two more effects we want: the kernel drops datagrams
from any other address or port before they reach us, and an ICMP "port
unreachable" from a server that is down arrives as ConnectionRefusedError, so
failover starts at once instead of after a timeout.

The socket is a plain non-blocking one watched with loop.add_reader, and
results are delivered through callbacks: an asyncio datagram endpoint and a
Task per query cost more CPU than the rest of a cache miss.
"""
from __future__ import annotations

import asyncio
import resource
import socket
from typing import Callable

from worker.upstream_query import Rejected, UpstreamQuery, random_id

# Unbound's default outgoing-range: UDP sockets per thread.
MAX_SOCKETS = 4096
# The largest UDP payload; servers may send more than the size we offered.
MAX_DATAGRAM = 65535


def socket_budget() -> int:
    """How many upstream UDP sockets may be open at once: half the file
    descriptor limit (the rest serve clients, TCP and the supervisor's
    channels), at most MAX_SOCKETS."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_SOCKETS
    return max(16, min(MAX_SOCKETS, soft // 2))


class UdpUpstream:
    """One upstream server reached over UDP: opens an exchange per query."""

    def __init__(self, server: tuple[str, int], on_reject: Callable[[], None]) -> None:
        self.server = server
        self.family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        self.on_reject = on_reject
        # The server's address as the kernel reports a datagram's source
        # (getpeername of a connected socket): learnt once, then compared.
        self.peer: tuple[str, int] | None = None
        # One receive buffer for every exchange: the loop runs one callback at a time.
        self.buffer = bytearray(MAX_DATAGRAM)

    def ask(self, query: UpstreamQuery, on_answer: Callable[[bytes], None],
            on_error: Callable[[Exception], None]) -> UdpExchange:
        """Send `query` on a new socket now; later on_answer(wire) with the
        first datagram that answers it, or on_error(OSError), unless the
        exchange is closed first. Raises OSError if it cannot be sent."""
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            # A numeric address: connect() resolves nothing and never blocks.
            sock.connect(self.server)
            if self.peer is None:
                self.peer = sock.getpeername()[:2]
            query_id = random_id()
            sock.send(query.wire(query_id))
            return UdpExchange(self, sock, query, query_id, on_answer, on_error)
        except BaseException:
            sock.close()
            raise


class UdpExchange:
    """One query sent on its own connected socket, waiting for its answer."""

    __slots__ = ("_upstream", "_sock", "_fd", "_loop", "_query", "_query_id", "_on_answer", "_on_error")

    def __init__(self, upstream: UdpUpstream, sock: socket.socket, query: UpstreamQuery, query_id: int,
                 on_answer: Callable[[bytes], None], on_error: Callable[[Exception], None]) -> None:
        self._upstream, self._sock, self._query, self._query_id = upstream, sock, query, query_id
        self._on_answer, self._on_error = on_answer, on_error
        self._fd = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        upstream = self._upstream
        buffer = upstream.buffer
        while True:
            try:
                size, source = self._sock.recvfrom_into(buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:     # e.g. ConnectionRefusedError: ICMP port unreachable
                self.close()
                self._on_error(e)
                return
            data = bytes(buffer[:size])
            # The kernel already filters a connected socket; checked again so
            # the rule does not depend on how the socket was set up.
            if (source[0], source[1]) != upstream.peer:
                upstream.on_reject()
                continue
            try:
                self._query.check(data, self._query_id)
            except Rejected:
                upstream.on_reject()
                continue
            self.close()
            self._on_answer(data)
            return

    def close(self) -> None:
        """Stop waiting; no callback comes after this. Idempotent."""
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            self._sock.close()
            self._fd = -1
