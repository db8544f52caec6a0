"""Forwarding cache misses to the upstream servers of the query's zone.

The zone is the longest configured suffix of the query name. Its servers are
tried in order, with servers that failed recently moved to the back. The
zone's timeout is shared out: with n servers not yet asked, the next is
asked as well after (time left)/(n + 1) without an answer, and so on, and any of the servers asked may
still answer until the zone's timeout runs out. A refused or unreachable
server hands over at once. So the client gets an answer or an UpstreamError
(its SERVFAIL) within `timeout`, never silence.

Over UDP, once every server has been asked, the ones still silent are asked
again (new socket, new ID) on the same schedule, up to ASK_ROUNDS times in
all: one lost datagram must not cost the client a SERVFAIL, and a client's
own retry cannot help, since it joins the miss already in flight.
"""
from __future__ import annotations

import asyncio
import errno
import time
from dataclasses import dataclass, field
from typing import Sequence

import dns.flags
import dns.message
import dns.name

from worker.config import UpstreamZone, format_server
from worker.upstream_query import UpstreamQuery
from worker.upstream_stats import ServerStats
from worker.upstream_tcp import TcpUpstream
from worker import upstream_udp

# Times a silent server is asked for one query over UDP (the first ask included).
ASK_ROUNDS = 3
# No repeated ask with less than this left before the zone's timeout.
MIN_ASK_LEFT = 0.25
# How long a server that failed stays at the back of its zone's order.
DEMOTE_SECONDS = 30.0
# Errors that say this host ran short of something, not that the server failed.
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM,
                          errno.EADDRNOTAVAIL})


class UpstreamError(Exception):
    """No upstream server gave a usable answer in time."""


@dataclass
class _Server:
    """One upstream server: its counters, its TCP connection, when it last failed."""
    address: tuple[str, int]
    stats: ServerStats
    tcp: TcpUpstream
    failed_at: float | None = None

    def demoted(self, now: float) -> bool:
        return self.failed_at is not None and now - self.failed_at < DEMOTE_SECONDS

    def failed(self) -> None:
        self.stats.errors += 1
        self.failed_at = time.monotonic()


def _labels(name: dns.name.Name) -> tuple[bytes, ...]:
    return tuple(label.lower() for label in name.labels)


def failover_order(servers: Sequence[_Server], now: float) -> list[_Server]:
    """`servers` in configured order, except that those that failed in the
    last DEMOTE_SECONDS come last, the longest-ago failure first."""
    # sorted() is stable: the others keep their configured order.
    return sorted(servers, key=lambda s: (True, s.failed_at) if s.demoted(now) else (False, 0.0))


@dataclass
class _Attempt:
    """One server being asked, and when the next server should be asked too."""
    server: _Server
    hand_over_at: float
    sent_at: float | None = None          # None while waiting for a UDP socket slot
    over_tcp: bool = False                # TCP (force_tcp, or a retry after TC=1): never re-asked
    task: asyncio.Task | None = field(default=None, repr=False)

    def sending(self) -> None:
        self.sent_at = time.monotonic()
        self.server.stats.queries += 1


