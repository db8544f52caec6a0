"""Queries to one upstream server over UDP, from a small pool of sockets.

Every socket is connect()ed to the server on a port the kernel picks at
random (Linux randomises ephemeral UDP ports), and every query gets a random
ID and 0x20 letter case, so a blind forger must guess port, ID and case
together (RFC 5452). Connecting has two more effects we want: the kernel
drops datagrams from any other address or port before they reach us, and an
ICMP "port unreachable" from a server that is down arrives as
ConnectionRefusedError, so failover starts at once instead of after a
timeout.

The pool (dnsmasq's scheme): POOL_SLOTS sockets per server, queries spread
over them in turn; a socket carries at most ROTATE_AFTER queries, then leaves
the pool for a new random port, and a pooled socket with nothing in flight
for IDLE_CLOSE closes. A new socket per query (unbound's scheme, ours
before) cost socket(), connect(), an epoll registration and close() on every
miss: ~35 us of a lone miss's ~165 (perf stat task-clock at 2,000 misses/s,
bench/bench_cache.py's latency run), more than a fifth of its CPU and of
its latency. The trade-off, written down: guessing stays as hard per forged
datagram (~15 bits of port, 16 of ID, one per letter of case); what grows is
how long a port stays open: up to ROTATE_AFTER queries, with less than
IDLE_CLOSE between two of them. An attacker who learns which ports are
open (the SAD DNS ICMP side channel, closed in Linux 5.10) can aim up to
that many queries' worth of ID guesses at one port instead of one query's;
between queries a port stays open with nothing in flight on it for a
forgery to match. Probing a connected socket needs the server's address
spoofed as source, since to anyone else it looks closed.

The sockets are plain non-blocking ones and results are delivered through
callbacks: an asyncio datagram endpoint and a Task per query cost more CPU
than the rest of a cache miss. They are watched through one epoll set of our
own (SocketWatch), itself one fd on the event loop: uvloop's
add_reader/remove_reader make and free a poll handle per socket (~4 us),
epoll.register is one system call, and close() takes the socket out.
"""
from __future__ import annotations

import asyncio
import logging
import resource
import select
import socket
import time
from typing import Callable

from worker import wire
from worker.upstream_query import CaseMismatch, RandomCase, RandomIds, Rejected, UpstreamQuery

# An answer in other letter case than asked is a forgery that guessed port
# and ID, or comes from a server that does not echo 0x20. The real server's
# answer in our case is waited for this long; then the query is asked again
# in lower case, and a server that needed that this many times in a row is
# asked in lower case from then on (unbound's caps fallback).
CASE_WAIT = 0.3
CASE_MISMATCHES_BEFORE_FALLBACK = 3

log = logging.getLogger(__name__)

# Unbound's default outgoing-range: UDP sockets per thread. Here it bounds
# queries in flight, which bounds sockets open (at most one per query).
MAX_SOCKETS = 4096
# Sockets per server that new queries are spread over in turn.
POOL_SLOTS = 8
# Queries one socket carries before it leaves the pool for a new port.
ROTATE_AFTER = 100
# Seconds a pooled socket with nothing in flight waits for the next query before it closes.
IDLE_CLOSE = 1.0
# The largest UDP payload; servers may send more than the size we offered.
MAX_DATAGRAM = 65535
# Ready sockets taken from the epoll set per poll, and polls per wake-up at
# most (the event loop's other readers get their turn between wake-ups).
READY_BATCH = 64
READY_ROUNDS = 64


def socket_budget() -> int:
    """How many UDP queries may be in flight upstream at once (and so at
    most how many sockets are open): half the file descriptor limit (the
    rest serve clients, TCP and the supervisor's channels), at most
    MAX_SOCKETS."""
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
        # A callback reads one answer (PooledSocket._readable): poll again
        # while sockets were ready, so what is queued is all taken now (an
        # empty poll costs less than an EAGAIN per socket). One poll per
        # wake-up would answer at most one miss per pooled socket (8) per turn
        # of the event loop, fewer than one worker takes in during a restart.
        # After a round with one socket ready (a lone answer) we return
        # instead: the replies it queued go out a poll sooner, and a socket
        # with more queued keeps the set readable, so the loop calls us again.
        callbacks, epoll = self._callbacks, self._epoll
        for _ in range(READY_ROUNDS):
            ready = epoll.poll(0, READY_BATCH)
            for fd, _events in ready:
                # An fd closed by an earlier callback of this batch has no
                # callback, or belongs to a new socket: reading it finds nothing.
                callback = callbacks.get(fd)
                if callback is not None:
                    callback()
            if len(ready) < 2:
                return

    def close(self) -> None:
        if self._epoll is not None:
            self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None


