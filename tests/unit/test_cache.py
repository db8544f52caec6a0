"""Cache logic (worker/cache.py, worker/response.py): lifetimes, TTL rendering, eviction. No root."""
from __future__ import annotations

import time
import types

import dns.message
import dns.name
import dns.rcode
import dns.rrset

from worker import wire
from worker.cache import Cache
from worker.config import CacheConfig, HeaderRule
from worker.response import entry_from_response

SOA = "test. 3600 IN SOA ns.test. hostmaster.test. 1 3600 600 86400 30"


def response(name="a.test", rdtype="A", answers=(), authority=(), rcode=dns.rcode.NOERROR) -> bytes:
    q = dns.message.make_query(name, rdtype, use_edns=0)
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    r.answer.extend(rrset(text) for text in answers)
    r.authority.extend(rrset(text) for text in authority)
    return r.to_wire()


def rrset(text: str) -> dns.rrset.RRset:
    name, ttl, rdclass, rdtype, rdata = text.split(" ", 4)
    return dns.rrset.from_text(name, int(ttl), rdclass, rdtype, rdata)


def ttls(data: bytes) -> list[int]:
    msg = dns.message.from_wire(data)
    return [rrset.ttl for rrset in msg.answer + msg.authority]


def test_positive_lifetime_is_smallest_capped_ttl():
    data = response(answers=["a.test. 300 IN A 192.0.2.1"], authority=["test. 30 IN NS ns.test."])
    e = entry_from_response(data, 100.0, CacheConfig(), None, False)
    assert e.expires == 130.0
    capped = entry_from_response(data, 100.0, CacheConfig(min_ttl=60, max_ttl=200), None, False)
    assert ttls(capped.plain) == [200, 60] and capped.expires == 160.0


def test_render_lowers_ttls_by_age_and_never_below_zero():
    e = entry_from_response(response(answers=["a.test. 300 IN A 192.0.2.1"]), 0.0, CacheConfig(), None, False)
    e.render(7)
    assert ttls(e.plain) == [293]
    e.render(400)
    assert ttls(e.plain) == [0]


def test_negative_lifetime_rfc2308():
    nx = response(authority=[SOA], rcode=dns.rcode.NXDOMAIN)
    e = entry_from_response(nx, 0.0, CacheConfig(), None, False)
    assert e.expires == 30.0 and ttls(e.plain) == [30], "min(SOA TTL, MINIMUM)"
    capped = entry_from_response(nx, 0.0, CacheConfig(negative_max_ttl=10), None, False)
    assert capped.expires == 10.0
    off = entry_from_response(nx, 0.0, CacheConfig(negative_max_ttl=0), None, False)
    assert off.expires == 0.0, "negative_max_ttl = 0 disables negative caching"
    nodata = entry_from_response(response(authority=[SOA]), 0.0, CacheConfig(), None, False)
    assert nodata.expires == 30.0
    no_soa = entry_from_response(response(rcode=dns.rcode.NXDOMAIN), 0.0, CacheConfig(), None, False)
    assert no_soa.expires == 0.0, "no SOA, no negative caching"


def test_nodata_behind_a_cname_is_negative():
    """AAAA for a CDN name: a CNAME, then nothing of the asked type and the
    target zone's SOA. RFC 2308 NODATA, not a 900-second positive answer."""
    cdn_soa = "cdn.test. 900 IN SOA ns.cdn.test. h.cdn.test. 1 3600 600 86400 60"
    data = response("www.test", "AAAA", answers=["www.test. 3600 IN CNAME edge.cdn.test."],
                    authority=[cdn_soa])
    e = entry_from_response(data, 0.0, CacheConfig(), None, False)
    assert e.expires == 60.0 and ttls(e.plain) == [60, 60], "min(SOA TTL, MINIMUM), shown on every record"
    off = entry_from_response(data, 0.0, CacheConfig(negative_max_ttl=0), None, False)
    assert off.expires == 0.0
    chain = response("www.test", "AAAA", answers=["www.test. 3600 IN CNAME edge.cdn.test.",
                                                  "edge.cdn.test. 20 IN AAAA 2001:db8::1"])
    assert entry_from_response(chain, 0.0, CacheConfig(), None, False).expires == 20.0, "a full chain is positive"
    asked = response("www.test", "CNAME", answers=["www.test. 3600 IN CNAME edge.cdn.test."])
    assert entry_from_response(asked, 0.0, CacheConfig(), None, False).expires == 3600.0