class Forwarder:
    """Sends queries to the configured upstreams and returns their answers."""

    def __init__(self, zones: Sequence[UpstreamZone]) -> None:
        # Keyed by lower-cased labels: suffix lookups by tuple slicing cost far
        # less than building and hashing dns.name.Name parents.
        self._zones = {_labels(dns.name.from_text(z.zone)): z for z in zones}
        self._servers: dict[tuple[str, int], _Server] = {}
        # Bounds the UDP sockets open at once, so a burst of misses queues
        # here instead of running out of file descriptors.
        self._udp_slots = asyncio.Semaphore(upstream_udp.socket_budget())
        for zone in zones:
            for address in zone.servers:
                if address not in self._servers:
                    stats = ServerStats(format_server(address))
                    self._servers[address] = _Server(address, stats,
                                                     TcpUpstream(address, stats.count_rejected))

    def zone_for(self, name: dns.name.Name) -> UpstreamZone:
        """The zone with the longest suffix match of `name`."""
        labels = _labels(name)
        for i in range(len(labels)):
            zone = self._zones.get(labels[i:])
            if zone is not None:
                return zone
        raise UpstreamError(f"no upstream configured for {name}")

    async def forward(self, query: dns.message.Message) -> bytes:
        """Pick the zone by longest match of query.question[0].name, try its
        servers with failover, over UDP (TC=1 retried over TCP) or TCP when
        force_tcp, with a random ID per attempt, accepting only answers from
        the queried address/port with matching ID and question; return the
        response wire. Raises UpstreamError when nothing usable arrived
        within the zone's timeout."""
        outgoing = UpstreamQuery.from_message(query)
        zone = self.zone_for(outgoing.name)
        deadline = time.monotonic() + zone.timeout
        waiting = failover_order([self._servers[a] for a in zone.servers], time.monotonic())
        attempts: list[_Attempt] = []
        try:
            return await self._race(outgoing, zone, waiting, attempts, deadline)
        finally:
            self._settle(attempts)

    async def _race(self, query: UpstreamQuery, zone: UpstreamZone, waiting: list[_Server],
                    attempts: list[_Attempt], deadline: float) -> bytes:
        running: set[asyncio.Task] = set()
        hand_over_at = time.monotonic()
        rounds = 1 if not zone.force_tcp else ASK_ROUNDS    # TCP does not lose a query
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise UpstreamError(f"no answer for {query.name} from zone {zone.zone} "
                                    f"servers within {zone.timeout}s")
            if not waiting and running and now >= hand_over_at and rounds < ASK_ROUNDS:
                rounds += 1
                # Only asks that went out and still wait on UDP; none so late
                # that an answer could not come back in time.
                if deadline - now >= MIN_ASK_LEFT:
                    for attempt in attempts:
                        if attempt.task in running and attempt.sent_at is not None and not attempt.over_tcp \
                                and attempt.server not in waiting:
                            waiting.append(attempt.server)
            if waiting and (now >= hand_over_at or not running):
                hand_over_at = now + (deadline - now) / (len(waiting) + 1)
                attempt = _Attempt(waiting.pop(0), hand_over_at)
                attempt.task = asyncio.get_running_loop().create_task(
                    self._ask(attempt, query, zone.force_tcp))
                attempts.append(attempt)
                running.add(attempt.task)
                continue
            if not running:
                raise UpstreamError(f"every server of zone {zone.zone} failed for {query.name}")
            wake = min(deadline, hand_over_at) if waiting or rounds < ASK_ROUNDS else deadline
            done, _ = await asyncio.wait(running, timeout=max(0.0, wake - now),
                                         return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                running.discard(task)
                if task.exception() is None:
                    return task.result()
                # This server failed: ask the next one now.
                hand_over_at = time.monotonic()

    async def _ask(self, attempt: _Attempt, query: UpstreamQuery, force_tcp: bool) -> bytes:
        server = attempt.server
        try:
            if force_tcp:
                attempt.sending()
                wire, _ = await server.tcp.exchange(query)
            else:
                async with self._udp_slots:
                    attempt.sending()
                    wire, reply = await upstream_udp.exchange(query, server.address,
                                                              server.stats.count_rejected)
                if reply.flags & dns.flags.TC:
                    attempt.over_tcp = True
                    wire, _ = await server.tcp.exchange(query)
        except OSError as e:
            if attempt.sent_at is not None and e.errno not in LOCAL_ERRNOS:
                server.failed()
            raise
        server.stats.answered(time.monotonic() - attempt.sent_at)
        server.failed_at = None
        return wire

    def _settle(self, attempts: list[_Attempt]) -> None:
        """Cancel the attempts still running; those whose query was sent and
        had its share of the time without an answer count as failures."""
        now = time.monotonic()
        # A server that answered a repeated ask did not fail; one silent to
        # several asks, or refused on a repeated ask (counted in _ask), failed once.
        settled = [a.server for a in attempts if a.task.done() and not a.task.cancelled()]
        for attempt in attempts:
            if attempt.task.done():
                if not attempt.task.cancelled():
                    attempt.task.exception()  # retrieved: failures were counted in _ask
                continue
            attempt.task.cancel()
            if attempt.sent_at is not None and now >= attempt.hand_over_at \
                    and attempt.server not in settled:
                attempt.server.failed()
                settled.append(attempt.server)

    def stats(self) -> list[dict]:
        """The "upstream" list of STATS (docs/internals.md), one entry per server."""
        return [s.stats.as_dict() for s in self._servers.values()]

    async def close(self) -> None:
        await asyncio.gather(*(s.tcp.close() for s in self._servers.values()))
