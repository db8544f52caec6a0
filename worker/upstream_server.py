"""One upstream server of the forwarder: its counters (with its round-trip
estimate), its UDP and TCP sides, and when it last failed; and the order a
zone's servers are tried in."""
from __future__ import annotations

import time
from typing import Sequence

from worker.upstream_stats import ServerStats
from worker.upstream_tcp import TcpUpstream
from worker.upstream_udp import UdpUpstream

# How long a server that failed stays at the back of its zone's order.
DEMOTE_SECONDS = 30.0


class UpstreamServer:
    """One upstream server: its counters, its UDP and TCP sides, when it last failed."""

    __slots__ = ("address", "stats", "udp", "tcp", "failed_at")

    def __init__(self, address: tuple[str, int], stats: ServerStats, udp: UdpUpstream, tcp: TcpUpstream,
                 failed_at: float | None = None) -> None:
        self.address, self.stats, self.udp, self.tcp, self.failed_at = address, stats, udp, tcp, failed_at

    def demoted(self, now: float) -> bool:
        return self.failed_at is not None and now - self.failed_at < DEMOTE_SECONDS

    def failed(self) -> None:
        self.stats.errors += 1
        self.failed_at = time.monotonic()


def failover_order(servers: Sequence[UpstreamServer], now: float) -> list[UpstreamServer]:
    """`servers` in configured order, except that those that failed in the
    last DEMOTE_SECONDS come last, the longest-ago failure first."""
    if len(servers) == 1 or all(s.failed_at is None for s in servers):    # one server: the usual config
        return list(servers)
    # sorted() is stable: the others keep their configured order.
    return sorted(servers, key=lambda s: (True, s.failed_at) if s.demoted(now) else (False, 0.0))