def test_servfail_and_refused_cached_servfail_ttl():
    for rcode in (dns.rcode.SERVFAIL, dns.rcode.REFUSED):
        e = entry_from_response(response(rcode=rcode), 0.0, CacheConfig(servfail_ttl=5), None, False)
        assert e.expires == 5.0
    formerr = entry_from_response(response(rcode=dns.rcode.FORMERR), 0.0, CacheConfig(), None, False)
    assert formerr.expires == 0.0


def test_upstream_opt_replaced_by_ours():
    e = entry_from_response(response(answers=["a.test. 300 IN A 192.0.2.1"]), 0.0, CacheConfig(), None, True)
    assert dns.message.from_wire(e.plain).edns < 0
    with_opt = dns.message.from_wire(e.opt_form())
    assert with_opt.edns == 0 and with_opt.payload == wire.OUR_UDP_PAYLOAD
    assert with_opt.ednsflags & 0x8000, "DO echoed"


def test_header_rule_and_aa_cleared():
    data = bytearray(response(answers=["a.test. 300 IN A 192.0.2.1"]))
    data[2] |= wire.FLAG_AA
    e = entry_from_response(bytes(data), 0.0, CacheConfig(), None, False)
    assert not e.plain[2] & wire.FLAG_AA, "a cached answer is not authoritative"
    rule = HeaderRule(zone=".", set=frozenset({"aa"}), clear=frozenset({"ra", "rd"}))
    ruled = entry_from_response(bytes(data), 0.0, CacheConfig(), rule, False)
    assert ruled.plain[2] & wire.FLAG_AA and not ruled.plain[3] & wire.FLAG_RA
    assert not ruled.plain[2] & wire.FLAG_RD and not ruled.mirror_rd


def test_truncated_form_keeps_question_only():
    e = entry_from_response(response(answers=["a.test. 300 IN A 192.0.2.1"]), 0.0, CacheConfig(), None, False)
    qname_end = 12 + len(b"\x01a\x04test\x00")
    tc = dns.message.from_wire(e.truncated(qname_end, True))
    assert tc.flags & 0x0200 and not tc.answer and tc.question[0].name.to_text() == "a.test." and tc.edns == 0


def entry(now: float = 0.0, ttl: int = 300):
    return entry_from_response(response(answers=[f"a.test. {ttl} IN A 192.0.2.1"]), now, CacheConfig(), None, False)


def test_eviction_is_bounded_and_prefers_unreferenced():
    c = Cache(3)
    for k in (b"a", b"b", b"c"):
        c.put(k, entry())
    assert c.get(b"a", 1.0) is not None        # referenced: gets a second chance
    c.put(b"d", entry())
    assert set(c.entries) == {b"a", b"c", b"d"} and c.evictions == 1
    evicted = [entry() for _ in range(100)]
    for i, e in enumerate(evicted):
        c.put(bytes([i]) * 2, e)
    assert len(c) == 3 and c.evictions == 101
    # An entry that left is seen as expired by anyone still holding it (the exact-query index).
    assert sum(e.expires == float("-inf") for e in evicted) == 97


def test_expired_entries_are_not_returned():
    c = Cache(10)
    c.put(b"k", entry(now=0.0))
    assert c.get(b"k", 299.9) is not None
    assert c.get(b"k", 300.0) is None and len(c) == 0


def test_zero_capacity_stores_nothing():
    c = Cache(0)
    c.put(b"k", entry())
    assert len(c) == 0


def test_expired_entries_leave_before_live_ones():
    c = Cache(3)
    c.put(b"long", entry(now=0.0))                      # lives until 300
    c.put(b"short", entry(now=0.0, ttl=1))              # expires at 1
    c.put(b"other", entry(now=0.0))
    c.put(b"new", entry(now=5.0))
    assert set(c.entries) == {b"long", b"other", b"new"} and c.evictions == 0
    for i in range(200):                                # the expiry lists stay bounded (CLOCK evicts these)
        c.put(b"k%d" % i, entry(now=10.0 + i))
    assert c.expiry_items <= 2 * c.capacity + 64
    assert sum(map(len, c.expiry.values())) == c.expiry_items and sorted(c.expiry) == sorted(c.expiry_slots)


