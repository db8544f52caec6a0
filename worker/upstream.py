"""Forwarding cache misses to the upstream servers of the query's zone.

The zone is the longest configured suffix of the query name. Its servers are
tried in order, with servers that failed recently moved to the back. The
zone's timeout is shared out: with n servers not yet asked, the next is
asked as well after (time left)/(n + 1) without an answer, and so on, and any of the servers asked may
still answer until the zone's timeout runs out. A refused or unreachable
server hands over at once. So the client gets an answer or a failure
(its SERVFAIL) within `timeout`, never silence.

Over UDP, once every server has been asked, the ones still silent are asked
again (new socket, new ID) on the same schedule, up to ASK_ROUNDS times in
all: one lost datagram must not cost the client a SERVFAIL, and a client's
own retry cannot help, since it joins the miss already in flight.

Once a server has answered, its share is cut to its retransmission timeout
when that is shorter (ServerStats.rto(): srtt + 4 x rttvar, at least 50 ms,
doubled per round and per recent silence, as unbound does): a lost datagram
to a server 1 ms away costs its clients ~50 ms, not half the zone's timeout.
A server is still only counted as failed when silent for its whole share.

A miss is a small state machine (_Race) driven by callbacks: its UDP
sockets' readers or its TCP connection's, and one wake-up (worker/wakeups.py:
no event-loop timer for a miss that ends early). No Task or Future is made.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Sequence

from worker import wire
from worker.config import UpstreamZone, format_server, zone_labels
from worker.upstream_query import UpstreamQuery
from worker.upstream_stats import ServerStats, UnwantedReplies
from worker.upstream_tcp import TcpExchange, TcpUpstream
from worker.upstream_server import UpstreamServer, failover_order
from worker.upstream_udp import SocketWatch, UdpExchange, UdpUpstream, socket_budget
from worker.wakeups import Wakeups

log = logging.getLogger(__name__)

# Times a silent server is asked for one query over UDP (the first ask included).
ASK_ROUNDS = 3
# No repeated ask with less than this left before the zone's timeout.
MIN_ASK_LEFT = 0.25
# Errors that say this host ran short of something, not that the server failed
# (EAGAIN: a send buffer full; the socket is sent on without waiting).
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM,
                          errno.EADDRNOTAVAIL, errno.EAGAIN})

# forward()'s callback: the answer's wire, or None when no server gave a usable one in time.
Done = Callable[[bytes | None], None]


class UpstreamError(Exception):
    """No upstream server gave a usable answer in time."""


class _Attempt:
    """One server being asked for one miss, and when the next server should
    be asked too."""

    __slots__ = ("race", "server", "hand_over_at", "sent_at", "over_tcp", "finished", "queued",
                 "exchange", "tcp")

    def __init__(self, race: _Race, server: UpstreamServer, hand_over_at: float) -> None:
        self.race, self.server, self.hand_over_at = race, server, hand_over_at
        self.sent_at: float | None = None       # None while waiting for a UDP socket slot
        self.over_tcp = False                   # TCP (force_tcp, or a retry after TC=1): never re-asked
        self.finished = False                   # answered or failed (not: cancelled)
        self.queued = False                     # waiting for a UDP socket slot
        self.exchange: UdpExchange | None = None
        self.tcp: TcpExchange | None = None

    def sending(self) -> None:
        self.sent_at = time.monotonic()
        self.server.stats.queries += 1

    def answered(self, data: bytes) -> None:
        server = self.server
        server.stats.answered(time.monotonic() - self.sent_at)
        server.failed_at = None
        self.race.attempt_answered(self, data)

    # The exchanges' callbacks: bound methods, not a closure made per query.
    def udp_answered(self, data: bytes) -> None:
        self.exchange = None
        forwarder = self.race.forwarder
        forwarder.udp_closed()
        if data[2] & wire.FLAG_TC:
            self.over_tcp = True
            forwarder.send_tcp(self, self.race.query)
        else:
            self.answered(data)

    def udp_failed(self, error: OSError) -> None:
        self.exchange = None
        self.race.forwarder.udp_closed()
        self.failed(error)

    def tcp_answered(self, data: bytes) -> None:
        self.tcp = None
        self.answered(data)

    def tcp_failed(self, error: Exception) -> None:
        self.tcp = None
        self.failed(error)

    def failed(self, error: BaseException) -> None:
        if isinstance(error, OSError) and self.sent_at is not None and error.errno not in LOCAL_ERRNOS:
            self.server.failed()
        self.race.attempt_failed(self)


class _Race:
    """One miss on its way upstream: its zone's servers asked on the
    schedule in this module's docstring until one answers or the zone's
    timeout passes; then done(answer or None), exactly once."""

    __slots__ = ("forwarder", "query", "zone", "done", "deadline", "waiting", "attempts", "running",
                 "hand_over_at", "rounds", "timer", "wake_at", "over", "stepping", "starting")

    def __init__(self, forwarder: Forwarder, query: UpstreamQuery, zone: UpstreamZone,
                 servers: Sequence[UpstreamServer], done: Done) -> None:
        now = time.monotonic()
        self.forwarder, self.query, self.zone, self.done = forwarder, query, zone, done
        self.deadline = now + zone.timeout
        self.waiting = list(servers) if len(servers) == 1 else failover_order(servers, now)
        self.attempts: list[_Attempt] = []
        self.running = 0                    # attempts neither finished nor cancelled
        self.hand_over_at = now
        self.rounds = 1 if not zone.force_tcp else ASK_ROUNDS   # TCP does not lose a query
        # The next wake-up: forwarder.wakeups (worker/wakeups.py) arms `timer`, or holds it for `wake_at`.
        self.timer: asyncio.TimerHandle | None = None
        self.wake_at = 0.0
        self.over = False
        self.stepping = False   # in _step(): an attempt failing at once is counted there, not stepped again
        self.starting = False   # True while ask() has not returned

    def start(self) -> None:
        self.starting = True
        try:
            self._step()
        finally:
            self.starting = False

    def _step(self) -> None:
        """Ask whoever is due, then sleep until the next thing is due."""
        self.stepping = True
        try:
            while True:
                now = time.monotonic()
                if now >= self.deadline:
                    return self._end(None)
                waiting = self.waiting
                if not waiting and self.running and now >= self.hand_over_at and self.rounds < ASK_ROUNDS:
                    self.rounds += 1
                    # Only asks that went out and still wait on UDP; none so late
                    # that an answer could not come back in time.
                    if self.deadline - now >= MIN_ASK_LEFT:
                        for attempt in self.attempts:
                            if not attempt.finished and attempt.sent_at is not None and not attempt.over_tcp \
                                    and attempt.server not in waiting:
                                attempt.server.stats.silent()
                                waiting.append(attempt.server)
                if waiting and (now >= self.hand_over_at or not self.running):
                    share_end = now + (self.deadline - now) / (len(waiting) + 1)
                    server = waiting.pop(0)
                    # The next ask comes after the server's RTO when that is sooner (a lost
                    # datagram costs ~RTO); a silent server is still judged on its share.
                    self.hand_over_at = share_end if self.zone.force_tcp else \
                        min(share_end, now + server.stats.rto(self.rounds))
                    attempt = _Attempt(self, server, share_end)
                    self.attempts.append(attempt)
                    self.running += 1
                    self.forwarder.start(attempt, self.query, self.zone.force_tcp)
                    if self.over:
                        return
                    continue
                if not self.running:
                    return self._end(None)
                wake = self.deadline
                if (waiting or self.rounds < ASK_ROUNDS) and self.hand_over_at < wake:
                    wake = self.hand_over_at
                if self.timer is not None:
                    self.timer.cancel()
                    self.timer = None
                self.forwarder.wakeups.sleep(self, wake, now)
                return
        finally:
            self.stepping = False

    def wake(self) -> None:
        self.timer = None
        self._guarded(self._step)

    def attempt_answered(self, attempt: _Attempt, data: bytes) -> None:
        attempt.finished = True
        self.running -= 1
        try:        # _guarded(), inline: this runs on every answer
            self._end(data)
        except Exception:  # noqa: BLE001 - logged; the miss ends as a failure
            log.exception("upstream query for %s failed", self.query.name_text)
            if not self.over:
                self._end(None)

    def attempt_failed(self, attempt: _Attempt) -> None:
        """This server failed: ask the next one now."""
        attempt.finished = True
        self.running -= 1
        self.hand_over_at = time.monotonic()
        if not self.stepping and not self.over:
            self._guarded(self._step)

    def _guarded(self, step: Callable, *args) -> None:
        """Run a step from a callback; a bug must still end the miss (its
        clients get SERVFAIL) rather than leave them waiting for ever."""
        try:
            step(*args)
        except Exception:  # noqa: BLE001 - logged; the miss ends as a failure
            log.exception("upstream query for %s failed", self.query.name_text)
            if not self.over:
                self._end(None)

    def _end(self, answer: bytes | None) -> None:
        if self.over:
            return
        self.over = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.forwarder.wakeups.forget(self)
        if self.running:
            self._settle()
        # Attempts point back at their race: dropping them breaks the cycle,
        # so the miss is freed by reference counting, not by the cyclic collector.
        self.attempts.clear()
        if self.starting:
            # done() must not run before ask() returns: an outcome known at once waits a turn.
            asyncio.get_running_loop().call_soon(self.done, answer)
        else:
            self.done(answer)

    def _settle(self) -> None:
        """Cancel the attempts still running; those whose query was sent and
        had its share of the time without an answer count as failures."""
        now = time.monotonic()
        # A server that answered a repeated ask did not fail; one silent to
        # several asks, or refused on a repeated ask (counted when it failed), failed once.
        settled = [a.server for a in self.attempts if a.finished]
        for attempt in self.attempts:
            if attempt.finished:
                continue
            self.forwarder.cancel(attempt)
            if attempt.sent_at is not None and now >= attempt.hand_over_at \
                    and attempt.server not in settled:
                attempt.server.failed()
                settled.append(attempt.server)


class Forwarder:
    """Sends queries to the configured upstreams and returns their answers."""

    def __init__(self, zones: Sequence[UpstreamZone], unwanted_threshold: int = 0) -> None:
        self._servers: dict[tuple[str, int], UpstreamServer] = {}
        self.unwanted = UnwantedReplies(unwanted_threshold)
        self._udp_budget = socket_budget()     # UDP sockets open at most: a burst queues, not EMFILE
        self._udp_open = 0
        self._udp_queue: deque[tuple[_Attempt, UpstreamQuery]] = deque()
        self._udp_sockets = SocketWatch()
        self.wakeups = Wakeups()            # the races' hand-over and timeout wake-ups
        for zone in zones:
            for address in zone.servers:
                if address not in self._servers:
                    stats = ServerStats(format_server(address))
                    self._servers[address] = UpstreamServer(
                        address, stats, UdpUpstream(address, partial(self.unwanted.count, stats), self._udp_sockets),
                        TcpUpstream(address, partial(self.unwanted.count, stats)))
        # Keyed by lower-cased labels: suffix lookups by tuple slicing cost far
        # less than building and hashing dns.name.Name parents.
        self._zones = {zone_labels(z.zone): (z, tuple(self._servers[a] for a in z.servers)) for z in zones}
        self._zone_depth = max(map(len, self._zones), default=0)
        self.root_only = self._zone_depth == 1      # only zone ".": every name is in it
        self.longest_timeout = max((z.timeout for z in zones), default=0.0)

    def zone_for(self, name: bytes) -> UpstreamZone:
        """The zone with the longest suffix match of `name` (a lower-case name wire)."""
        found = wire.longest_zone(self._zones, name, self._zone_depth)
        if found is None:
            raise UpstreamError(f"no upstream configured for {name!r}")
        return found[0]

    def ask(self, query: UpstreamQuery, done: Done) -> None:
        """Pick the zone by longest match of the query's name, try its
        servers with failover, over UDP (TC=1 retried over TCP) or TCP when
        force_tcp, with a random ID per attempt, accepting only answers from
        the queried address/port with matching ID and question; then call
        done(response wire), or done(None) when nothing usable arrived
        within the zone's timeout. done is never called before ask returns."""
        found = wire.longest_zone(self._zones, query.qname, self._zone_depth)
        if found is None:
            asyncio.get_running_loop().call_soon(done, None)
            return
        _Race(self, query, found[0], found[1], done).start()

    async def forward(self, query: UpstreamQuery) -> bytes:
        """ask() as a coroutine (for tests and tools); raises UpstreamError."""
        answer = asyncio.get_running_loop().create_future()
        self.ask(query, lambda data: answer.done() or answer.set_result(data))
        data = await answer
        if data is None:
            raise UpstreamError(f"no usable answer for {query.name_text}")
        return data

    def start(self, attempt: _Attempt, query: UpstreamQuery, force_tcp: bool) -> None:
        """Send the attempt's query (or queue it for a UDP socket slot)."""
        if force_tcp:
            attempt.sending()
            self.send_tcp(attempt, query)
        elif self._udp_open < self._udp_budget:
            self._send_udp(attempt, query)
        else:
            attempt.queued = True
            self._udp_queue.append((attempt, query))

    def _send_udp(self, attempt: _Attempt, query: UpstreamQuery) -> None:
        self._udp_open += 1
        attempt.sending()
        try:
            attempt.exchange = attempt.server.udp.ask(query, attempt.udp_answered, attempt.udp_failed)
        except OSError as e:
            self.udp_closed()
            attempt.failed(e)

    def udp_closed(self) -> None:
        """A UDP socket slot is free: the next queued attempt gets it, from
        the loop (not inside the caller, which may be settling its own miss)."""
        self._udp_open -= 1
        if self._udp_queue:
            asyncio.get_running_loop().call_soon(self._send_queued)

    def _send_queued(self) -> None:
        while self._udp_queue and self._udp_open < self._udp_budget:
            attempt, query = self._udp_queue.popleft()
            attempt.queued = False
            self._send_udp(attempt, query)

    def send_tcp(self, attempt: _Attempt, query: UpstreamQuery) -> None:
        exchange = attempt.server.tcp.ask(query, attempt.tcp_answered, attempt.tcp_failed)
        if not attempt.finished:        # it may have failed at once
            attempt.tcp = exchange

    def cancel(self, attempt: _Attempt) -> None:
        """Stop an attempt that has not finished: close its socket, leave the
        queue, or cancel its TCP exchange."""
        if attempt.exchange is not None:
            attempt.exchange.close()
            attempt.exchange = None
            self.udp_closed()
        elif attempt.queued:
            attempt.queued = False
            self._udp_queue = deque(item for item in self._udp_queue if item[0] is not attempt)
        if attempt.tcp is not None:
            attempt.tcp.close()
            attempt.tcp = None

    def stats(self) -> list[dict]:
        """The "upstream" list of STATS (docs/internals.md), one entry per server."""
        return [s.stats.as_dict() for s in self._servers.values()]

    async def close(self) -> None:
        for server in self._servers.values():
            server.udp.close()
        self._udp_sockets.close()
        self.wakeups.close()
        await asyncio.gather(*(s.tcp.close() for s in self._servers.values()))
