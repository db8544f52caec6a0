"""Queries to one upstream server over TCP, on one reused connection.

Queries are pipelined (RFC 7766 section 6.2.1): each is written as soon as it
is asked (those asked in one turn of the event loop in one write), answers
are matched by ID as they arrive in any order. A connection the server
closed is replaced on the next query; a query that was in flight on a
connection that closed under it is retried once on a new one (servers close
idle connections, and the close can cross our write). Our side closes the
connection after IDLE_SECONDS without queries.

Like the UDP side, results come through callbacks (no Task or Future per
query); only opening a connection is a coroutine.
"""
from __future__ import annotations

import asyncio
import socket
from typing import Callable

from worker.upstream_query import RandomIds, Rejected, UpstreamQuery

IDLE_SECONDS = 10.0
# Beyond this many queries in flight on one connection, new ones fail fast
# rather than search a nearly full 16-bit ID space.
MAX_IN_FLIGHT = 4096


class ConnectionClosed(ConnectionError):
    """The TCP connection to the upstream closed before our answer arrived."""


class TcpExchange:
    """One query to the server: sent on the current connection (once it is
    open), answered, failed, or closed by the caller."""

    __slots__ = ("_upstream", "query", "_on_answer", "_on_error", "connection", "query_id", "retried")

    def __init__(self, upstream: TcpUpstream, query: UpstreamQuery, on_answer: Callable[[bytes], None],
                 on_error: Callable[[Exception], None]) -> None:
        self._upstream, self.query, self._on_answer, self._on_error = upstream, query, on_answer, on_error
        self.connection: _Connection | None = None    # where it is in flight
        self.query_id = -1
        self.retried = False

    def answered(self, wire: bytes) -> None:
        self.connection = None
        self._on_answer(wire)

    def failed(self, error: Exception) -> None:
        self.connection = None
        self._on_error(error)

    def connection_closed(self, connection: _Connection) -> None:
        """The connection closed with this query in flight."""
        self.connection = None
        if connection.answered and not self.retried:
            # The server closed a connection that had been working: try a fresh one once.
            self.retried = True
            self._upstream.send(self)
        else:
            self._on_error(ConnectionClosed("upstream closed the connection"))

    def close(self) -> None:
        """Stop waiting; no callback comes after this. A late answer is rejected."""
        if self.connection is not None:
            self.connection.forget(self.query_id)
            self.connection = None
        else:
            self._upstream.forget(self)


