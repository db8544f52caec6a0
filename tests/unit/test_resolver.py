"""Resolver.miss() with a fake forwarder (no sockets): one upstream query per
key in flight, every waiter answered once and never before miss() returns,
the longest header rule applied, SERVFAIL (cached for servfail_ttl) when upstream fails,
local CH answers."""
from __future__ import annotations

import asyncio

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import uvloop

from worker import wire
from worker.cache import Cache
from worker.config import CacheConfig, HeaderRule, UpstreamZone
from worker.resolver import LocalAnswers, Resolver


class FakeForwarder:
    """Answers each ask on the next turn of the loop: one A record, or (`fail`) no usable answer."""

    def __init__(self, fail: bool = False) -> None:
        self.asked: list[bytes] = []
        self.fail = fail

    @staticmethod
    def zone_for(name: bytes):
        return UpstreamZone(".", ())

    def ask(self, query, done) -> None:
        sent = query.wire(0)
        self.asked.append(sent)
        reply = None
        if not self.fail:
            message = dns.message.make_response(dns.message.from_wire(sent))
            message.flags |= dns.flags.AA | dns.flags.RA
            message.answer.append(dns.rrset.from_text(message.question[0].name, 60, "IN", "A", "192.0.2.1"))
            reply = message.to_wire()
        asyncio.get_running_loop().call_soon(done, reply)


def question(name: str, rdclass: str = "IN", rdtype: str = "A") -> wire.Question:
    return wire.parse_query(dns.message.make_query(name, rdtype, rdclass).to_wire())


def resolve(forwarder, names: list[str], headers=(), rdclass: str = "IN", rdtype: str = "A"):
    """Ask each name (concurrently); (entries per name in order of asking, calls before miss() returned, cache)."""
    async def scenario():
        cache = Cache(100)
        resolver = Resolver(forwarder, cache, CacheConfig(), headers, LocalAnswers("slot=A"))
        got: list[tuple[str, object]] = []
        early = 0
        for name in names:
            resolver.miss(question(name, rdclass, rdtype), lambda e, name=name: got.append((name, e)))
            early += len(got)
        await asyncio.sleep(0.01)
        return got, early, cache, resolver
    return uvloop.run(scenario())


def test_identical_misses_share_one_query_and_each_waiter_is_answered_once():
    forwarder = FakeForwarder()
    got, early, cache, resolver = resolve(forwarder, ["a.test.", "A.Test.", "b.test.", "a.test."])
    assert early == 0
    assert len(forwarder.asked) == 2
    assert sorted(name for name, _ in got) == ["A.Test.", "a.test.", "a.test.", "b.test."]
    assert len(cache) == 2 and not resolver.pending


def test_the_longest_header_rule_applies():
    rules = (HeaderRule("test.", set=frozenset({"aa"})), HeaderRule("ttl.test.", clear=frozenset({"ra"})))
    got, _, _, _ = resolve(FakeForwarder(), ["x.ttl.test.", "x.other.test.", "x.example."], rules)
    flags = {name: (entry.template[2], entry.template[3]) for name, entry in got}
    assert not flags["x.ttl.test."][0] & wire.FLAG_AA and not flags["x.ttl.test."][1] & wire.FLAG_RA
    assert flags["x.other.test."][0] & wire.FLAG_AA and flags["x.other.test."][1] & wire.FLAG_RA
    assert not flags["x.example."][0] & wire.FLAG_AA      # no rule: answers from a cache are not authoritative


def test_upstream_failure_is_a_servfail_to_every_waiter_cached_for_servfail_ttl():
    forwarder = FakeForwarder(fail=True)
    got, early, cache, resolver = resolve(forwarder, ["a.test.", "a.test."])
    assert early == 0 and len(got) == 2
    ttl = CacheConfig().servfail_ttl
    assert all(entry.rcode == dns.rcode.SERVFAIL and entry.expires - entry.stored_at == ttl for _, entry in got)
    # A retry is answered from the cache, without waiting out the upstreams again.
    assert len(cache) == 1 and resolver.upstream_failures == 1 and len(forwarder.asked) == 1


def test_class_ch_is_answered_locally_never_upstream():
    forwarder = FakeForwarder()
    got, early, cache, _ = resolve(forwarder, ["ready.twindns."], rdclass="CH", rdtype="TXT")
    probe = dns.message.from_wire(got[0][1].template)
    assert early == 0 and not forwarder.asked and len(cache) == 0
    assert probe.answer[0][0].strings == (b"slot=A",)
    got, _, _, _ = resolve(forwarder, ["version.bind."], rdclass="CH", rdtype="TXT")
    assert got[0][1].rcode == dns.rcode.REFUSED and not forwarder.asked


def test_the_readiness_probe_is_answered_right_every_time_and_only_its_reply_is_kept():
    """The probe's reply is built once per form (worker/resolver.py LocalAnswers.reply):
    every later probe still gets its own ID, its question as asked, an OPT
    record exactly when it sent one; other CH names stay REFUSED, and are not kept."""
    from worker.answer import Answerer
    from worker.stats import Stats

    async def scenario():
        local = LocalAnswers("slot=A gen=1")
        cache = Cache(100)
        resolver = Resolver(FakeForwarder(), cache, CacheConfig(), (), local)
        answerer = Answerer(cache, resolver, Stats())
        sent: list[tuple[bytes, bytes]] = []
        queries = []
        for i in range(6):
            name = "ready.twindns." if i % 2 else "READY.TwinDNS."
            edns = ({"use_edns": False}, {"use_edns": 0}, {"want_dnssec": True})[i % 3]
            query = dns.message.make_query(name, "TXT", "CH", **edns)
            query.id = 1000 + i
            queries.append(query)
            data = query.to_wire()
            assert answerer.answer(data, True, lambda reply, d, data=data: sent.append((data, reply)), None, 0.0) is not None
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        for i in range(50):
            data = dns.message.make_query(f"n{i}.bind.", "TXT", "CH").to_wire()
            answerer.answer(data, True, lambda reply, d, data=data: sent.append((data, reply)), None, 0.0)
        await asyncio.sleep(0.01)
        return local, queries, sent

    local, queries, sent = uvloop.run(scenario())
    assert len(sent) == 56
    for query, (_, reply) in zip(queries, sent):
        got = dns.message.from_wire(reply)
        assert got.id == query.id and got.question[0].name.to_text() == query.question[0].name.to_text()
        assert got.rcode() == dns.rcode.NOERROR and got.answer[0][0].strings == (b"slot=A gen=1",)
        assert (got.edns >= 0) == (query.edns >= 0) and got.ednsflags == query.ednsflags
    assert all(dns.message.from_wire(reply).rcode() == dns.rcode.REFUSED for _, reply in sent[6:])
    assert len(local.probe_replies) == 2        # the probe with and without DO; no other name
