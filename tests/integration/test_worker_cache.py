"""Cache behaviour of a standalone worker against a real unbound upstream,
as a client sees it: IDs, question case, TTLs, keys, negative caching,
SERVFAIL/REFUSED, TTL caps, shared misses, EDNS sizes, header rules.

One namespace, one unbound and two workers serve the whole module (starting
them per test would cost more than the tests).
"""
from __future__ import annotations

import signal
import socket
import time

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from conftest import require_netns
from helpers.netns import Netns
from helpers.unbound import Unbound
from helpers.worker import Worker, ns_socket, query

pytestmark = pytest.mark.netns

MAIN_CONFIG = """
[[upstream]]
zone = "."
servers = ["127.0.0.2"]

[[header]]
zone = "ttl.test"
set = ["aa"]
clear = ["ra"]
"""

CAPPED_CONFIG = """
[cache]
min_ttl = 100
max_ttl = 200
negative_max_ttl = 0
servfail_ttl = 1

[[upstream]]
zone = "."
servers = ["127.0.0.2"]
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require_netns()
    tmp = tmp_path_factory.mktemp("cache")
    ns = Netns()
    workers = []
    try:
        unbound = Unbound(tmp / "unbound", addr="127.0.0.2", port=53, netns=ns)
        workers.append(Worker(ns, tmp, listen="127.0.0.1:5353", upstream=None, config=MAIN_CONFIG))
        workers.append(Worker(ns, tmp, listen="127.0.0.1:5354", upstream=None, config=CAPPED_CONFIG))
        yield ns, unbound, workers[0], workers[1]
    finally:
        for w in workers:
            w.stop()
        ns.close()


def counted(unbound, fn):
    """(fn's result, upstream queries it caused)."""
    before = unbound.queries()
    result = fn()
    return result, unbound.queries() - before


def first_ttl(msg: dns.message.Message) -> int:
    return (msg.answer or msg.authority)[0].ttl


def test_hit_carries_client_id_and_question_case(stack):
    ns, unbound, w, _ = stack
    first, n = counted(unbound, lambda: w.ask("case.hit.test"))
    assert n == 1 and first.answer[0][0].address == "192.0.2.1"
    q = dns.message.make_query("CaSe.HiT.tEsT", "A")
    q.id = 4242
    reply, n = counted(unbound, lambda: query(ns, w.server, q))
    assert n == 0, "second ask must be a cache hit"
    assert reply.id == 4242
    assert reply.question[0].name.to_text() == "CaSe.HiT.tEsT."
    assert reply.answer[0].name.to_text() == "CaSe.HiT.tEsT.", "answer owner is compressed onto the client's question"
    assert reply.answer[0][0].address == "192.0.2.1"


def test_ttl_counts_down(stack):
    ns, unbound, w, _ = stack
    assert first_ttl(w.ask("down.ttl.test")) == 60
    time.sleep(1.1)
    reply, n = counted(unbound, lambda: w.ask("down.ttl.test"))
    assert n == 0
    assert first_ttl(reply) == 59


def test_key_separates_qtype_class_do_cd(stack):
    ns, unbound, w, _ = stack
    variants = [
        dict(rdtype="A"),
        dict(rdtype="AAAA"),
        dict(rdtype="A", want_dnssec=True),
        dict(rdtype="A", flags=dns.flags.RD | dns.flags.CD),
    ]
    _, n = counted(unbound, lambda: [w.ask("ns.test", **v) for v in variants])
    assert n == len(variants), "each variant is its own key"
    replies, n = counted(unbound, lambda: [w.ask("NS.Test", **v) for v in variants])
    assert n == 0, "and each is cached"
    assert replies[2].ednsflags & dns.flags.DO and not replies[0].ednsflags & dns.flags.DO
    assert replies[3].flags & dns.flags.CD and not replies[0].flags & dns.flags.CD
    chaos = query(ns, w.server, dns.message.make_query("key.hit.test", "A", rdclass="CH"))
    assert chaos.rcode() == dns.rcode.REFUSED and not chaos.answer


@pytest.mark.parametrize("name,rdtype,rcode", [("nothere.test", "A", dns.rcode.NXDOMAIN),
                                               ("aaaa-only.test", "A", dns.rcode.NOERROR)])
def test_negative_answers_cached_by_soa_minimum(stack, name, rdtype, rcode):
    ns, unbound, w, capped = stack
    first, n = counted(unbound, lambda: w.ask(name, rdtype))
    assert n == 1 and first.rcode() == rcode and not first.answer
    soa = first.authority[0]
    assert soa.rdtype == dns.rdatatype.SOA
    assert soa.ttl == 30, "min(SOA TTL 3600, MINIMUM 30, negative_max_ttl 3600)"
    time.sleep(1.1)
    again, n = counted(unbound, lambda: w.ask(name, rdtype))
    assert n == 0 and again.rcode() == rcode
    assert again.authority[0].ttl == 29, "the SOA's TTL counts down"
    # negative_max_ttl = 0 turns negative caching off.
    _, n = counted(unbound, lambda: [capped.ask(name, rdtype) for _ in range(2)])
    assert n == 2


def test_refused_cached_at_most_servfail_ttl(stack):
    ns, unbound, w, capped = stack
    replies, n = counted(unbound, lambda: [capped.ask("x.refused.test") for _ in range(3)])
    assert [r.rcode() for r in replies] == [dns.rcode.REFUSED] * 3
    assert n == 1
    time.sleep(1.1)
    _, n = counted(unbound, lambda: capped.ask("x.refused.test"))
    assert n == 1, "servfail_ttl = 1 second has passed"


def test_min_and_max_ttl_caps(stack):
    ns, unbound, _, capped = stack
    low, n1 = counted(unbound, lambda: capped.ask("low.short.test"))
    high, n2 = counted(unbound, lambda: capped.ask("high.hit.test"))
    assert (first_ttl(low), first_ttl(high)) == (100, 200)
    time.sleep(1.1)
    again, n = counted(unbound, lambda: capped.ask("low.short.test"))
    assert n == 0 and first_ttl(again) == 99, "a 1 s TTL raised to min_ttl stays cached"


def test_identical_concurrent_misses_share_one_upstream_query(stack):
    ns, unbound, w, _ = stack
    clients = 25
    with ns_socket(ns) as s:
        s.settimeout(3)
        ids = []

        def burst():
            for i in range(clients):
                q = dns.message.make_query("shared.short.test", "A")
                ids.append(q.id)
                s.sendto(q.to_wire(), w.server)
            return [dns.message.from_wire(s.recv(4096)) for _ in range(clients)]
        replies, n = counted(unbound, burst)
    assert n == 1
    assert sorted(r.id for r in replies) == sorted(ids)
    assert all(r.answer[0][0].address == "192.0.2.2" for r in replies)


def test_edns_payload_size_and_opt_echo(stack):
    ns, unbound, w, _ = stack
    plain = w.ask("a.test", use_edns=False)
    assert plain.edns < 0, "no OPT in the reply to a query without one"
    with_opt = w.ask("a.test", use_edns=0)
    assert with_opt.edns == 0
    future = w.ask("a.test", use_edns=1)
    assert future.rcode() == dns.rcode.BADVERS and future.edns == 0 and not future.answer, \
        "EDNS version 1 is not served from the cache (RFC 6891)"
    small = w.ask("big.test", "TXT", use_edns=0, payload=512)
    assert small.flags & dns.flags.TC and not small.answer and small.edns == 0
    no_edns = w.ask("big.test", "TXT", use_edns=False)
    assert no_edns.flags & dns.flags.TC, "512 bytes without EDNS"
    big = w.ask("big.test", "TXT", use_edns=0, payload=4096)
    assert big.flags & dns.flags.TC and not big.answer, "UDP is capped at max_udp_size (1232) whatever the client offers"
    over_tcp = w.ask("big.test", "TXT", tcp=True, use_edns=0, payload=512)
    assert not over_tcp.flags & dns.flags.TC and len(over_tcp.answer[0]) == 30
    for _ in range(2):    # repeats take the exact-query fast path: still the client's size
        again = w.ask("big.test", "TXT", use_edns=0, payload=512)
        assert again.flags & dns.flags.TC and not again.answer, "a TCP answer does not skip UDP truncation"
        assert w.ask("big.test", "TXT", use_edns=0, payload=4096).flags & dns.flags.TC


def test_header_rule_sets_and_clears_flags(stack):
    ns, unbound, w, _ = stack
    ruled = w.ask("flags.ttl.test")
    assert ruled.flags & dns.flags.AA and not ruled.flags & dns.flags.RA
    other = w.ask("a.test")
    assert other.flags & dns.flags.RA and not other.flags & dns.flags.AA
    cached = w.ask("flags.ttl.test")
    assert cached.flags & dns.flags.AA and not cached.flags & dns.flags.RA


def test_client_rd_bit_is_mirrored(stack):
    ns, unbound, w, _ = stack
    w.ask("rd.hit.test")
    norec = w.ask("rd.hit.test", flags=0)
    assert not norec.flags & dns.flags.RD
    assert w.ask("rd.hit.test").flags & dns.flags.RD


def test_one_batch_of_mixed_datagrams_answers_each_client_with_its_own_reply(stack):
    """The worker reads queued datagrams in batches (recvmmsg) and sends the
    immediate replies in one call (sendmmsg). With the worker stopped, 48
    clients queue cached hits (index and full path, mixed case), misses,
    garbage and a response packet; after SIGCONT each client gets exactly
    its own reply: its ID, its question as spelled, its answer."""
    ns, unbound, w, _ = stack
    for i in range(8):                      # cached, and (asked twice) in the exact-query index
        w.ask(f"b{i}.hit.test")
        w.ask(f"b{i}.hit.test")
    kinds = []
    for i in range(48):
        kind = ("exact", "case", "miss", "garbage", "exact", "response")[i % 6]
        if kind == "garbage":
            kinds.append((kind, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ab"))
            continue
        name = {"exact": f"b{i % 8}.hit.test", "case": f"B{i % 8}.HiT.test", "miss": f"m{i}.short.test",
                "response": f"b{i % 8}.hit.test"}[kind]
        q = dns.message.make_query(name, "A")
        if kind == "response":
            q.flags |= dns.flags.QR
        kinds.append((kind, q))
    clients = [ns_socket(ns) for _ in kinds]
    try:
        w.proc.send_signal(signal.SIGSTOP)
        try:
            for s, (_, q) in zip(clients, kinds):
                s.sendto(q if isinstance(q, bytes) else q.to_wire(), w.server)
        finally:
            w.proc.send_signal(signal.SIGCONT)
        for s, (kind, q) in zip(clients, kinds):
            s.settimeout(0.5 if kind == "response" else 3)
            if kind == "response":
                with pytest.raises(socket.timeout):
                    s.recv(4096)
                continue
            reply = dns.message.from_wire(s.recv(4096))
            if kind == "garbage":
                assert reply.id == 0x1234 and reply.rcode() == dns.rcode.FORMERR
                continue
            assert reply.id == q.id, kind
            assert reply.question[0].name.to_text() == q.question[0].name.to_text(), kind
            expect = "192.0.2.2" if kind == "miss" else "192.0.2.1"
            assert reply.answer[0][0].address == expect, kind
    finally:
        for s in clients:
            s.close()
