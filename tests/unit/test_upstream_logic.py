"""Pure logic of the upstream side: answer matching, zone choice, stats."""
from __future__ import annotations

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import pytest

from worker.config import UpstreamZone
from worker.upstream import Forwarder, UpstreamError
from worker.upstream_query import Rejected, UpstreamQuery, random_id
from worker.upstream_stats import LATENCY_BUCKETS, ServerStats


def reply_to(query: dns.message.Message, query_id: int, name: str | None = None,
             rdtype: str = "A") -> bytes:
    q = dns.message.make_query(name or query.question[0].name, rdtype)
    r = dns.message.make_response(q)
    r.id = query_id
    return r.to_wire()


def test_query_wire_carries_the_given_id_and_the_rest_unchanged():
    query = dns.message.make_query("Example.Test.", "A", use_edns=0, want_dnssec=True)
    up = UpstreamQuery.from_message(query)
    wire = up.wire(0xBEEF)
    sent = dns.message.from_wire(wire)
    assert sent.id == 0xBEEF
    assert sent.question == query.question and sent.question[0].name.to_text() == "Example.Test."
    assert sent.edns == 0 and sent.ednsflags & dns.flags.DO


def test_answer_accepted_with_matching_id_and_question_in_any_case():
    query = dns.message.make_query("MiXeD.test.", "A")
    up = UpstreamQuery.from_message(query)
    reply = up.answer(reply_to(query, 7, name="mixed.TEST."), 7)
    assert reply.id == 7


@pytest.mark.parametrize("make, why", [
    (lambda q: reply_to(q, 8), "wrong ID"),
    (lambda q: reply_to(q, 7, name="other.test."), "wrong question"),
    (lambda q: reply_to(q, 7, rdtype="AAAA"), "wrong question"),
    (lambda q: (7).to_bytes(2, "big") + q.to_wire()[2:], "not a response"),   # QR=0
    (lambda q: (7).to_bytes(2, "big") + b"\x81\x80\x00\x01", "wrong ID"),     # short header
    (lambda q: (7).to_bytes(2, "big") + b"\x81\x80\x00\x05\x00\x00\x00\x00\x00\x00\x01", "malformed"),
])
def test_answer_rejected(make, why):
    query = dns.message.make_query("a.test.", "A")
    with pytest.raises(Rejected, match=why):
        UpstreamQuery.from_message(query).answer(make(query), 7)


def test_answer_with_no_question_is_rejected_even_for_servfail():
    query = dns.message.make_query("a.test.", "A")
    r = dns.message.make_response(query)
    r.id = 7
    r.set_rcode(dns.rcode.SERVFAIL)
    r.question = []
    with pytest.raises(Rejected, match="question count"):
        UpstreamQuery.from_message(query).answer(r.to_wire(), 7)


def test_answer_with_other_opcode_is_rejected():
    query = dns.message.make_query("a.test.", "A")
    r = dns.message.make_response(query)
    r.id = 7
    r.set_opcode(dns.opcode.NOTIFY)
    with pytest.raises(Rejected, match="opcode"):
        UpstreamQuery.from_message(query).answer(r.to_wire(), 7)


def test_random_ids_cover_the_16_bit_space():
    ids = {random_id() for _ in range(2000)}
    assert all(0 <= i < 65536 for i in ids)
    assert len(ids) > 1900          # ~30 collisions expected from 2000 draws of 65536


def test_longest_zone_match():
    f = Forwarder([UpstreamZone(".", (("10.0.0.1", 53),)),
                   UpstreamZone("cluster.local.", (("10.96.0.10", 53),)),
                   UpstreamZone("svc.cluster.local.", (("10.96.0.11", 53),))])
    def zone(name):
        return f.zone_for(dns.name.from_text(name)).zone
    assert zone("a.SVC.Cluster.local.") == "svc.cluster.local."
    assert zone("svc.cluster.local.") == "svc.cluster.local."
    assert zone("pod.cluster.local.") == "cluster.local."
    assert zone("xcluster.local.") == "."
    assert zone("example.com.") == "."
    assert zone(".") == "."


def test_no_zone_matches_without_a_root_zone():
    f = Forwarder([UpstreamZone("cluster.local.", (("10.96.0.10", 53),))])
    with pytest.raises(UpstreamError, match="no upstream"):
        f.zone_for(dns.name.from_text("example.com."))


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
    from worker.upstream import DEMOTE_SECONDS, _Server, failover_order
    from worker.upstream_tcp import TcpUpstream

    def server(ip, failed_at=None):
        return _Server((ip, 53), ServerStats(ip), TcpUpstream((ip, 53), lambda: None), failed_at)
    now = 1000.0
    a, b, c, d = server("10.0.0.1", now - 5), server("10.0.0.2"), server("10.0.0.3", now - 9), \
        server("10.0.0.4", now - DEMOTE_SECONDS - 1)
    order = failover_order([a, b, c, d], now)
    assert [s.address[0] for s in order] == ["10.0.0.2", "10.0.0.4", "10.0.0.3", "10.0.0.1"]
    later = failover_order([a, b, c, d], now + DEMOTE_SECONDS)
    assert [s.address[0] for s in later] == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
