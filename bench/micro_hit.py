#!/usr/bin/env python3
"""Microbenchmark of the worker's hit path in-process (no sockets, no root):
nanoseconds per answer() for the shapes the fast path recognises and for the
full-parse path, with and without per-query counters.

    python3 bench/micro_hit.py

Use it to compare a change to worker/answer.py before running the full
dnsperf comparison (bench/bench_cache.py), whose figures are dominated by
kernel socket costs and by how busy the machine is.
"""
from __future__ import annotations

import time

import dns.flags
import dns.message
import dns.rrset

from worker import wire
from worker.answer import Answerer
from worker.cache import Cache
from worker.response import entry_from_response
from worker.config import CacheConfig
from worker.stats import Stats

ROUNDS = 200_000


def cached(cache: Cache, name: str, **query_kw) -> bytes:
    """Store an answer for name and return a client query for it."""
    data = dns.message.make_query(name, "A", **query_kw).to_wire()
    q = wire.parse_query(data)
    upstream = dns.message.make_query(name.lower(), "A", use_edns=0, want_dnssec=q.do)
    reply = dns.message.make_response(upstream)
    reply.answer.append(dns.rrset.from_text(name.lower(), 3600, "IN", "A", "192.0.2.1"))
    cache.put(q.key, entry_from_response(reply.to_wire(), 0.0, CacheConfig(), None, q.do))
    return data


def per_call_ns(fn, *args) -> float:
    start = time.perf_counter()
    for _ in range(ROUNDS):
        fn(*args)
    return (time.perf_counter() - start) / ROUNDS * 1e9


def main() -> None:
    shapes = {
        "no EDNS": dict(use_edns=False),
        "EDNS + DO": dict(use_edns=0, want_dnssec=True),
        "mixed case": dict(use_edns=False),
        "EDNS, RD=0 (slow splice)": dict(use_edns=0, flags=0),
    }
    for per_query in (True, False):
        cache = Cache(1000)
        answerer = Answerer(cache, None, Stats(per_query=per_query))
        for label, kw in shapes.items():
            name = "MiXeD.hit.test." if label == "mixed case" else "h1.hit.test."
            data = cached(cache, name, **kw)
            ns = per_call_ns(answerer.answer, data, True, None, None, 1.0)
            print(f"answer() {label:26} metrics={'on ' if per_query else 'off'} {ns:6.0f} ns")
    data = dns.message.make_query("h1.hit.test", "A", use_edns=0).to_wire()
    print(f"wire.parse_query() (the full parse)               {per_call_ns(wire.parse_query, data):6.0f} ns")


if __name__ == "__main__":
    main()
