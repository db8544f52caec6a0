"""One query to one upstream server over UDP.

Each exchange uses a new socket, connect()ed to the server, on a port the
kernel picks at random (Linux randomises ephemeral UDP ports), so an attacker
must guess port and ID together (RFC 5452). A pool of long-lived sockets would
make the port guessable after one observation. Connecting (rather than a new
unconnected socket) has two more effects we want: the kernel drops datagrams
from any other address or port before they reach us, and an ICMP "port
unreachable" from a server that is down arrives as ConnectionRefusedError, so
failover starts at once instead of after a timeout.
"""
from __future__ import annotations

import asyncio
import ipaddress
import resource
import socket
from typing import Callable

import dns.message

from worker.upstream_query import Rejected, UpstreamQuery, random_id

# Unbound's default outgoing-range: UDP sockets per thread.
MAX_SOCKETS = 4096


class _Exchange(asyncio.DatagramProtocol):
    """Waits for the one datagram that answers our query; ignores the rest."""

    def __init__(self, query: UpstreamQuery, query_id: int, server: tuple[str, int],
                 on_reject: Callable[[], None], done: asyncio.Future) -> None:
        self.query, self.query_id, self.on_reject, self.done = query, query_id, on_reject, done
        self.source = (ipaddress.ip_address(server[0]), server[1])

    def datagram_received(self, data: bytes, addr) -> None:
        if self.done.done():
            return
        # The kernel already filters a connected socket; checked again so the
        # rule does not depend on how the socket was set up.
        if (ipaddress.ip_address(addr[0]), addr[1]) != self.source:
            self.on_reject()
            return
        try:
            reply = self.query.answer(data, self.query_id)
        except Rejected:
            self.on_reject()
            return
        self.done.set_result((data, reply))

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("UDP socket closed"))


def socket_budget() -> int:
    """How many upstream UDP sockets may be open at once: half the file
    descriptor limit (the rest serve clients, TCP and the supervisor's
    channels), at most MAX_SOCKETS."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_SOCKETS
    return max(16, min(MAX_SOCKETS, soft // 2))


def _connected_socket(server: tuple[str, int]) -> socket.socket:
    ip, port = server
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        # A numeric address: connect() resolves nothing and never blocks.
        sock.connect((ip, port))
    except OSError:
        sock.close()
        raise
    return sock


async def exchange(query: UpstreamQuery, server: tuple[str, int],
                   on_reject: Callable[[], None]) -> tuple[bytes, dns.message.Message]:
    """Send `query` to `server` and wait (until cancelled) for its answer.
    Raises OSError (e.g. ConnectionRefusedError) if the server is unreachable."""
    loop = asyncio.get_running_loop()
    query_id = random_id()
    done = loop.create_future()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Exchange(query, query_id, server, on_reject, done),
        sock=_connected_socket(server))
    try:
        transport.sendto(query.wire(query_id))
        return await done
    finally:
        transport.close()