def test_an_entry_without_a_finite_expiry_is_stored_and_evicted_by_clock():
    c = Cache(2)
    gone = entry()
    gone.leave()                                        # expires -inf, as an entry that left another cache
    c.put(b"gone", gone)
    c.put(b"a", entry())
    c.put(b"b", entry())
    assert set(c.entries) == {b"a", b"b"} and c.evictions == 1


def test_a_full_cache_of_expired_entries_drops_one_per_put_soonest_first():
    # All at once stalled the worker ~40 ms per 10,000 entries (the miss p99).
    c = Cache(4)
    for i, seconds in enumerate((3, 1, 4, 2)):
        c.put(b"e%d" % i, entry(ttl=seconds))
    c.put(b"new", entry(now=10.0, ttl=60))
    assert set(c.entries) == {b"e0", b"e2", b"e3", b"new"} and c.evictions == 0
    c.put(b"newer", entry(now=10.0, ttl=60))
    assert set(c.entries) == {b"e0", b"e2", b"new", b"newer"}


class _SilentForwarder:
    """An upstream that never answers: every miss stays in flight."""

    def __init__(self):
        self.unwanted = types.SimpleNamespace(threshold=0, actions=0)

    def ask(self, query, done):
        pass

    def stats(self):
        return []


def test_in_flight_misses_are_bounded():
    """Past max_pending distinct questions in flight, a miss is refused (the
    caller answers SERVFAIL) instead of queueing without bound; a question
    already in flight still joins it."""
    import asyncio

    from worker.resolver import LocalAnswers, Resolver

    async def scenario():
        resolver = Resolver(_SilentForwarder(), Cache(10), CacheConfig(), (), LocalAnswers("x"), max_pending=3)
        questions = [wire.parse_query(dns.message.make_query(f"n{i}.test", "A").to_wire()) for i in range(4)]
        accepted = [resolver.miss(q, lambda entry: None) for q in questions]
        joined = resolver.miss(questions[0], lambda entry: None)
        answers = []
        probe = wire.parse_query(dns.message.make_query("ready.twindns.", "TXT", "CH").to_wire())
        probed = resolver.miss(probe, answers.append)    # the readiness probe is never refused
        await asyncio.sleep(0)
        return accepted, joined, probed, len(answers), resolver.overloaded

    assert asyncio.run(scenario()) == ([True, True, True, False], True, True, 1, 1)


def test_refused_misses_of_the_peer_count_in_misses_overloaded_and_refused_prefetches_do_not():
    """STATS misses_overloaded counts every miss answered SERVFAIL because
    max_pending is reached: the peer's too (its client gets that SERVFAIL),
    not a refused prefetch (nobody is answered)."""
    import asyncio

    from contract import stats as keys
    from worker.resolver import LocalAnswers, Resolver
    from worker.stats import Stats

    class Peer:
        def __init__(self):
            self.told = []

        def held_elsewhere(self, key, ahead):
            return False    # we own every key: all of them go upstream from here

        def settle(self, key):
            pass

        def tell(self, key, entry, reply):
            self.told.append((key, entry.rcode, reply))

    async def scenario():
        cache = Cache(10)
        resolver = Resolver(_SilentForwarder(), cache, CacheConfig(), (), LocalAnswers("x"), max_pending=1)
        resolver.peer = peer = Peer()
        first, second, third = (wire.parse_query(dns.message.make_query(f"n{i}.test", "A").to_wire())
                                for i in range(3))
        assert resolver.miss(first, lambda entry: None)
        resolver.peer_asks(second.key, refresh=False)             # refused: the peer's client gets SERVFAIL
        assert not resolver.miss(third, lambda entry: None, refresh=True)   # a refused prefetch
        return peer.told, Stats().snapshot({}, cache, _SilentForwarder(), resolver.counts())

    told, snap = asyncio.run(scenario())
    assert told and told[0][1:] == (dns.rcode.SERVFAIL, True)     # a reply: the peer's client waits on it
    assert snap[keys.MISSES_OVERLOADED] == 1


