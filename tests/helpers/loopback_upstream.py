"""A hand-driven UDP upstream on the loopback and the queries and answers
that unit tests of the Forwarder exchange with it (no root, no namespace)."""
from __future__ import annotations

import asyncio
import socket

import dns.message
import dns.name
import dns.rrset

from worker import wire
from worker.upstream import Forwarder
from worker.upstream_query import UpstreamQuery


def query(name: str) -> UpstreamQuery:
    return UpstreamQuery.from_question(wire.parse_query(dns.message.make_query(name, "A").to_wire()))


def answer(sent: bytes, address: str = "192.0.2.1", query_id: int | None = None, name: str | None = None) -> bytes:
    q = dns.message.from_wire(sent)
    reply = dns.message.make_response(q)
    owner = q.question[0].name if name is None else dns.name.from_text(name)
    if name is not None:
        reply.question = [dns.rrset.RRset(owner, 1, 1)]
    reply.answer.append(dns.rrset.from_text(owner, 60, "IN", "A", address))
    if query_id is not None:
        reply.id = query_id
    return reply.to_wire()


class FakeServer:
    """A UDP socket on 127.0.0.1 that the test answers by hand."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()

    async def receive(self) -> tuple[bytes, tuple]:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.add_reader(self.sock.fileno(), lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            loop.remove_reader(self.sock.fileno())
        return self.sock.recvfrom(4096)

    def received(self) -> int:
        """How many queries are queued now."""
        n = 0
        while True:
            try:
                self.sock.recv(4096)
            except BlockingIOError:
                return n
            n += 1

    def close(self) -> None:
        self.sock.close()


def closed_port() -> tuple[str, int]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    address = s.getsockname()
    s.close()
    return address


def outcome(forwarder: Forwarder, q: UpstreamQuery) -> asyncio.Future:
    done = asyncio.get_running_loop().create_future()
    forwarder.ask(q, done.set_result)
    return done
