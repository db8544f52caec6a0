"""Serving TCP: length-prefixed, pipelined queries answered as they
complete, bounded per connection and in number, drained at a message
boundary (FIN, or a hand-over to the replacement: worker/tcp_handoff.py)."""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass

from worker import wire
from worker.answer import Answerer
from worker.tcp_handoff import ConnectionSender

log = logging.getLogger(__name__)

# How soon a drain looks again at a connection whose answers are still being written.
HAND_RETRY = 0.005


@dataclass(frozen=True)
class TcpLimits:
    idle_timeout: float = 10.0        # RFC 7766 suggests seconds, not minutes
    max_connections: int = 512
    max_query: int = 4096             # a longer query is not a query we serve
    # A query must arrive whole within this many seconds of its first byte:
    # bytes dripped into an unfinished query do not keep a connection open.
    query_timeout: float = 3.0


class TcpServer:
    """One listening TCP socket and its open connections."""

    def __init__(self, sock: socket.socket, answerer: Answerer, limits: TcpLimits) -> None:
        self.sock = sock
        self.answerer = answerer
        self.limits = limits
        self.connections: set[TcpConnection] = set()
        self.refused = 0
        self.evicted = 0
        self.dropped_after_fin = 0      # segments that arrived after a drain's FIN
        self.server: asyncio.AbstractServer | None = None
        # Set while a replacement worker takes our open connections (worker/tcp_handoff.py):
        # a drain then hands each one over at a message boundary instead of closing it.
        self.handoff: ConnectionSender | None = None
        self.handed = 0
        self.adopting: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.server = await asyncio.get_running_loop().create_server(
            lambda: TcpConnection(self), sock=self.sock, backlog=1024)

    def close_listener(self) -> None:
        """Stop listening. shutdown() acts on the socket itself, not on our fd:
        the supervisor's duplicate would otherwise keep it in the reuseport
        group, taking connections nobody accepts; with tcp_migrate_req the
        kernel hands its queued connections to a peer listener."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self.server is not None:
            self.server.close()

    def make_room(self) -> bool:
        """All slots are taken: close the connection that has waited longest
        without an answer to send (idle, or slowest to finish its query), so
        slow or idle clients cannot lock out a new one. False when every
        connection has answers pending."""
        victim, oldest = None, None
        for conn in self.connections:
            since = conn.waiting_since()
            if since is not None and (oldest is None or since < oldest):
                victim, oldest = conn, since
        if victim is None:
            return False
        self.evicted += 1
        self.connections.discard(victim)
        victim.closing = True
        victim.transport.close()
        return True

    def stop_accepting(self) -> None:
        """Close our copy of a listener someone else keeps open (a shared one):
        its queued connections wait for another accept()er."""
        if self.server is not None:
            self.server.close()

    def adopt(self, sock: socket.socket, keepalive: bool) -> None:
        """Serve a connection a draining worker handed over, from the first
        byte it left unread."""
        def protocol() -> TcpConnection:
            conn = TcpConnection(self)
            conn.first = False
            conn.keepalive = keepalive
            return conn
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.connect_accepted_socket(protocol, sock=sock))
        self.adopting.add(task)
        task.add_done_callback(self.adopting.discard)

    async def finish(self, deadline: float) -> None:
        """Drain every connection (TcpConnection.drain); close what is left
        at `deadline` (time.monotonic())."""
        open_at_start = len(self.connections)
        for conn in list(self.connections):
            conn.drain()
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        late = len(self.connections)
        for conn in list(self.connections):
            conn.transport.close()
        log.info("tcp drained: %d connections (%d handed to our replacement), %d still open at the deadline, "
                 "%d segments after our FIN", open_at_start, self.handed, late, self.dropped_after_fin)


class TcpConnection(asyncio.Protocol):
    """A client connection: length-prefixed queries, answered as they complete."""

    def __init__(self, server: TcpServer) -> None:
        self.server = server
        self.buf = bytearray()
        self.pending = 0
        self.closing = False
        self.draining = False       # answer what arrives, FIN at the next message boundary with nothing pending
        self.handing = False        # draining, to hand the connection over instead of the FIN
        self.first = True           # no whole query read yet
        self.fin_sent = False       # our side is shut: what still arrives is read and dropped
        self.keepalive = False      # the client sent edns-tcp-keepalive (RFC 7828)
        self.client_eof = False
        self.transport: asyncio.Transport | None = None
        self.opened = self.last_active = time.monotonic()   # last: the last whole query, or the start
        self.partial_since: float | None = None    # the first byte of an unfinished query
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        server = self.server
        if len(server.connections) >= server.limits.max_connections and not server.make_room():
            server.refused += 1
            transport.abort()
            return
        server.connections.add(self)
        # Checked at least every query_timeout: an unfinished query is caught
        # without rescheduling the timer as bytes arrive.
        self.timer = asyncio.get_running_loop().call_later(
            min(server.limits.idle_timeout, server.limits.query_timeout), self._check_idle)

    def waiting_since(self) -> float | None:
        """Since when this connection has held its slot without anything to
        answer (idle, or an unfinished query); None while answers are pending."""
        if self.pending or self.transport.is_closing():
            return None
        return self.last_active if self.partial_since is None else self.partial_since

    def connection_lost(self, exc) -> None:
        self.server.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()

    def pause_writing(self) -> None:
        # A client that does not read its answers stops being read from.
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            if self.fin_sent:
                self.server.dropped_after_fin += 1      # the client saw our FIN after sending it
            return
        now = time.monotonic()
        buf = self.buf
        if not buf:
            self.partial_since = now
        buf += data
        answer = self.server.answerer.answer
        while len(buf) >= 2:
            length = buf[0] << 8 | buf[1]
            if length > self.server.limits.max_query:
                self._oversized(length)
                return
            if len(buf) < 2 + length:
                return
            query = bytes(buf[2:2 + length])
            del buf[:2 + length]
            if self.first:      # did the client ask for keepalive?
                self.first = False
                self.keepalive = wire.asks_tcp_keepalive(query)
            self.last_active = now
            self.partial_since = now if buf else None
            reply = answer(query, False, self._send_later, None, now)
            if reply:
                self._write(reply)
            elif reply is not None:
                self.pending += 1
        if self.draining:
            self._end_when_done()

    def eof_received(self) -> bool:
        """The client shut its side: answer what is pending, then close."""
        self.client_eof = True
        return bool(self.pending)

    def _oversized(self, length: int) -> None:
        """A length beyond any query: FORMERR once the header is here (the
        framing cannot be trusted after it), then close."""
        if len(self.buf) < 14:
            return
        self.server.answerer.stats.malformed += 1
        self.server.answerer.stats.formerr += 1
        self._write(wire.error_reply(bytes(self.buf[2:14]), wire.RCODE_FORMERR))
        self.closing = True
        self.transport.close()

    def _write(self, reply: bytes) -> None:
        if not self.transport.is_closing() and not self.fin_sent:
            if self.draining and self.keepalive and not self.handing:
                reply = wire.with_keepalive_close(reply)
            self.transport.write(wire.U16.pack(len(reply)) + reply)

    def _send_later(self, reply: bytes, _dest) -> None:
        self.pending -= 1
        self._write(reply)
        if self.pending == 0:
            if self.draining:
                self._end_when_done()
            elif self.closing or self.client_eof:
                self.transport.close()

    def finish_when_idle(self) -> None:
        self.closing = True
        if self.pending == 0:
            self.transport.close()

    def drain(self) -> None:
        """The worker is stopping: answer every query read so far and any
        that arrives before we are done (RFC 7828 keepalive timeout 0 in those
        answers, for a client that sent the option), then shut our side (FIN)
        at a message boundary with nothing pending. What arrives after that
        is read and dropped, so closing never resets the connection. With a
        replacement to take it (TcpServer.handoff), the connection is handed
        over at that boundary instead, and the client sees no close at all."""
        if self.closing or self.transport.is_closing():
            return
        self.draining = True
        self.handing = self.server.handoff is not None and not self.client_eof
        self._end_when_done()

    def _end_when_done(self) -> None:
        if self.handing and not self.client_eof:
            self._hand_when_done()
        else:
            self._fin_when_done()

    def _hand_when_done(self) -> None:
        """At a message boundary, with no answer pending or unwritten: stop
        reading and send the socket to the replacement, whose reads go on
        from the first byte we left in the socket's queue."""
        if self.pending or self.buf or self.closing or not self.handing:
            return
        transport = self.transport
        if transport.get_write_buffer_size():
            # Our answers must be in the socket before the replacement's can be.
            asyncio.get_running_loop().call_later(HAND_RETRY, self._hand_when_done)
            return
        transport.pause_reading()
        sock = transport.get_extra_info("socket")
        if sock is None or not self.server.handoff.send(sock, self.keepalive):
            self.handing = False        # a FIN after all
            transport.resume_reading()
            self._fin_when_done()
            return
        self.server.handed += 1
        self.closing = True
        # Closes our fd only: the socket lives on in the message, then in the replacement.
        transport.abort()

    def _fin_when_done(self) -> None:
        if self.pending or self.buf or self.fin_sent:
            return
        self.fin_sent = self.closing = True
        if self.client_eof:
            self.transport.close()
        else:
            self.transport.write_eof()      # after the queued answers; the client's FIN then closes

    def _check_idle(self) -> None:
        """Close a connection idle for idle_timeout, or one whose unfinished
        query is older than query_timeout (once its answers are sent)."""
        now = time.monotonic()
        limits = self.server.limits
        if self.partial_since is not None:
            left = self.partial_since + limits.query_timeout - now
            if left <= 0:
                self.finish_when_idle()
                return
        else:
            left = self.last_active + limits.idle_timeout - now
            if self.pending == 0 and left <= 0:
                self.transport.close()
                return
            if self.pending:
                left = limits.idle_timeout
        self.timer = asyncio.get_running_loop().call_later(min(max(left, 0.05), limits.query_timeout),
                                                           self._check_idle)
