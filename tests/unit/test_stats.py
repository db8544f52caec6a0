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
