"""Prometheus metrics for the whole node, aggregated over the workers.

Workers report STATS (docs/internals.md): totals since *that worker*
started. The aggregator keeps the latest STATS of every live worker, keyed by
(slot, generation) because during a rolling restart a slot briefly has two,
plus a base holding the final totals of every worker that has exited. An
exported counter is base + live, so it never goes backwards when a worker
is replaced.

The arbiter drives it:

    m = MetricsAggregator(version="0.1.0")
    m.update_worker("A", 3, stats)          # after each {"op": "stats"} reply
    m.set_dropped("A", 3, drops)            # health.socket_drops() summed over the worker's sockets
    m.worker_exited("A", 3, final_stats)    # final {"event": "stats"}, or None after a crash
    m.inc_worker_restart("crash")           # cause: a RestartCause value (rolling | crash | hang | boot)
    m.inc_rolling_restart(); m.inc_netsetup_repair(); m.set_workers_ready(2)
    body, content_type = m.render()         # for GET /metrics

Malformed STATS raise StatsError and change nothing.
"""
from __future__ import annotations

import math
from collections import Counter as Tally
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily, InfoMetricFamily, Metric)

from contract import stats as keys
from supervisor import coredns_metrics
from supervisor.states import RestartCause

PREFIX = "twindns"
# Scalar STATS counters and the name each is exported under.
_SCALARS = (
    (keys.CACHE_HITS, "cache_hits", "Answers served from the cache."),
    (keys.CACHE_MISSES, "cache_misses", "Queries that were not in the cache."),
    (keys.CACHE_EVICTIONS, "cache_evictions", "Cache entries evicted to stay within capacity."),
    (keys.CACHE_PREFETCHES, "cache_prefetches", "Popular entries refreshed from upstream before they expired."),
    (keys.CACHE_STALE_SERVED, "cache_stale_served",
     "Expired answers served again (RFC 8767, cached 30 s) because every upstream failed."),
    (keys.MALFORMED, "malformed_queries", "Datagrams dropped because no DNS header could be read."),
    (keys.FORMERR, "formerr_responses", "Malformed queries answered with FORMERR."),
    (keys.UNWANTED_REPLY_ACTIONS, "unwanted_reply_actions",
     "Times unwanted upstream replies reached [cache] unwanted_reply_threshold (answers then in flight not cached)."),
    (keys.MISSES_OVERLOADED, "misses_overloaded",
     "Misses answered SERVFAIL at once because [cache] max_concurrent distinct questions were in flight."),
    (keys.MISSES_QUEUED, "misses_queued",
     "Misses that waited their turn because [cache] max_in_flight misses were upstream."),
    (keys.PEER_DROPPED, "peer_dropped",
     "Answers a worker could not pass to the other worker because the link between them was full "
     "(ones it did not ask for; replies to its asks wait, up to ~8 MiB)."),
    (keys.PEER_FALLBACKS, "peer_fallbacks",
     "Misses a worker asked upstream itself because the worker that owns the name did not answer within "
     "the zone's timeout (+0.5 s), or sent nothing at all for 0.5 s (hung)."),
    (keys.PEER_ASKS, "peer_asks",
     "Misses a worker asked of the other worker instead of upstream, because that one was resolving the "
     "same name already (both missed it at once), so the pair asked upstream once."),
)
# The classic text format generate_latest() writes, which every Prometheus
# version scrapes (newer clients announce it as 1.0.0, unknown to older scrapers).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_ROWS = 10_000          # bounds what one STATS message may make us store


def _every_cause() -> Tally:
    """A restart counter per cause, present at 0 before the first one, so
    `rate()` and alerts see the series from the start."""
    return Tally({cause.value: 0 for cause in RestartCause})


class StatsError(ValueError):
    """A STATS object does not follow docs/internals.md."""


