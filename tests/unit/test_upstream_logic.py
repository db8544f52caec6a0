"""Pure logic of the upstream side: zone choice, failover order, stats.
(Query building and answer matching: test_upstream_wire.py.)"""
from __future__ import annotations

import dns.name
import pytest

from worker.config import UpstreamZone
from worker.upstream import Forwarder, UpstreamError
from worker.upstream_query import RandomIds
from worker.upstream_stats import LATENCY_BUCKETS, ServerStats


def test_random_ids_cover_the_16_bit_space():
    ids = RandomIds()
    drawn = [ids.next() for _ in range(2000)]
    assert all(0 <= i < 65536 for i in drawn)
    assert len(set(drawn)) > 1900          # ~30 collisions expected from 2000 draws of 65536
    # Across refills, and two sources do not repeat each other.
    more = [ids.next() for _ in range(3 * RandomIds.ID_BATCH)]
    assert len(set(more)) > 3 * RandomIds.ID_BATCH * 0.9
    other = RandomIds()
    assert [other.next() for _ in range(20)] != drawn[:20]


def test_longest_zone_match():
    f = Forwarder([UpstreamZone(".", (("10.0.0.1", 53),)),
                   UpstreamZone("cluster.local.", (("10.96.0.10", 53),)),
                   UpstreamZone("svc.cluster.local.", (("10.96.0.11", 53),))])
    def zone(name):
        return f.zone_for(dns.name.from_text(name).to_wire().lower()).zone
    assert zone("a.SVC.Cluster.local.") == "svc.cluster.local."
    assert zone("svc.cluster.local.") == "svc.cluster.local."
    assert zone("pod.cluster.local.") == "cluster.local."
    assert zone("xcluster.local.") == "."
    assert zone("example.com.") == "."
    assert zone(".") == "."


def test_no_zone_matches_without_a_root_zone():
    f = Forwarder([UpstreamZone("cluster.local.", (("10.96.0.10", 53),))])
    with pytest.raises(UpstreamError, match="no upstream"):
        f.zone_for(dns.name.from_text("example.com.").to_wire())


def test_stats_one_entry_per_server_even_when_shared_by_zones():
    f = Forwarder([UpstreamZone(".", (("10.0.0.1", 53), ("2001:db8::1", 5353))),
                   UpstreamZone("a.", (("10.0.0.1", 53),))])
    stats = f.stats()
    assert [s["server"] for s in stats] == ["10.0.0.1:53", "[2001:db8::1]:5353"]
    assert stats[0]["queries"] == 0 and stats[0]["errors"] == 0
    assert len(stats[0]["latency_counts"]) == len(stats[0]["latency_buckets"]) + 1


def test_latency_histogram_is_non_cumulative_with_inclusive_upper_bounds():
    s = ServerStats("x")
    for seconds in (0.0005, 0.001, 0.003, 0.3, 7.0):
        s.answered(seconds)
    d = s.as_dict()
    assert d["latency_buckets"] == list(LATENCY_BUCKETS)
    counts = d["latency_counts"]
    assert counts[0] == 2                                  # <= 0.001
    assert counts[LATENCY_BUCKETS.index(0.005)] == 1
    assert counts[LATENCY_BUCKETS.index(0.5)] == 1
    assert counts[-1] == 1                                 # +Inf
    assert sum(counts) == 5
    assert d["latency_sum"] == pytest.approx(7.3045)


def test_recently_failed_servers_are_tried_last_for_a_while():
    from worker.upstream_server import DEMOTE_SECONDS, UpstreamServer, failover_order
    from worker.upstream_tcp import TcpUpstream
    from worker.upstream_udp import SocketWatch, UdpUpstream

    def server(ip, failed_at=None):
        return UpstreamServer((ip, 53), ServerStats(ip), UdpUpstream((ip, 53), lambda: None, SocketWatch()),
                       TcpUpstream((ip, 53), lambda: None), failed_at)
    now = 1000.0
    a, b, c, d = server("10.0.0.1", now - 5), server("10.0.0.2"), server("10.0.0.3", now - 9), \
        server("10.0.0.4", now - DEMOTE_SECONDS - 1)
    order = failover_order([a, b, c, d], now)
    assert [s.address[0] for s in order] == ["10.0.0.2", "10.0.0.4", "10.0.0.3", "10.0.0.1"]
    later = failover_order([a, b, c, d], now + DEMOTE_SECONDS)
    assert [s.address[0] for s in later] == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]


def test_the_retransmission_timeout_follows_the_servers_round_trips_and_backs_off():
    """RFC 6298's estimate (as unbound keeps per server): unknown before the
    first answer, never under RTO_MIN, doubled per round of asks and per
    silence, and back to the estimate once the server answers again."""
    import math

    from worker.upstream_stats import RTO_MIN
    s = ServerStats("x")
    assert s.rto(1) == math.inf
    s.answered(0.001)
    assert s.rto(1) == RTO_MIN and s.rto(2) == 2 * RTO_MIN and s.rto(3) == 4 * RTO_MIN
    s.silent()
    s.silent()
    assert s.rto(1) == 4 * RTO_MIN
    s.answered(0.001)
    assert s.rto(1) == RTO_MIN
    for _ in range(50):
        s.answered(0.2)                      # a slow server: the estimate follows it up
    assert 0.2 < s.rto(1) < 0.3
    for _ in range(30):
        s.silent()
    assert s.rto(1) < 64 * 0.3               # the backoff is bounded
