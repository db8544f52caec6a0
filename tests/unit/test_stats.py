"""The worker's query counters are a fixed set, whatever types clients ask."""
from __future__ import annotations

import json

from worker.cache import Cache
from worker.channel import MAX_REPLY
from worker.stats import Stats
from worker.upstream_stats import UnwantedReplies


class NoUpstreams:
    unwanted = UnwantedReplies(0)

    def stats(self) -> list:
        return []


def test_distinct_qtypes_share_the_other_counter():
    stats = Stats()
    for qtype in range(1000, 61000):
        stats.count(True, qtype, 0)
        stats.count(False, qtype, 3)
    stats.count(True, 1, 0, 5)
    snap = stats.snapshot({"slot": "A"}, Cache(10), NoUpstreams())
    assert sorted(snap["queries"]) == [["tcp", "other", "NXDOMAIN", 60000], ["udp", "A", "NOERROR", 5],
                                       ["udp", "other", "NOERROR", 60000]]
    assert snap["queries_total"] == 120005


def test_every_possible_row_fits_one_control_message():
    stats = Stats()
    for qtype in range(65536):
        for rcode in range(16):
            stats.count(qtype % 2 == 0, qtype, rcode)
    snap = stats.snapshot({"slot": "A"}, Cache(10), NoUpstreams())
    assert len(json.dumps({"id": 1, "ok": True, "stats": snap})) < MAX_REPLY // 2


def _cached(cache: Cache, key: bytes, qtype: str = "A"):
    import dns.message
    import dns.rrset
    from worker.config import CacheConfig
    from worker.response import entry_from_response
    name = key.decode() + ".test."
    reply = dns.message.make_response(dns.message.make_query(name, qtype))
    reply.answer.append(dns.rrset.from_text(name, 300, "IN", qtype, "192.0.2.1" if qtype == "A" else "::1"))
    entry = entry_from_response(reply.to_wire(), 0.0, CacheConfig(), None, False)
    cache.put(key, entry)
    return entry


def test_cache_hits_are_counted_once_across_snapshots_and_departures():
    stats = Stats()
    cache = Cache(2)
    a, aaaa = _cached(cache, b"a"), _cached(cache, b"b", "AAAA")
    for _ in range(3):
        stats.hit(a, True)
    stats.hit(aaaa, False)
    first = stats.snapshot({}, cache, NoUpstreams())
    stats.hit(a, True)                  # hit again after a snapshot
    _cached(cache, b"c")                # `a` and `b` leave: their hits stay counted
    _cached(cache, b"d")
    second = stats.snapshot({}, cache, NoUpstreams())
    assert first["cache_hits"] == 4 and second["cache_hits"] == 5
    assert sorted(second["queries"]) == [["tcp", "AAAA", "NOERROR", 1], ["udp", "A", "NOERROR", 4]]


def test_hit_counts_live_in_one_row_per_kind_not_per_entry():
    """What STATS reads (and a snapshot costs) is bounded by the counter
    table, however many entries were hit: 10,000 entries of two kinds hit
    make two rows, and the same hits counted in them."""
    stats = Stats()
    cache = Cache(20000)
    entries = [_cached(cache, b"n%d" % i, "AAAA" if i % 2 else "A") for i in range(10000)]
    for e in entries:
        stats.hit(e, True)
        stats.hit(e, False)
    assert len(stats.hit_rows) == 2
    snap = stats.snapshot({}, cache, NoUpstreams())
    assert snap["cache_hits"] == 20000
    assert sorted(snap["queries"]) == [["tcp", "A", "NOERROR", 5000], ["tcp", "AAAA", "NOERROR", 5000],
                                       ["udp", "A", "NOERROR", 5000], ["udp", "AAAA", "NOERROR", 5000]]
