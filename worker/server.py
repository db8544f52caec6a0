"""Serving sockets: UDP (a raw non-blocking receive loop on the event loop),
TCP (length-prefixed, pipelined) and the supervisor's probe datagrams."""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass

from contract.endpoint import steer_away
from worker import mmsg, wire
from worker.answer import Answerer

log = logging.getLogger(__name__)

# Datagrams handled per wake-up before other sockets get their turn.
UDP_BATCH = 64
# Queries are small; a 64 KiB receive buffer costs an allocation (and page
# faults) per datagram. Longer datagrams arrive cut and get FORMERR, like a
# TCP query over TcpLimits.max_query.
UDP_RECV_SIZE = 4096


def udp_server(sock: socket.socket, answerer: Answerer) -> UdpServer:
    """The fastest server this platform allows for a bound UDP socket."""
    try:
        mmsg.probe()
    except mmsg.BatchUnavailable:
        return UdpServer(sock, answerer)
    return BatchedUdpServer(sock, answerer)


class UdpServer:
    """Answers the datagrams of one bound UDP socket, one system call per
    datagram (the portable form; see BatchedUdpServer)."""

    def __init__(self, sock: socket.socket, answerer: Answerer) -> None:
        self.sock = sock
        self.answerer = answerer
        self.inflight = 0
        self.loop = asyncio.get_running_loop()

    def start(self) -> None:
        self.loop.add_reader(self.sock.fileno(), self.read_batch)

    def read_batch(self) -> bool:
        """Answer up to UDP_BATCH queued datagrams; True when the queue is empty."""
        recv, sendto, answer = self.sock.recvfrom, self.sock.sendto, self.answerer.answer
        exact_reply = self.answerer.exact_reply
        later = self._send_later
        now = time.monotonic()    # one clock read per batch: a batch takes microseconds
        for _ in range(UDP_BATCH):
            try:
                data, addr = recv(UDP_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                continue    # e.g. a queued ICMP error; the next datagram is fine
            reply = exact_reply(data, now) or answer(data, True, later, addr, now)
            if reply:
                try:
                    sendto(reply, addr)
                except OSError:
                    pass    # full send buffer or unreachable client: UDP may drop
            elif reply is not None:
                self.inflight += 1
        return False

    def _send_later(self, reply: bytes, addr) -> None:
        self.inflight -= 1
        try:
            self.sock.sendto(reply, addr)
        except OSError:
            pass

    def steer_away(self) -> None:
        """Out of the reuseport group, the queued datagrams kept (contract.endpoint.steer_away)."""
        steer_away(self.sock)

    def drain_queue(self) -> None:
        """Answer everything already queued (after steer_away nothing new comes)."""
        while not self.read_batch():
            pass

    def stop(self) -> None:
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())

    def close(self) -> None:
        self.stop()
        self.sock.close()


class BatchedUdpServer(UdpServer):
    """UdpServer reading and answering a batch per system call each way
    (worker/mmsg.py): the hit path's interpreter time drops by about a third."""

    def __init__(self, sock: socket.socket, answerer: Answerer) -> None:
        super().__init__(sock, answerer)
        self.batch = mmsg.DatagramBatch(sock, UDP_BATCH, UDP_RECV_SIZE)
        self.late = mmsg.LateReplies(sock, UDP_BATCH)

    def read_batch(self) -> bool:
        batch = self.batch
        n = batch.receive()
        if not n:
            return True
        exact_body, answer, later = self.answerer.exact_body, self.answerer.answer, self._send_later
        queue = batch.queue
        now = time.monotonic()
        for i, key in enumerate(batch.keys(n)):
            reply = exact_body(key, now)
            if reply is None:
                reply = answer(batch.message(i), True, later, batch.name(i), now)
                if not reply:
                    if reply is not None:
                        self.inflight += 1
                    batch.skip(i)
                    continue
            queue(i, reply)     # every reply carries its query's ID: the batch sends it from there
        batch.flush(n)
        return n < UDP_BATCH

    def _send_later(self, reply: bytes, name: bytes) -> None:
        self.inflight -= 1
        if self.late.add(reply, name):
            self.loop.call_soon(self.late.flush)

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.late.flush()       # before the fd can be reused
        super().close()


class ProbeServer(UdpServer):
    """The probe channel: an AF_UNIX datagram socketpair end, answered through
    the same answer() path as UDP clients (replies go to the peer)."""

    def read_batch(self) -> bool:
        for _ in range(UDP_BATCH):
            try:
                data = self.sock.recv(UDP_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return True
            reply = self.answerer.answer(data, True, self._send_later, None, time.monotonic())
            if reply:
                self._send(reply)
            elif reply is not None:
                self.inflight += 1
        return False

    def _send_later(self, reply: bytes, _addr) -> None:
        self.inflight -= 1
        self._send(reply)

    def _send(self, reply: bytes) -> None:
        try:
            self.sock.send(reply)
        except OSError:
            pass


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
        log.info("tcp drained: %d connections, %d still open at the deadline, %d segments after our FIN",
                 open_at_start, late, self.dropped_after_fin)


class TcpConnection(asyncio.Protocol):
    """A client connection: length-prefixed queries, answered as they complete."""

    def __init__(self, server: TcpServer) -> None:
        self.server = server
        self.buf = bytearray()
        self.pending = 0
        self.closing = False
        self.draining = False       # answer what arrives, FIN at the next message boundary with nothing pending
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
            if self.last_active == self.opened:     # the first query: did the client ask for keepalive?
                self.keepalive = wire.asks_tcp_keepalive(query)
            self.last_active = now
            self.partial_since = now if buf else None
            reply = answer(query, False, self._send_later, None, now)
            if reply:
                self._write(reply)
            elif reply is not None:
                self.pending += 1
        if self.draining:
            self._fin_when_done()

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
            if self.draining and self.keepalive:
                reply = wire.with_keepalive_close(reply)
            self.transport.write(wire.U16.pack(len(reply)) + reply)

    def _send_later(self, reply: bytes, _dest) -> None:
        self.pending -= 1
        self._write(reply)
        if self.pending == 0:
            if self.draining:
                self._fin_when_done()
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
        is read and dropped, so closing never resets the connection."""
        if self.closing or self.transport.is_closing():
            return
        self.draining = True
        self._fin_when_done()

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