class UdpUpstream:
    """One upstream server reached over UDP: its socket pool, IDs and 0x20 state."""

    def __init__(self, server: tuple[str, int], on_reject: Callable[[], None], sockets: SocketWatch) -> None:
        self.server = server
        self.family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        self.on_reject = on_reject
        self.sockets = sockets
        self.ids = RandomIds()
        self.case = RandomCase()
        self.use_0x20 = True
        self.case_mismatches = 0        # in a row; reset by an answer in our case
        self.pool: list[PooledSocket | None] = [None] * POOL_SLOTS
        self._next_slot = 0
        self._idle_sweep: asyncio.TimerHandle | None = None   # scheduled while a pooled socket is idle

    def ask(self, query: UpstreamQuery, on_answer: Callable[[bytes], None],
            on_error: Callable[[Exception], None]) -> UdpExchange:
        """Send `query` now; later on_answer(wire) with the first datagram
        that answers it, or on_error(OSError), unless the exchange is closed
        first. Raises OSError if it cannot be sent."""
        slot = self._next_slot
        self._next_slot = (slot + 1) % POOL_SLOTS
        pooled = self.pool[slot]
        if pooled is None:
            pooled = self.pool[slot] = PooledSocket(self, slot)
        name = self.case.mix(query.qname) if self.use_0x20 else None
        exchange = UdpExchange(pooled, query, pooled.new_id(), name, on_answer, on_error)
        pooled.send(exchange, query.wire(exchange.query_id, name))
        return exchange

    def went_idle(self) -> None:
        """A pooled socket has nothing in flight: close it after IDLE_CLOSE unless it is used again."""
        if self._idle_sweep is None:
            self._idle_sweep = asyncio.get_running_loop().call_later(IDLE_CLOSE, self._close_idle)

    def _close_idle(self) -> None:
        self._idle_sweep = None
        now, waiting = time.monotonic(), False
        for pooled in self.pool:
            if pooled is not None and not pooled.pending:
                if now - pooled.idle_since >= IDLE_CLOSE:
                    pooled.close()
                else:
                    waiting = True
        if waiting:
            self.went_idle()

    def close(self) -> None:
        """Close the pooled sockets (with what is in flight on them) and stop the sweep."""
        if self._idle_sweep is not None:
            self._idle_sweep.cancel()
            self._idle_sweep = None
        for pooled in self.pool:
            if pooled is not None:
                pooled.close()