class _Connection(asyncio.Protocol):
    """One open TCP connection and the queries in flight on it."""

    def __init__(self, on_reject: Callable[[], None]) -> None:
        self._on_reject = on_reject
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, TcpExchange] = {}
        self._ids = RandomIds()
        self._received = bytearray()
        self._unsent: list[bytes] = []
        self._idle_timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self.closed = False
        self.answered = 0

    @classmethod
    async def open(cls, server: tuple[str, int], on_reject: Callable[[], None]) -> _Connection:
        loop = asyncio.get_running_loop()
        ip, port = server
        sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Connecting our own socket to a numeric address keeps name
            # resolution (and its thread pool) out of the loop.
            await loop.sock_connect(sock, (ip, port))
            _, connection = await loop.create_connection(lambda: cls(on_reject), sock=sock)
        except BaseException:
            sock.close()
            raise
        return connection

    def send(self, exchange: TcpExchange) -> None:
        """Put exchange's query on this connection; raises ConnectionError
        when it is closed or full."""
        if self.closed:
            raise ConnectionClosed("connection closed")
        if len(self._pending) >= MAX_IN_FLIGHT:
            raise ConnectionError(f"{MAX_IN_FLIGHT} queries already in flight")
        query_id = self._ids.next()
        while query_id in self._pending:
            query_id = self._ids.next()
        self._pending[query_id] = exchange
        exchange.connection, exchange.query_id = self, query_id
        self._disarm_idle_timer()
        wire = exchange.query.wire(query_id)
        if not self._unsent:
            self._loop.call_soon(self._write)
        self._unsent.append(len(wire).to_bytes(2, "big") + wire)

    def _write(self) -> None:
        """Everything asked in this turn of the loop, in one write."""
        if not self.closed:
            self._transport.write(b"".join(self._unsent))
        self._unsent.clear()

    def forget(self, query_id: int) -> None:
        self._pending.pop(query_id, None)
        self._arm_idle_timer()

    def connection_made(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._arm_idle_timer()

    def data_received(self, data: bytes) -> None:
        received = self._received
        received += data
        while len(received) >= 2:
            end = 2 + (received[0] << 8 | received[1])
            if len(received) < end:
                return
            wire = bytes(received[2:end])
            del received[:end]
            self._deliver(wire)

    def connection_lost(self, exc: Exception | None) -> None:
        self._shut()

    def _deliver(self, wire: bytes) -> None:
        query_id = int.from_bytes(wire[:2], "big") if len(wire) >= 2 else -1
        exchange = self._pending.get(query_id)
        if exchange is None:
            self._on_reject()       # not ours, or it came after we stopped waiting
            return
        try:
            exchange.query.check(wire, query_id)
        except Rejected:
            self._on_reject()
            return
        del self._pending[query_id]
        self.answered += 1
        self._arm_idle_timer()
        exchange.answered(wire)

    def _arm_idle_timer(self) -> None:
        if not self._pending and not self.closed and self._idle_timer is None:
            self._idle_timer = self._loop.call_later(IDLE_SECONDS, self._shut)

    def _disarm_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _shut(self) -> None:
        """Close the connection and fail (or retry) every query still waiting on it."""
        if self.closed:
            return
        self.closed = True
        self._disarm_idle_timer()
        if self._transport is not None:
            self._transport.close()
        pending, self._pending = self._pending, {}
        for exchange in pending.values():
            exchange.connection_closed(self)

    def close(self) -> None:
        self._shut()


class TcpUpstream:
    """The reused TCP connection to one server, (re)opened on demand."""

    def __init__(self, server: tuple[str, int], on_reject: Callable[[], None]) -> None:
        self.server = server
        self._on_reject = on_reject
        self._connection: _Connection | None = None
        self._opening: asyncio.Task | None = None
        self._waiting: list[TcpExchange] = []       # queries asked while the connection opens

    def ask(self, query: UpstreamQuery, on_answer: Callable[[bytes], None],
            on_error: Callable[[Exception], None]) -> TcpExchange:
        """Send `query` (after opening a connection if there is none); later
        on_answer(wire), or on_error(OSError) when the server cannot be
        reached or the connection fails, unless the exchange is closed
        first. on_error may be called before ask() returns."""
        exchange = TcpExchange(self, query, on_answer, on_error)
        self.send(exchange)
        return exchange

    def send(self, exchange: TcpExchange) -> None:
        connection = self._connection
        if connection is not None and not connection.closed:
            self._send_on(connection, exchange)
            return
        self._waiting.append(exchange)
        if self._opening is None:
            self._opening = asyncio.get_running_loop().create_task(self._open())

    @staticmethod
    def _send_on(connection: _Connection, exchange: TcpExchange) -> None:
        try:
            connection.send(exchange)
        except ConnectionError as e:
            exchange.failed(e)

    def forget(self, exchange: TcpExchange) -> None:
        if exchange in self._waiting:
            self._waiting.remove(exchange)

    async def _open(self) -> None:
        try:
            connection = await _Connection.open(self.server, self._on_reject)
        except OSError as e:
            waiting, self._waiting = self._waiting, []
            for exchange in waiting:
                exchange.failed(e)
            return
        finally:
            self._opening = None
        self._connection = connection
        waiting, self._waiting = self._waiting, []
        for exchange in waiting:
            # Straight onto this connection: one the server closed at once
            # fails these queries instead of opening another.
            self._send_on(connection, exchange)

    async def close(self) -> None:
        if self._opening is not None:
            self._opening.cancel()
            await asyncio.gather(self._opening, return_exceptions=True)
        if self._connection is not None:
            self._connection.close()
