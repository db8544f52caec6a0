"""MetricsAggregator: STATS in, Prometheus text out; totals never go backwards."""
from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.metrics import MetricsAggregator, StatsError

BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]


def stats(queries=100, hits=80, entries=10, up_queries=20, errors=0, counts=None, slot="A", gen=1):
    return {
        "pid": 1, "slot": slot, "generation": gen, "version": "0.1.0",
        "queries": [["udp", "A", "NOERROR", queries - min(3, queries)],
                    ["tcp", "AAAA", "NXDOMAIN", min(3, queries)]],
        "queries_total": queries, "cache_hits": hits, "cache_misses": queries - hits,
        "cache_evictions": 1, "cache_entries": entries, "malformed": 2, "formerr": 1,
        "upstream": [{"server": "127.0.0.2:53", "queries": up_queries, "errors": errors, "rejected": 2,
                      "latency_buckets": BUCKETS,
                      "latency_counts": counts or [up_queries] + [0] * 12,
                      "latency_sum": 0.0005 * up_queries}],
    }


def scrape(m: MetricsAggregator) -> dict[tuple, float]:
    body, ctype = m.render()
    assert ctype.startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


def test_series_from_one_worker():
    m = MetricsAggregator("1.2.3")
    m.update_worker("A", 1, stats())
    s = scrape(m)
    assert value(s, "twindns_queries_total", protocol="udp", qtype="A", rcode="NOERROR") == 97
    assert value(s, "twindns_queries_total", protocol="tcp", qtype="AAAA", rcode="NXDOMAIN") == 3
    assert value(s, "twindns_cache_hits_total") == 80
    assert value(s, "twindns_cache_misses_total") == 20
    assert value(s, "twindns_cache_evictions_total") == 1
    assert value(s, "twindns_cache_entries", slot="A") == 10
    assert value(s, "twindns_upstream_queries_total", server="127.0.0.2:53") == 20
    assert value(s, "twindns_upstream_errors_total", server="127.0.0.2:53") == 0
    assert value(s, "twindns_upstream_rejected_total", server="127.0.0.2:53") == 2
    assert value(s, "twindns_upstream_latency_seconds_bucket", server="127.0.0.2:53", le="0.001") == 20
    assert value(s, "twindns_upstream_latency_seconds_bucket", server="127.0.0.2:53", le="+Inf") == 20
    assert value(s, "twindns_upstream_latency_seconds_count", server="127.0.0.2:53") == 20
    assert value(s, "twindns_build_info", version="1.2.3") == 1


def test_histogram_buckets_are_cumulative():
    m = MetricsAggregator("x")
    m.update_worker("A", 1, stats(up_queries=6, counts=[1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]))
    s = scrape(m)
    assert value(s, "twindns_upstream_latency_seconds_bucket", server="127.0.0.2:53", le="0.001") == 1
    assert value(s, "twindns_upstream_latency_seconds_bucket", server="127.0.0.2:53", le="0.0025") == 3
    assert value(s, "twindns_upstream_latency_seconds_bucket", server="127.0.0.2:53", le="5.0") == 3
    assert value(s, "twindns_upstream_latency_seconds_bucket", server="127.0.0.2:53", le="+Inf") == 6


def test_two_workers_are_summed_and_entries_are_per_slot():
    m = MetricsAggregator("x")
    m.update_worker("A", 1, stats(queries=100, entries=10))
    m.update_worker("B", 2, stats(queries=50, hits=40, entries=7, slot="B", gen=2))
    s = scrape(m)
    assert value(s, "twindns_cache_hits_total") == 120
    assert value(s, "twindns_cache_entries", slot="A") == 10
    assert value(s, "twindns_cache_entries", slot="B") == 7


def test_totals_never_go_backwards_across_a_replacement():
    m = MetricsAggregator("x")
    m.update_worker("A", 1, stats(queries=100, hits=80))
    m.update_worker("B", 2, stats(queries=10, hits=5, slot="B", gen=2))
    before = scrape(m)
    # rolling restart of slot A: generation 3 starts while 1 drains
    m.update_worker("A", 3, stats(queries=0, hits=0, up_queries=0))
    m.worker_exited("A", 1, stats(queries=130, hits=100))
    m.update_worker("A", 3, stats(queries=5, hits=5, up_queries=0))
    after = scrape(m)
    for key, v in before.items():
        if key[0].endswith("_total") or key[0].endswith("_bucket") or key[0].endswith("_count"):
            assert after[key] >= v, key
    assert value(after, "twindns_cache_hits_total") == 100 + 5 + 5
    # a crash: no final STATS, the last ones seen are kept
    m.worker_exited("A", 3, None)
    assert value(scrape(m), "twindns_cache_hits_total") == 100 + 5 + 5


