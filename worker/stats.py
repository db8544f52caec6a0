"""The worker's counters and their STATS form (docs/internals.md)."""
from __future__ import annotations

import os

import dns.rcode
import dns.rdatatype


class Stats:
    """Totals since this worker started. `per_query` False (standalone
    `--no-metrics`) skips the per-query counters, to measure what they cost."""

    def __init__(self, per_query: bool = True) -> None:
        self.per_query = per_query
        # (is_udp, qtype, rcode) -> count; names are made only when reported.
        self.queries: dict[tuple[bool, int, int], int] = {}
        self.cache_hits = 0
        self.cache_misses = 0
        self.malformed = 0
        self.formerr = 0

    def snapshot(self, identity: dict, cache, forwarder) -> dict:
        """STATS: identity (slot, generation, version) plus the counters."""
        queries = [["udp" if udp else "tcp", dns.rdatatype.to_text(qtype), dns.rcode.to_text(rcode), n]
                   for (udp, qtype, rcode), n in sorted(self.queries.items())]
        return {
            "pid": os.getpid(), **identity,
            "queries": queries,
            "queries_total": sum(q[3] for q in queries),
            "cache_hits": self.cache_hits, "cache_misses": self.cache_misses,
            "cache_evictions": cache.evictions, "cache_entries": len(cache),
            "malformed": self.malformed, "formerr": self.formerr,
            "upstream": forwarder.stats(),
        }
