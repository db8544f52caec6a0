"""Serving sockets: UDP (a raw non-blocking receive loop on the event loop)
and the supervisor's probe datagrams. TCP: worker/tcp_server.py."""
from __future__ import annotations

import asyncio
import logging
import socket
import time

from contract.endpoint import steer_away
from worker import mmsg
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
