"""The worker's counters and their STATS form (docs/internals.md)."""
from __future__ import annotations

import os

import dns.rcode
import dns.rdatatype

from contract import stats as keys
from worker.cache import Cache, Entry

# The query types counted on their own (unbound's extended statistics do the
# same with a fixed table); every other type is counted as OTHER_QTYPE. The
# counters are (protocol, qtype bucket, rcode): at most 2 x 23 x 16 rows, so a
# client asking 60,000 different types cannot grow the STATS message.
COUNTED_QTYPES = frozenset(dns.rdatatype.from_text(t) for t in (
    "A", "NS", "CNAME", "SOA", "PTR", "HINFO", "MX", "TXT", "AAAA", "SRV", "NAPTR", "DS", "RRSIG",
    "NSEC", "DNSKEY", "NSEC3", "TLSA", "SVCB", "HTTPS", "SPF", "CAA", "ANY"))
OTHER_QTYPE = -1
# Entries hit since the last fold at most: then they are folded at once, so a
# worker nobody asks for STATS (standalone) does not keep departed entries alive.
FOLD_AT = 4096


def qtype_label(bucket: int) -> str:
    return "other" if bucket == OTHER_QTYPE else dns.rdatatype.to_text(bucket)


class Stats:
    """Totals since this worker started. `per_query` False (standalone
    `--no-metrics`) skips the per-query counters, to measure what they cost.

    Cache hits are counted on their Entry (one attribute increment on the
    hit path) and folded in here when the entry leaves the cache (`retire`)
    or at the next fold(): each snapshot, or every FOLD_AT entries hit. An
    entry's first hit since a fold lists it for that fold (`touch`), so a
    snapshot costs the entries hit since the last one, not the whole cache
    (a walk of every entry was ~0.3 us each, every second: 30 ms of the
    event loop at 100,000 entries, queries waiting behind it)."""

    def __init__(self, per_query: bool = True) -> None:
        self.per_query = per_query
        # (is_udp, qtype bucket, rcode) -> count; names are made only when reported.
        self.queries: dict[tuple[bool, int, int], int] = {}
        self.cache_hits = 0                 # folded in from entries
        self.hit_entries: list[Entry] = []  # hit since the last fold (an entry may be listed twice)
        self.cache_misses = 0
        self.malformed = 0
        self.formerr = 0
        self.prefetches = 0

    def count(self, udp: bool, qtype: int, rcode: int, n: int = 1) -> None:
        key = (udp, qtype if qtype in COUNTED_QTYPES else OTHER_QTYPE, rcode & 0xF)
        self.queries[key] = self.queries.get(key, 0) + n

    def hit(self, entry: Entry, udp: bool) -> None:
        """A cache hit, counted on its entry."""
        if not (entry.udp_hits or entry.tcp_hits):
            self.touch(entry)
        if udp:
            entry.udp_hits += 1
        else:
            entry.tcp_hits += 1

    def touch(self, entry: Entry) -> None:
        """The entry's first hit since a fold: list it for the next one.
        Called before the hit is counted, so a fold here comes before the
        entry is listed (folded now, its count would start again unlisted)."""
        if len(self.hit_entries) >= FOLD_AT - 1:
            self.fold()
        self.hit_entries.append(entry)

    def fold(self) -> None:
        """Move the hit counts of the entries hit since the last fold into the totals."""
        listed, self.hit_entries = self.hit_entries, []
        for entry in listed:
            self.retire(entry)

    def retire(self, entry: Entry) -> None:
        """Fold the hit counts of an entry (it leaves the cache, or fold())."""
        if not (entry.udp_hits or entry.tcp_hits):     # a miss flood evicts entries nobody asked again
            return
        for udp, hits in ((True, entry.udp_hits), (False, entry.tcp_hits)):
            if hits:
                self.count(udp, entry.qtype, entry.rcode, hits)
                self.cache_hits += hits
        entry.udp_hits = entry.tcp_hits = 0

    def snapshot(self, identity: dict, cache: Cache, forwarder, resolver_counts: dict | None = None) -> dict:
        """STATS: identity (slot, generation, version) plus the counters;
        `resolver_counts` are the resolver's own (Resolver.counts())."""
        self.fold()
        queries = [["udp" if udp else "tcp", qtype_label(qtype), dns.rcode.to_text(rcode), n]
                   for (udp, qtype, rcode), n in sorted(self.queries.items())]
        return {
            keys.PID: os.getpid(), **identity,
            keys.QUERIES: queries,
            keys.QUERIES_TOTAL: sum(q[3] for q in queries),
            keys.CACHE_HITS: self.cache_hits, keys.CACHE_MISSES: self.cache_misses,
            keys.CACHE_EVICTIONS: cache.evictions, keys.CACHE_ENTRIES: len(cache),
            keys.CACHE_STALE_SERVED: cache.stale_served, keys.CACHE_PREFETCHES: self.prefetches,
            keys.MALFORMED: self.malformed, keys.FORMERR: self.formerr,
            keys.UNWANTED_REPLY_ACTIONS: forwarder.unwanted.actions,
            keys.MISSES_OVERLOADED: 0, keys.MISSES_QUEUED: 0, keys.PEER_DROPPED: 0, keys.PEER_FALLBACKS: 0,
            **(resolver_counts or {}),
            keys.UPSTREAM: forwarder.stats(),
        }
