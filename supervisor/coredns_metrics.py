"""The `coredns_*` metric family, as node-local-dns (CoreDNS with the
cache, forward and prometheus plugins) exports it, so its dashboards and
alerts keep working on twindns (`metrics_names = "coredns"` or `"both"`).

Names and label sets are CoreDNS's (plugin/metrics/vars, plugin/cache,
plugin/pkg/proxy, plus the older `coredns_forward_requests_total{to}`).
What twindns does not count the way CoreDNS does gets a fixed label value
(docs/config.md, "metrics_names", lists them): one `server` (the first
listen address, `dns://IP:PORT`) and one `zone`/`zones` ("."), because the
workers count per protocol, qtype and rcode but not per listen address or
zone; cache hits and entries are all `type="success"` (twindns keeps one
cache for positive and negative answers; the `denial` series exist at 0);
responses carry `plugin=""` and upstream latencies `rcode=""`.
"""
from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import Iterator

from prometheus_client.metrics_core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                            Metric)

VIEW = ""          # CoreDNS's `view` plugin label; node-local-dns uses no views


@dataclass(frozen=True)
class CorednsLabels:
    """The fixed label values of one node's series."""
    server: str = "dns://169.254.20.10:53"
    zone: str = "."
    family: str = "1"          # CoreDNS: "1" IPv4, "2" IPv6

    @classmethod
    def for_listen(cls, listen: tuple[str, ...], port: int) -> "CorednsLabels":
        ip = ipaddress.ip_address(listen[0])
        host = f"[{ip}]" if ip.version == 6 else str(ip)
        return cls(server=f"dns://{host}:{port}", family="2" if ip.version == 6 else "1")


def families(totals, cache_entries: int, version: str, labels: CorednsLabels) -> Iterator[Metric]:
    """The coredns_* families for `totals` (a metrics.Totals) and the node's cache size."""
    s, z = labels.server, labels.zone
    build = GaugeMetricFamily("coredns_build_info", "A metric with a constant '1' value labeled by version, "
                              "revision, and goversion from which CoreDNS was built.",
                              labels=["version", "revision", "goversion"])
    build.add_metric([f"twindns-{version}", "", ""], 1)
    yield build
    requests = CounterMetricFamily("coredns_dns_requests", "Counter of DNS requests made per zone, protocol and "
                                   "family.", labels=["server", "zone", "view", "proto", "family", "type"])
    responses = CounterMetricFamily("coredns_dns_responses", "Counter of response status codes.",
                                    labels=["server", "zone", "view", "rcode", "plugin"])
    by_type: dict[tuple[str, str], int] = {}
    by_rcode: dict[str, int] = {}
    for (proto, qtype, rcode), n in totals.queries.items():
        by_type[(proto, qtype)] = by_type.get((proto, qtype), 0) + n
        by_rcode[rcode] = by_rcode.get(rcode, 0) + n
    for (proto, qtype), n in sorted(by_type.items()):
        requests.add_metric([s, z, VIEW, proto, labels.family, qtype], n)
    for rcode, n in sorted(by_rcode.items()):
        responses.add_metric([s, z, VIEW, rcode, ""], n)
    yield requests
    yield responses
    yield from _cache(totals, cache_entries, labels)
    yield from _forward(totals)


def _cache(totals, cache_entries: int, labels: CorednsLabels) -> Iterator[Metric]:
    s, z = labels.server, labels.zone
    hits, misses = totals.scalars["cache_hits"], totals.scalars["cache_misses"]
    entries = GaugeMetricFamily("coredns_cache_entries", "The number of elements in the cache.",
                                labels=["server", "type", "zones", "view"])
    entries.add_metric([s, "denial", z, VIEW], 0)
    entries.add_metric([s, "success", z, VIEW], cache_entries)
    yield entries
    yield _counter("coredns_cache_requests", "The count of cache requests.", [s, z, VIEW], hits + misses)
    typed_hits = CounterMetricFamily("coredns_cache_hits", "The count of cache hits.",
                                     labels=["server", "type", "zones", "view"])
    typed_hits.add_metric([s, "denial", z, VIEW], 0)
    typed_hits.add_metric([s, "success", z, VIEW], hits)
    yield typed_hits
    yield _counter("coredns_cache_misses", "The count of cache misses. Deprecated, derive misses from cache "
                   "hits/requests counters.", [s, z, VIEW], misses)
    yield _counter("coredns_cache_prefetch", "The number of times the cache has prefetched a cached item.",
                   [s, z, VIEW], totals.scalars["cache_prefetches"])
    yield _counter("coredns_cache_served_stale", "The number of requests served from stale cache entries.",
                   [s, z, VIEW], totals.scalars["cache_stale_served"])
    evictions = CounterMetricFamily("coredns_cache_evictions", "The count of cache evictions.",
                                    labels=["server", "type", "zones", "view"])
    evictions.add_metric([s, "denial", z, VIEW], 0)
    evictions.add_metric([s, "success", z, VIEW], totals.scalars["cache_evictions"])
    yield evictions


def _counter(name: str, help_: str, values: list[str], n: int) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_, labels=["server", "zones", "view"])
    family.add_metric(values, n)
    return family


def _forward(totals) -> Iterator[Metric]:
    servers = sorted(totals.upstream_queries.keys() | totals.latency.keys())
    forwarded = CounterMetricFamily("coredns_forward_requests", "Counter of requests made per upstream.",
                                    labels=["to"])
    duration = HistogramMetricFamily("coredns_proxy_request_duration_seconds",
                                     "Histogram of the time each request took.", labels=["proxy_name", "to", "rcode"])
    failures = CounterMetricFamily("coredns_proxy_healthcheck_failures", "Counter of the number of failed "
                                   "healthchecks.", labels=["proxy_name", "to"])
    for server in servers:
        forwarded.add_metric([server], totals.upstream_queries[server])
        failures.add_metric(["forward", server], totals.upstream_errors[server])
        running, buckets = 0, []
        for bound, n in sorted(totals.latency.get(server, {}).items()):
            running += n
            buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), running))
        if not buckets or buckets[-1][0] != "+Inf":
            buckets.append(("+Inf", running))
        duration.add_metric(["forward", server, ""], buckets, totals.latency_sum[server])
    yield forwarded
    yield duration
    yield failures
    yield CounterMetricFamily("coredns_forward_healthcheck_broken", "Counter of the number of complete "
                              "failures of the healthchecks.", value=0)