def test_late_or_lower_reports_do_not_move_totals():
    m = MetricsAggregator("x")
    m.update_worker("A", 1, stats(queries=100, hits=80))
    m.worker_exited("A", 1, stats(queries=50, hits=40))   # lower than already exported
    assert value(scrape(m), "twindns_cache_hits_total") == 80
    m.update_worker("A", 1, stats(queries=200, hits=190))  # reply that arrived after the exit
    m.worker_exited("A", 1, None)
    assert value(scrape(m), "twindns_cache_hits_total") == 80


def test_dropped_datagrams_survive_replacement():
    m = MetricsAggregator("x")
    m.update_worker("A", 1, stats())
    m.set_dropped("A", 1, 12)
    m.update_worker("A", 1, stats())   # new STATS do not reset the drop count
    assert value(scrape(m), "twindns_udp_dropped_datagrams_total") == 12
    m.worker_exited("A", 1, stats())
    m.set_dropped("A", 2, 3)
    assert value(scrape(m), "twindns_udp_dropped_datagrams_total") == 15


def test_supervisor_counters():
    m = MetricsAggregator("x")
    m.inc_worker_restart("crash")
    m.inc_worker_restart("crash")
    m.inc_worker_restart("hang")
    m.inc_rolling_restart()
    m.inc_netsetup_repair()
    m.set_workers_ready(2)
    s = scrape(m)
    assert value(s, "twindns_worker_restarts_total", cause="crash") == 2
    assert value(s, "twindns_worker_restarts_total", cause="hang") == 1
    assert value(s, "twindns_rolling_restarts_total") == 1
    assert value(s, "twindns_netsetup_repairs_total") == 1
    assert value(s, "twindns_workers_ready") == 2


@pytest.mark.parametrize("bad, message", [
    ([], "JSON object"),
    ({"queries": "lots"}, "queries: expected a list"),
    ({"queries": [["udp", "A", "NOERROR", -1]]}, "integer >= 0"),
    ({"queries": [["udp", "A", 5]]}, "bad row"),
    ({"cache_hits": 1.5}, "cache_hits"),
    ({"cache_hits": True}, "cache_hits"),
    ({"upstream": [{"server": "x", "latency_buckets": [1], "latency_counts": [1]}]}, "one more element"),
    ({"upstream": [{"queries": 1}]}, "server"),
])
def test_malformed_stats_are_rejected_and_change_nothing(bad, message):
    m = MetricsAggregator("x")
    m.update_worker("A", 1, stats())
    before = scrape(m)
    with pytest.raises(StatsError, match=message):
        m.update_worker("A", 1, bad)
    assert scrape(m) == before


def test_snapshot_restore_keeps_every_counter(tmp_path):
    import json
    m = MetricsAggregator("x")
    m.update_worker("A", 1, stats(queries=100, hits=80, counts=[1, 2] + [0] * 10 + [17]))
    m.set_dropped("A", 1, 4)
    m.worker_exited("A", 1, None)
    m.update_worker("A", 2, stats(queries=7, hits=7))
    m.inc_worker_restart("crash")
    m.inc_rolling_restart()
    m.inc_netsetup_repair()
    before = scrape(m)
    # through JSON, as across the supervisor's re-exec; the live worker reports again
    fresh = MetricsAggregator("x")
    fresh.restore(json.loads(json.dumps(m.snapshot())))
    fresh.update_worker("A", 2, stats(queries=7, hits=7))
    assert scrape(fresh) == before
    fresh.update_worker("A", 1, stats(queries=500, hits=500))   # already folded: ignored
    assert scrape(fresh) == before


def test_restore_accepts_an_older_snapshot_with_fewer_series():
    m = MetricsAggregator("x")
    m.restore({"base": {"queries": [["udp", "A", "NOERROR", 5]]}, "restarts": {"crash": 1}})
    s = scrape(m)
    assert value(s, "twindns_queries_total", protocol="udp", qtype="A", rcode="NOERROR") == 5
    assert value(s, "twindns_worker_restarts_total", cause="crash") == 1
