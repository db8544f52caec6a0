"""TcpUpstream's callback exchanges against an in-process TCP server on the
loopback (no root): pipelining, matching by ID in any order, one reused
connection, a late answer rejected, reconnect and retry once, refusal."""
from __future__ import annotations

import asyncio
import socket

import dns.message
import dns.rrset
import uvloop

from worker import wire
from worker.upstream_query import UpstreamQuery
from worker.upstream_tcp import ConnectionClosed, TcpUpstream


def query(name: str) -> UpstreamQuery:
    return UpstreamQuery.from_question(wire.parse_query(dns.message.make_query(name, "A").to_wire()))


def answer(sent: bytes) -> bytes:
    q = dns.message.from_wire(sent)
    reply = dns.message.make_response(q)
    reply.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "192.0.2.1"))
    return reply.to_wire()


def framed(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


class FakeServer:
    """Accepts connections and hands the test each query with its writer."""

    def __init__(self) -> None:
        self.queries: asyncio.Queue = asyncio.Queue()
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[:2]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                length = int.from_bytes(await reader.readexactly(2), "big")
                await self.queries.put((await reader.readexactly(length), writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def next(self) -> tuple[bytes, asyncio.StreamWriter]:
        return await asyncio.wait_for(self.queries.get(), 2)

    async def stop(self) -> None:
        self.server.close()


class Outcomes:
    """Collects what one exchange's callbacks said."""

    def __init__(self) -> None:
        self.done = asyncio.get_running_loop().create_future()

    def answered(self, data: bytes) -> None:
        self.done.set_result(data)

    def failed(self, error: Exception) -> None:
        self.done.set_result(error)


def ask(upstream: TcpUpstream, name: str):
    out = Outcomes()
    return upstream.ask(query(name), out.answered, out.failed), out.done


def run(scenario) -> object:
    """scenario(server, upstream, rejected) in a uvloop, against a FakeServer;
    `rejected` lists one item per message the upstream rejected."""
    async def main():
        server = FakeServer()
        rejected = []
        upstream = TcpUpstream(await server.start(), lambda: rejected.append(1))
        try:
            return await scenario(server, upstream, rejected)
        finally:
            await upstream.close()
            await server.stop()
    return uvloop.run(main())


def test_pipelined_on_one_connection_and_matched_in_any_order():
    async def scenario(server, upstream, rejected):
        _, first = ask(upstream, "one.test.")
        _, second = ask(upstream, "two.test.")
        sent = [await server.next(), await server.next()]
        # Answered in reverse order, after a stray message with an unknown ID.
        writer = sent[0][1]
        stray = bytearray(answer(sent[0][0]))
        stray[0] ^= 0xFF
        writer.write(framed(bytes(stray)))
        for data, w in reversed(sent):
            w.write(framed(answer(data)))
        names = [dns.message.from_wire(await asyncio.wait_for(d, 2)).question[0].name.to_text()
                 for d in (first, second)]
        return names, server.connections, len(rejected)
    assert run(scenario) == (["one.test.", "two.test."], 1, 1)


def test_an_answer_after_the_exchange_was_closed_is_rejected():
    async def scenario(server, upstream, rejected):
        exchange, done = ask(upstream, "late.test.")
        data, writer = await server.next()
        exchange.close()
        writer.write(framed(answer(data)))
        await asyncio.sleep(0.1)
        return done.done(), len(rejected)
    assert run(scenario) == (False, 1)


def test_query_in_flight_when_a_working_connection_closes_is_retried_once_on_a_new_one():
    async def scenario(server, upstream, _rejected):
        _, first = ask(upstream, "first.test.")
        data, writer = await server.next()
        writer.write(framed(answer(data)))
        await asyncio.wait_for(first, 2)
        _, second = ask(upstream, "second.test.")
        data, writer = await server.next()
        writer.close()                              # the server drops it unanswered
        data, writer = await server.next()          # asked again on a new connection
        writer.write(framed(answer(data)))
        result = dns.message.from_wire(await asyncio.wait_for(second, 2)).question[0].name.to_text()
        # A second close under the retried query is an error, not another retry.
        _, third = ask(upstream, "third.test.")
        for _ in range(2):
            _, writer = await server.next()
            writer.close()
        error = await asyncio.wait_for(third, 2)
        return result, type(error), server.connections
    assert run(scenario) == ("second.test.", ConnectionClosed, 3)


def test_query_on_a_connection_that_never_answered_fails_when_it_closes():
    async def scenario(server, upstream, _rejected):
        _, done = ask(upstream, "a.test.")
        _, writer = await server.next()
        writer.close()
        return type(await asyncio.wait_for(done, 2)), server.connections
    assert run(scenario) == (ConnectionClosed, 1)


def test_refused_connection_fails_every_query_waiting_for_it():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    address = s.getsockname()
    s.close()

    async def scenario():
        upstream = TcpUpstream(address, lambda: None)
        waits = [ask(upstream, f"n{i}.test.")[1] for i in range(3)]
        errors = [type(await asyncio.wait_for(w, 2)) for w in waits]
        await upstream.close()
        return errors
    assert uvloop.run(scenario()) == [ConnectionRefusedError] * 3