def test_misses_held_back_by_max_in_flight_are_sent_in_order_and_counted_once_in_misses_queued():
    """With max_in_flight upstream, later misses wait in order and STATS
    misses_queued counts each of them once; a miss that is done lets the next go."""
    import asyncio

    from contract import stats as keys
    from worker.resolver import LocalAnswers, Resolver
    from worker.stats import Stats

    class Holding:
        """Holds every query until the test answers it (done(None): SERVFAIL)."""

        def __init__(self):
            self.unwanted = types.SimpleNamespace(threshold=0, actions=0)
            self.asked = []

        def ask(self, query, done):
            self.asked.append((query.qname, done))

        def stats(self):
            return []

    async def scenario():
        cache, upstream = Cache(10), Holding()
        resolver = Resolver(upstream, cache, CacheConfig(max_in_flight=2), (), LocalAnswers("x"))
        names = [f"n{i}.test" for i in range(5)]
        for name in names:
            resolver.miss(wire.parse_query(dns.message.make_query(name, "A").to_wire()), lambda entry: None)
        await asyncio.sleep(0.01)
        first = [qname for qname, _ in upstream.asked]
        for _qname, done in upstream.asked[:2]:
            done(None)
        await asyncio.sleep(0.01)
        return first, [qname for qname, _ in upstream.asked], Stats().snapshot({}, cache, upstream, resolver.counts())

    first, asked, snap = asyncio.run(scenario())
    wires = [dns.name.from_text(f"n{i}.test").to_wire() for i in range(5)]
    assert first == wires[:2]
    assert asked == wires[:4]               # two done: the next two, in order
    assert snap[keys.MISSES_QUEUED] == 3    # n2, n3, n4 waited; counted once though held back twice


def test_an_expired_entry_is_kept_for_serve_stale_and_served_only_by_stale():
    cache = Cache(10, serve_stale=100.0)
    data = response(answers=["a.test. 60 IN A 192.0.2.1"])
    cache.put(b"k", entry_from_response(data, 0.0, CacheConfig(), None, False))
    assert cache.get(b"k", 61.0) is None, "expired: a miss, so upstream is asked first"
    assert b"k" in cache.entries, "but kept for serve-stale"
    assert cache.stale(b"k", 30.0) is None, "not expired yet: nothing stale to serve"
    copy = cache.stale(b"k", 61.0)
    assert ttls(copy.plain) == [30] and copy.expires == 91.0, "RFC 8767: TTL 30, reused for 30 s"
    assert cache.get(b"k", 70.0) is copy and cache.stale_served == 1
    # The window is the original answer's: 60 + 100 s, however often it is refreshed.
    assert cache.stale(b"k", 159.0) is not None
    assert cache.stale(b"k", 189.5) is None
    assert cache.get(b"k", 189.5) is None and b"k" not in cache.entries, "past the window: gone"


def test_serve_stale_0_drops_an_entry_at_expiry():
    cache = Cache(10)
    data = response(answers=["a.test. 60 IN A 192.0.2.1"])
    cache.put(b"k", entry_from_response(data, 0.0, CacheConfig(), None, False))
    assert cache.get(b"k", 60.0) is None and b"k" not in cache.entries
    assert cache.stale(b"k", 60.0) is None


class _AskedPeer:
    """The owner of every key: takes asks, never tells. `heard` moves
    last_heard on every sweep (a peer that is alive, its replies lost) or
    not (a peer that stopped)."""

    def __init__(self, heard: bool):
        self.heard, self.asks, self.last_heard, self.quiet = heard, [], time.monotonic(), False

    def held_elsewhere(self, key, ahead):
        return not self.quiet

    def settle(self, key):
        pass

    def poll(self):
        pass

    def ask(self, key, refresh=False):
        self.asks.append(key)
        return True

    def tell(self, key, entry, reply):
        return True


def record(name: str, resolver) -> bytes:
    """The record the peer tells for `name`: its SERVFAIL (worker/handoff.py's body, no length)."""
    from worker.handoff import encode_entry
    q = wire.parse_query(dns.message.make_query(name, "A").to_wire())
    return encode_entry(q.key, resolver._servfail(q))[4:]