class PooledSocket:
    """One connected socket shared by the queries in flight on it, which it
    tells apart by ID."""

    __slots__ = ("upstream", "slot", "sock", "fd", "pending", "late", "uses", "idle_since")

    def __init__(self, upstream: UdpUpstream, slot: int) -> None:
        # SocketType, the C socket: socket.socket's Python __init__ and close()
        # (makefile bookkeeping we never use) were ~3% of a lone miss.
        sock = socket.SocketType(upstream.family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        try:
            # A numeric address: connect() resolves nothing and never blocks.
            # Connected: the kernel delivers only datagrams from the server's
            # address and port to this socket (what unbound's udp-connect does),
            # so _readable() need not ask where each one came from.
            sock.connect(upstream.server)
        except BaseException:
            sock.close()
            raise
        self.upstream, self.slot, self.sock, self.fd = upstream, slot, sock, sock.fileno()
        self.pending: dict[int, UdpExchange] = {}
        # IDs of queries that ended (answered elsewhere, timed out) while the
        # socket stayed open: their answers are expected, not forgeries.
        self.late: set[int] = set()
        self.uses = 0
        self.idle_since = 0.0       # time.monotonic() when the last query in flight ended
        upstream.sockets.watch(self.fd, self._readable)

    def new_id(self) -> int:
        """A random ID that no query on this socket has had."""
        ids = self.upstream.ids
        query_id = ids.next()
        while query_id in self.pending or query_id in self.late:
            query_id = ids.next()
        return query_id

    def send(self, exchange: UdpExchange, data: bytes) -> None:
        """Send `data` and wait for the answer to exchange.query_id. Raises
        OSError; the exchange is then not in flight."""
        try:
            self.sock.send(data)
        except OSError as e:
            if isinstance(e, ConnectionRefusedError):
                # An earlier datagram's ICMP error, reported on this send:
                # the server's port is closed for every query on the socket.
                self.fail_all(e)
            elif not self.pending:
                self.close()
            raise
        self.pending[exchange.query_id] = exchange
        self.uses += 1
        if self.uses >= ROTATE_AFTER:
            self._leave_pool()

    def release(self, query_id: int) -> None:
        """The query with this ID ends. The last one closes a socket that left
        the pool; a pooled one waits IDLE_CLOSE for the next query."""
        pending = self.pending
        if pending.pop(query_id, None) is None:
            return
        if not pending and self.slot < 0:
            self.close()
            return
        self.late.add(query_id)
        if not pending:
            self.idle_since = time.monotonic()
            self.upstream.went_idle()

    def fail_all(self, error: OSError) -> None:
        exchanges = list(self.pending.values())
        self.close()
        for exchange in exchanges:
            exchange.failed(error)

    def _leave_pool(self) -> None:
        pool = self.upstream.pool
        if self.slot >= 0 and pool[self.slot] is self:
            pool[self.slot] = None
        self.slot = -1

    def close(self) -> None:
        """Idempotent; the queries still pending get no callback."""
        if self.fd < 0:
            return
        self._leave_pool()
        self.upstream.sockets.unwatch(self.fd)
        self.sock.close()
        self.fd = -1
        self.pending.clear()
        self.late.clear()

    def _readable(self) -> None:
        # One answer per readiness: the epoll set is level-triggered, so a
        # socket with more queued is ready again at SocketWatch's next poll.
        # Reading on until EAGAIN cost an exception per socket per wake-up
        # (~4% of a miss). What answers nothing (forgeries, late answers) is
        # read on past, so a flood of it is drained at once.
        upstream = self.upstream
        while self.fd >= 0:         # an answer's callback may end the last query
            try:
                # recv, not recvfrom: the socket is connected (see __init__),
                # so every datagram is from the server's address and port.
                data = self.sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:     # e.g. ConnectionRefusedError: ICMP port unreachable
                self.fail_all(e)
                return
            if len(data) >= wire.HEADER.size:
                query_id = data[0] << 8 | data[1]
                exchange = self.pending.get(query_id)
                if exchange is not None:
                    exchange.received(data)
                    return
                if query_id in self.late:
                    continue
            upstream.on_reject()


class UdpExchange:
    """One query in flight on a pooled socket, waiting for its answer."""

    __slots__ = ("_pooled", "query_id", "_query", "_name", "_on_answer", "_on_error", "_case_timer")

    def __init__(self, pooled: PooledSocket, query: UpstreamQuery, query_id: int, name: bytes | None,
                 on_answer: Callable[[bytes], None], on_error: Callable[[Exception], None]) -> None:
        self._pooled: PooledSocket | None = pooled
        self._query, self.query_id = query, query_id
        self._name = name               # the 0x20 name sent; None: asked in lower case
        self._case_timer: asyncio.TimerHandle | None = None
        self._on_answer, self._on_error = on_answer, on_error

    def received(self, data: bytes) -> None:
        """A datagram from the server with our ID: take it if it answers us."""
        upstream = self._pooled.upstream
        try:
            self._query.check(data, self.query_id, self._name)
        except CaseMismatch:
            upstream.on_reject()
            if self._case_timer is None:
                self._case_timer = asyncio.get_running_loop().call_later(CASE_WAIT, self._reask_in_lower_case)
            return
        except Rejected:
            upstream.on_reject()
            return
        if self._name is not None:
            upstream.case_mismatches = 0
        self.close()
        self._on_answer(data)

    def failed(self, error: OSError) -> None:
        self.close()
        self._on_error(error)

    def _reask_in_lower_case(self) -> None:
        """Only answers in other case came within CASE_WAIT: ask again, a new
        ID, in lower case, and take only that answer; after
        CASE_MISMATCHES_BEFORE_FALLBACK in a row the server is asked without
        0x20 from then on."""
        self._case_timer = None
        pooled = self._pooled
        upstream = pooled.upstream
        upstream.case_mismatches += 1
        if upstream.case_mismatches >= CASE_MISMATCHES_BEFORE_FALLBACK and upstream.use_0x20:
            upstream.use_0x20 = False
            log.warning("upstream %s:%d does not echo the letter case of questions: 0x20 off for it",
                        *upstream.server[:2])
        # The old ID is not counted late: an answer to it is still rejected.
        del pooled.pending[self.query_id]
        self.query_id = pooled.new_id()
        self._name = None
        try:
            pooled.send(self, self._query.wire(self.query_id))
        except OSError as e:
            self._pooled = None
            self._on_error(e)

    def close(self) -> None:
        """Stop waiting; no callback comes after this. Idempotent."""
        if self._case_timer is not None:
            self._case_timer.cancel()
            self._case_timer = None
        pooled = self._pooled
        if pooled is not None:
            self._pooled = None
            pooled.release(self.query_id)
