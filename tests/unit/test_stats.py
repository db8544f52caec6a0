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
    cache = Cache(2, stats.retire)
    a, aaaa = _cached(cache, b"a"), _cached(cache, b"b", "AAAA")
    for _ in range(3):
        stats.hit(a, True)
    stats.hit(aaaa, False)
    first = stats.snapshot({}, cache, NoUpstreams())
    stats.hit(a, True)                  # hit again after the fold
    _cached(cache, b"c")                # `a` or `b` leaves: its hits are folded as it goes
    _cached(cache, b"d")
    second = stats.snapshot({}, cache, NoUpstreams())
    assert first["cache_hits"] == 4 and second["cache_hits"] == 5
    assert sorted(second["queries"]) == [["tcp", "AAAA", "NOERROR", 1], ["udp", "A", "NOERROR", 4]]


def test_hits_between_snapshots_keep_a_bounded_list_and_every_count():
    # A standalone worker is never asked for STATS: the entries hit are
    # folded every FOLD_AT, so departed ones are not kept alive.
    from worker.stats import FOLD_AT
    stats = Stats()
    cache = Cache(100, stats.retire)
    for i in range(3 * FOLD_AT):
        entry = _cached(cache, b"n%d" % i)
        stats.hit(entry, True)
        stats.hit(entry, True)
        assert len(stats.hit_entries) < FOLD_AT
    assert stats.snapshot({}, cache, NoUpstreams())["cache_hits"] == 6 * FOLD_AT