def _silent_owner_scenario(peer: _AskedPeer, late_miss_after: float, wait: float):
    """Misses `silent.test` and `answered.test` (told after 50 ms), then `late.test`
    `late_miss_after` s in; at the end the peer tells `silent.test` after all.
    Returns (start, upstream asks with times, STATS, names whose clients got an answer)."""
    import asyncio

    from worker.resolver import LocalAnswers, Resolver
    from worker.stats import Stats

    class Recording(_SilentForwarder):
        def __init__(self):
            super().__init__()
            self.asked = []

        def ask(self, query, done):
            self.asked.append((query.qname, time.monotonic()))

        def zone_for(self, qname):
            return types.SimpleNamespace(timeout=1.0)

    def question(name):
        return wire.parse_query(dns.message.make_query(name, "A").to_wire())

    async def scenario():
        upstream = Recording()
        resolver = Resolver(upstream, Cache(10), CacheConfig(), (), LocalAnswers("x"))
        resolver.peer = peer
        started, late_at = time.monotonic(), late_miss_after
        resolver.miss(question("silent.test"), lambda entry: got.append("silent"))
        resolver.miss(question("answered.test"), lambda entry: got.append("answered"))
        await asyncio.sleep(0.05)
        resolver.peer_told(question("answered.test").key, record("answered.test", resolver))
        while time.monotonic() - started < wait:
            if peer.heard:
                peer.last_heard = time.monotonic()
            if late_at and time.monotonic() - started >= late_at:
                resolver.miss(question("late.test"), lambda entry: None)
                late_at = 0
            await asyncio.sleep(0.01)
        resolver.peer_told(question("silent.test").key, record("silent.test", resolver))
        return started, upstream.asked, Stats().snapshot({}, resolver.cache, upstream, resolver.counts()), got

    got: list[str] = []
    return asyncio.run(scenario())


def test_an_ask_a_live_peer_never_answers_goes_upstream_after_the_zone_timeout_and_is_counted():
    """The peer is heard from all along but this reply never comes (lost):
    after the zone's timeout + PEER_SLACK (give or take one sweep) we ask
    upstream ourselves and count it in STATS peer_fallbacks; an ask the peer
    answers in time never goes upstream from us."""
    from contract import stats as keys
    from worker.peer_misses import PEER_SLACK, SILENCE_SWEEP

    started, asked, snap, _got = _silent_owner_scenario(_AskedPeer(heard=True), 0, 1.0 + PEER_SLACK + 2 * SILENCE_SWEEP)
    assert [qname for qname, _ in asked] == [dns.name.from_text("silent.test").to_wire()]
    # Upper bound: one sweep late at most, plus room for a loaded machine's event loop.
    assert 1.0 + PEER_SLACK <= asked[0][1] - started <= 1.0 + PEER_SLACK + SILENCE_SWEEP + 0.15
    assert snap[keys.PEER_FALLBACKS] == 1


def test_asks_to_a_peer_that_stopped_go_upstream_after_peer_stall_and_it_is_not_asked_again():
    """Nothing heard from the peer since the ask (hung, until the supervisor
    replaces it): upstream after PEER_STALL, not the zone's timeout + slack,
    and later misses go upstream at once instead of being asked of it."""
    from contract import stats as keys
    from worker.peer_misses import PEER_STALL, SILENCE_SWEEP

    peer = _AskedPeer(heard=False)
    started, asked, snap, got = _silent_owner_scenario(peer, PEER_STALL + 2 * SILENCE_SWEEP, PEER_STALL + 0.4)
    names = [qname for qname, _ in asked]
    assert names == [dns.name.from_text(n).to_wire() for n in ("silent.test", "late.test")]
    assert PEER_STALL <= asked[0][1] - started <= PEER_STALL + SILENCE_SWEEP + 0.15
    assert peer.quiet and dns.name.from_text("late.test").to_wire() not in [
        wire.key_qname(k) for k in peer.asks]
    assert snap[keys.PEER_FALLBACKS] == 1
    assert got == ["answered", "silent"]        # the peer's late answer still reached the waiting client
