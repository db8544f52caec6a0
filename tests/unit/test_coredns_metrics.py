"""metrics_names: the coredns_* family node-local-dns dashboards read, with CoreDNS's names and labels."""
from __future__ import annotations

from supervisor.metrics import MetricsAggregator
from tests.unit.test_metrics import scrape, stats, value

S = {"server": "dns://169.254.20.10:53", "view": ""}


def test_coredns_names_and_labels():
    m = MetricsAggregator("1.2.3")
    m.set_names("coredns", ("169.254.20.10", "10.96.0.10"), 53)
    m.update_worker("A", 1, stats(queries=100, hits=80, entries=10))
    m.update_worker("B", 1, stats(queries=50, hits=40, entries=7, slot="B"))
    s = scrape(m)
    assert not any(name.startswith("twindns_") for name, _ in s)
    assert value(s, "coredns_dns_requests_total", **S, zone=".", proto="udp", family="1", type="A") == 97 + 47
    assert value(s, "coredns_dns_requests_total", **S, zone=".", proto="tcp", family="1", type="AAAA") == 6
    assert value(s, "coredns_dns_responses_total", **S, zone=".", rcode="NXDOMAIN", plugin="") == 6
    assert value(s, "coredns_cache_entries", **S, zones=".", type="success") == 17
    assert value(s, "coredns_cache_entries", **S, zones=".", type="denial") == 0
    assert value(s, "coredns_cache_hits_total", **S, zones=".", type="success") == 120
    assert value(s, "coredns_cache_misses_total", **S, zones=".") == 30
    assert value(s, "coredns_cache_requests_total", **S, zones=".") == 150
    assert value(s, "coredns_forward_requests_total", to="127.0.0.2:53") == 40
    assert value(s, "coredns_proxy_request_duration_seconds_count", proxy_name="forward", to="127.0.0.2:53",
                 rcode="") == 40
    assert value(s, "coredns_build_info", version="twindns-1.2.3", revision="", goversion="") == 1


def test_both_families_and_ipv6_server_label():
    m = MetricsAggregator("x")
    m.set_names("both", ("fd00::10",), 5353)
    m.update_worker("A", 1, stats())
    s = scrape(m)
    assert value(s, "twindns_cache_hits_total") == 80
    assert value(s, "coredns_dns_requests_total", server="dns://[fd00::10]:5353", view="", zone=".",
                 proto="udp", family="2", type="A") == 97


def test_default_is_twindns_only():
    m = MetricsAggregator("x")
    m.update_worker("A", 1, stats())
    assert not any(name.startswith("coredns_") for name, _ in scrape(m))
