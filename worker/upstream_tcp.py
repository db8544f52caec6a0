"""Queries to one upstream server over TCP, on one reused connection.

Queries are pipelined (RFC 7766 section 6.2.1): each is written as soon as it
is asked, answers are matched by ID as they arrive in any order. A
connection the server closed is replaced on the next query; a query that
was in flight on a connection that closed under it is retried once on a new
one (servers close idle connections, and the close can cross our write).
Our side closes the connection after IDLE_SECONDS without queries.
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


class _Connection:
    """One open TCP connection and the queries in flight on it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_reject: Callable[[], None]) -> None:
        self._reader, self._writer, self._on_reject = reader, writer, on_reject
        self._pending: dict[int, tuple[UpstreamQuery, asyncio.Future[bytes]]] = {}
        self._ids = RandomIds()
        self._idle_timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.answered = 0
        self._read_task = asyncio.get_running_loop().create_task(self._read_loop())
        self._arm_idle_timer()

    @classmethod
    async def open(cls, server: tuple[str, int], on_reject: Callable[[], None]) -> "_Connection":
        loop = asyncio.get_running_loop()
        ip, port = server
        sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Connecting our own socket to a numeric address keeps name
            # resolution (and its thread pool) out of the loop.
            await loop.sock_connect(sock, (ip, port))
            reader, writer = await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
        return cls(reader, writer, on_reject)

    async def exchange(self, query: UpstreamQuery) -> bytes:
        if self.closed:
            raise ConnectionClosed("connection closed")
        if len(self._pending) >= MAX_IN_FLIGHT:
            raise ConnectionError(f"{MAX_IN_FLIGHT} queries already in flight")
        query_id = self._ids.next()
        while query_id in self._pending:
            query_id = self._ids.next()
        done = asyncio.get_running_loop().create_future()
        self._pending[query_id] = (query, done)
        self._disarm_idle_timer()
        try:
            wire = query.wire(query_id)
            self._writer.write(len(wire).to_bytes(2, "big") + wire)
            await self._writer.drain()
            return await done
        except OSError as e:
            raise ConnectionClosed(str(e)) from e
        finally:
            self._pending.pop(query_id, None)
            self._arm_idle_timer()

    async def _read_loop(self) -> None:
        try:
            while True:
                length = int.from_bytes(await self._reader.readexactly(2), "big")
                self._deliver(await self._reader.readexactly(length))
        except (asyncio.IncompleteReadError, OSError):
            pass
        finally:
            self._shut()

    def _deliver(self, wire: bytes) -> None:
        entry = self._pending.get(int.from_bytes(wire[:2], "big")) if len(wire) >= 2 else None
        if entry is None or entry[1].done():
            self._on_reject()
            return
        query, done = entry
        try:
            query.check(wire, int.from_bytes(wire[:2], "big"))
        except Rejected:
            self._on_reject()
            return
        self.answered += 1
        done.set_result(wire)

    def _arm_idle_timer(self) -> None:
        if not self._pending and not self.closed and self._idle_timer is None:
            self._idle_timer = asyncio.get_running_loop().call_later(IDLE_SECONDS, self._shut)

    def _disarm_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _shut(self) -> None:
        """Close the connection and fail every query still waiting on it."""
        if self.closed:
            return
        self.closed = True
        self._disarm_idle_timer()
        self._writer.close()
        for _, done in self._pending.values():
            if not done.done():
                done.set_exception(ConnectionClosed("upstream closed the connection"))
        if self._read_task is not asyncio.current_task():
            self._read_task.cancel()

    async def close(self) -> None:
        self._shut()
        await asyncio.gather(self._read_task, return_exceptions=True)


class TcpUpstream:
    """The reused TCP connection to one server, (re)opened on demand."""

    def __init__(self, server: tuple[str, int], on_reject: Callable[[], None]) -> None:
        self.server = server
        self._on_reject = on_reject
        self._connection: _Connection | None = None
        self._connect_lock = asyncio.Lock()

    async def _current(self) -> _Connection:
        async with self._connect_lock:
            if self._connection is None or self._connection.closed:
                self._connection = await _Connection.open(self.server, self._on_reject)
            return self._connection

    async def exchange(self, query: UpstreamQuery) -> bytes:
        """Send `query` and wait (until cancelled) for its answer.
        Raises OSError when the server cannot be reached."""
        connection = await self._current()
        try:
            return await connection.exchange(query)
        except ConnectionClosed:
            if not connection.answered:
                raise
        # The server closed a connection that had been working: try a fresh one once.
        return await (await self._current()).exchange(query)

    @property
    def connected(self) -> bool:
        return self._connection is not None and not self._connection.closed

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