@dataclass
class Totals:
    """Counters summed over workers (one worker's STATS, or the base)."""
    queries: Tally = field(default_factory=Tally)             # (protocol, qtype, rcode) -> n
    scalars: Tally = field(default_factory=Tally)             # STATS key -> n
    upstream_queries: Tally = field(default_factory=Tally)    # server -> n
    upstream_errors: Tally = field(default_factory=Tally)
    upstream_rejected: Tally = field(default_factory=Tally)
    latency: dict[str, Tally] = field(default_factory=dict)   # server -> {upper bound: n}
    latency_sum: Tally = field(default_factory=Tally)         # server -> seconds
    dropped: int = 0

    def add(self, other: "Totals") -> None:
        self.queries.update(other.queries)
        self.scalars.update(other.scalars)
        self.upstream_queries.update(other.upstream_queries)
        self.upstream_errors.update(other.upstream_errors)
        self.upstream_rejected.update(other.upstream_rejected)
        for server, buckets in other.latency.items():
            self.latency.setdefault(server, Tally()).update(buckets)
        self.latency_sum.update(other.latency_sum)
        self.dropped += other.dropped

    def to_json(self) -> dict:
        return {"queries": [[*k, n] for k, n in self.queries.items()],
                "scalars": dict(self.scalars),
                "upstream_queries": dict(self.upstream_queries),
                "upstream_errors": dict(self.upstream_errors),
                "upstream_rejected": dict(self.upstream_rejected),
                # an upper bound of None is +Inf (JSON has no infinity)
                "latency": {s: [[None if b == math.inf else b, n] for b, n in t.items()]
                            for s, t in self.latency.items()},
                "latency_sum": dict(self.latency_sum), "dropped": self.dropped}

    @classmethod
    def from_json(cls, d: dict) -> "Totals":
        # .get: the snapshot may come from an older release that had fewer series
        return cls(Tally({(p, q, r): n for p, q, r, n in d.get("queries", [])}), Tally(d.get("scalars", {})),
                   Tally(d.get("upstream_queries", {})), Tally(d.get("upstream_errors", {})),
                   Tally(d.get("upstream_rejected", {})),
                   {s: Tally({math.inf if b is None else b: n for b, n in rows})
                    for s, rows in d.get("latency", {}).items()},
                   Tally(d.get("latency_sum", {})), d.get("dropped", 0))

    def at_least(self, other: "Totals") -> "Totals":
        """Per series, the larger of the two (Counter `|` is an elementwise max)."""
        latency = {s: self.latency.get(s, Tally()) | other.latency.get(s, Tally())
                   for s in self.latency.keys() | other.latency.keys()}
        return Totals(self.queries | other.queries, self.scalars | other.scalars,
                      self.upstream_queries | other.upstream_queries,
                      self.upstream_errors | other.upstream_errors,
                      self.upstream_rejected | other.upstream_rejected, latency,
                      self.latency_sum | other.latency_sum, max(self.dropped, other.dropped))


@dataclass
class LiveWorker:
    slot: str
    totals: Totals
    cache_entries: int


def parse_stats(stats: Any) -> tuple[Totals, int]:
    """Validate one STATS object; return its counters and cache_entries."""
    if not isinstance(stats, Mapping):
        raise StatsError("STATS: expected a JSON object")
    t = Totals()
    rows = _list(stats, keys.QUERIES)
    if len(rows) > MAX_ROWS:
        raise StatsError(f"STATS.queries: more than {MAX_ROWS} rows")
    for row in rows:
        if (not isinstance(row, list) or len(row) != 4
                or not all(isinstance(x, str) and len(x) <= 32 for x in row[:3])):
            raise StatsError(f"STATS.queries: bad row {row!r}: expected [protocol, qtype, rcode, count]")
        t.queries[(row[0], row[1], row[2])] += _count(row[3], "queries[].count")
    for key, _, _ in _SCALARS:
        t.scalars[key] = _count(stats.get(key, 0), key)
    servers = _list(stats, keys.UPSTREAM)
    if len(servers) > MAX_ROWS:
        raise StatsError(f"STATS.upstream: more than {MAX_ROWS} servers")
    for up in servers:
        _add_upstream(t, up)
    return t, _count(stats.get(keys.CACHE_ENTRIES, 0), keys.CACHE_ENTRIES)


def _add_upstream(t: Totals, up: Any) -> None:
    if not isinstance(up, Mapping) or not isinstance(up.get(keys.UP_SERVER), str):
        raise StatsError(f"STATS.upstream: bad entry {up!r}: expected an object with a server")
    server = up[keys.UP_SERVER]
    t.upstream_queries[server] += _count(up.get(keys.UP_QUERIES, 0), "upstream[].queries")
    t.upstream_errors[server] += _count(up.get(keys.UP_ERRORS, 0), "upstream[].errors")
    t.upstream_rejected[server] += _count(up.get(keys.UP_REJECTED, 0), "upstream[].rejected")
    bounds, counts = up.get(keys.UP_LATENCY_BUCKETS, []), up.get(keys.UP_LATENCY_COUNTS, [])
    if (not isinstance(bounds, list) or not isinstance(counts, list)
            or len(counts) != len(bounds) + 1 or len(bounds) > 64):
        raise StatsError(f"STATS.upstream[{server}]: latency_counts must have one more element than latency_buckets")
    buckets = t.latency.setdefault(server, Tally())
    for bound, n in zip([*bounds, math.inf], counts):
        if not isinstance(bound, (int, float)) or isinstance(bound, bool):
            raise StatsError(f"STATS.upstream[{server}].latency_buckets: {bound!r} is not a number")
        buckets[float(bound)] += _count(n, "upstream[].latency_counts")
    total = up.get(keys.UP_LATENCY_SUM, 0.0)
    if not isinstance(total, (int, float)) or isinstance(total, bool) or total < 0:
        raise StatsError(f"STATS.upstream[{server}].latency_sum: expected seconds >= 0")
    t.latency_sum[server] += float(total)


def _list(stats: Mapping, key: str) -> list:
    value = stats.get(key, [])
    if not isinstance(value, list):
        raise StatsError(f"STATS.{key}: expected a list")
    return value


def _count(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise StatsError(f"STATS.{what}: {value!r}: expected an integer >= 0")
    return value


class MetricsAggregator:
    """Node-wide metrics on a private CollectorRegistry (never the global one)."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.registry = CollectorRegistry(auto_describe=False)
        self._live: dict[tuple[str, int], LiveWorker] = {}
        self._base = Totals()
        # Highest exited generation per slot: a late reply from a worker that
        # is already folded into the base must not be counted twice.
        self._exited_upto: dict[str, int] = {}
        self.restarts: Tally = _every_cause()      # cause -> n; 0 samples from the start
        self.rolling_restarts = 0
        self.netsetup_repairs = 0
        self.workers_ready = 0
        self.config_file_valid = True
        self.config_fallback = False
        self.names = "twindns"                     # config metrics_names: twindns | coredns | both
        self.coredns_labels = coredns_metrics.CorednsLabels()
        self.registry.register(_Collector(self))

    def set_names(self, names: str, listen: tuple[str, ...], port: int) -> None:
        """Which families /metrics serves (config `metrics_names`), and the coredns_* server label."""
        self.names = names
        self.coredns_labels = coredns_metrics.CorednsLabels.for_listen(listen, port)

    # -- fed by the arbiter --------------------------------------------------
    def update_worker(self, slot: str, generation: int, stats: Any) -> None:
        """Record the latest STATS of a live worker."""
        totals, entries = parse_stats(stats)
        if generation <= self._exited_upto.get(slot, -1):
            return
        key = (slot, generation)
        old = self._live.get(key)
        if old is not None:
            totals.dropped = old.totals.dropped
        self._live[key] = LiveWorker(slot, totals, entries)

    def set_dropped(self, slot: str, generation: int, dropped: int) -> None:
        """Receive-queue drops of this worker's UDP sockets (a running total)."""
        if generation <= self._exited_upto.get(slot, -1):
            return
        worker = self._live.setdefault((slot, generation), LiveWorker(slot, Totals(), 0))
        worker.totals.dropped = max(worker.totals.dropped, _count(dropped, "dropped"))

    def worker_exited(self, slot: str, generation: int, final_stats: Any | None) -> None:
        """Fold an exited worker's totals into the base: its final STATS when it
        sent them, else the last ones seen (a crash loses only the difference).
        Malformed final STATS are ignored (the last good ones count)."""
        worker = self._live.pop((slot, generation), None)
        if generation <= self._exited_upto.get(slot, -1):
            return
        self._exited_upto[slot] = generation
        totals = worker.totals if worker is not None else Totals()
        if final_stats is not None:
            try:
                totals = totals.at_least(parse_stats(final_stats)[0])
            except StatsError:
                pass
        self._base.add(totals)

    def inc_worker_restart(self, cause: str) -> None:
        self.restarts[cause] += 1

    def inc_rolling_restart(self) -> None:
        self.rolling_restarts += 1

    def inc_netsetup_repair(self) -> None:
        self.netsetup_repairs += 1

    def set_workers_ready(self, n: int) -> None:
        self.workers_ready = n

    def set_config_state(self, file_valid: bool, fallback: bool) -> None:
        self.config_file_valid, self.config_fallback = file_valid, fallback

    # -- across a supervisor re-exec (`twindns upgrade`) ---------------------------
    def snapshot(self) -> dict:
        """Everything not re-learnt from the live workers, JSON-serialisable."""
        return {"base": self._base.to_json(), "exited_upto": dict(self._exited_upto),
                "restarts": dict(self.restarts), "rolling_restarts": self.rolling_restarts,
                "netsetup_repairs": self.netsetup_repairs}

    def restore(self, snap: dict) -> None:
        """Continue from a previous image's snapshot(); live workers report again."""
        self._base = Totals.from_json(snap.get("base", {}))
        self._exited_upto = dict(snap.get("exited_upto", {}))
        self.restarts = _every_cause()
        self.restarts.update(snap.get("restarts", {}))
        self.rolling_restarts = snap.get("rolling_restarts", 0)
        self.netsetup_repairs = snap.get("netsetup_repairs", 0)

    # -- read ------------------------------------------------------------------
    def totals(self) -> Totals:
        """Base plus every live worker: what the counters export."""
        t = Totals()
        t.add(self._base)
        for worker in self._live.values():
            t.add(worker.totals)
        return t

    def cache_entries(self) -> dict[str, int]:
        """Entries per slot (both generations of a slot during a handover)."""
        out: Tally = Tally()
        for worker in self._live.values():
            out[worker.slot] += worker.cache_entries
        return dict(out)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE


class _Collector:
    """Turns the aggregator's state into metric families at scrape time."""

    def __init__(self, agg: MetricsAggregator) -> None:
        self._agg = agg

    def collect(self) -> Iterator[Metric]:
        agg, t = self._agg, self._agg.totals()
        if agg.names != "coredns":
            yield from self._twindns(agg, t)
        if agg.names != "twindns":
            yield from coredns_metrics.families(t, sum(agg.cache_entries().values()), agg.version,
                                                agg.coredns_labels)

    def _twindns(self, agg: MetricsAggregator, t: Totals) -> Iterator[Metric]:
        yield InfoMetricFamily(f"{PREFIX}_build", "twindns build information.",
                               value={"version": agg.version})
        restarts = CounterMetricFamily(f"{PREFIX}_worker_restarts", "Worker replacements by cause.",
                                       labels=["cause"])
        for cause, n in sorted(agg.restarts.items()):
            restarts.add_metric([cause], n)
        yield restarts
        yield CounterMetricFamily(f"{PREFIX}_rolling_restarts", "Completed rolling restarts.",
                                  value=agg.rolling_restarts)
        yield CounterMetricFamily(f"{PREFIX}_netsetup_repairs",
                                  "Times the network state was found changed and put back.",
                                  value=agg.netsetup_repairs)
        yield GaugeMetricFamily(f"{PREFIX}_workers_ready", "Workers answering their probe.",
                                value=agg.workers_ready)
        yield GaugeMetricFamily(f"{PREFIX}_config_file_valid",
                                "1 when the config file on disk is valid (0: the next reload or start "
                                "would refuse it).", value=int(agg.config_file_valid))
        yield GaugeMetricFamily(f"{PREFIX}_config_last_accepted_running",
                                "1 when twindns runs its last accepted config because the file is invalid.",
                                value=int(agg.config_fallback))
        queries = CounterMetricFamily(f"{PREFIX}_queries", "DNS queries answered.",
                                      labels=["protocol", "qtype", "rcode"])
        for (proto, qtype, rcode), n in sorted(t.queries.items()):
            queries.add_metric([proto, qtype, rcode], n)
        yield queries
        for key, name, help_ in _SCALARS:
            yield CounterMetricFamily(f"{PREFIX}_{name}", help_, value=t.scalars[key])
        entries = GaugeMetricFamily(f"{PREFIX}_cache_entries", "Entries in the cache.", labels=["slot"])
        for slot, n in sorted(agg.cache_entries().items()):
            entries.add_metric([slot], n)
        yield entries
        yield CounterMetricFamily(f"{PREFIX}_udp_dropped_datagrams",
                                  "Datagrams the kernel dropped because a worker's receive queue was full.",
                                  value=t.dropped)
        yield from _upstream_families(t)


def _upstream_families(t: Totals) -> Iterator[Metric]:
    queries = CounterMetricFamily(f"{PREFIX}_upstream_queries", "Queries sent upstream.", labels=["server"])
    errors = CounterMetricFamily(f"{PREFIX}_upstream_errors",
                                 "Upstream queries that failed (timeout, refused, bad answer).",
                                 labels=["server"])
    rejected = CounterMetricFamily(f"{PREFIX}_upstream_rejected",
                                   "Upstream messages ignored: source, ID or question did not match "
                                   "(late, or spoofed).", labels=["server"])
    latency = HistogramMetricFamily(f"{PREFIX}_upstream_latency_seconds",
                                    "Upstream answer time.", labels=["server"])
    for server in sorted(t.upstream_queries.keys() | t.latency.keys()):
        queries.add_metric([server], t.upstream_queries[server])
        errors.add_metric([server], t.upstream_errors[server])
        rejected.add_metric([server], t.upstream_rejected[server])
        running, buckets = 0, []
        for bound, n in sorted(t.latency.get(server, {}).items()):
            running += n
            buckets.append(("+Inf" if bound == math.inf else _le(bound), running))
        if not buckets or buckets[-1][0] != "+Inf":
            buckets.append(("+Inf", running))
        latency.add_metric([server], buckets, t.latency_sum[server])
    yield queries
    yield errors
    yield rejected
    yield latency


def _le(bound: float) -> str:
    return repr(float(bound))
