"""The keys of a worker's STATS (docs/internals.md, "STATS"): written by
worker/stats.py, read by supervisor/metrics.py and the slot's status line."""

PID = "pid"
SLOT = "slot"
GENERATION = "generation"
VERSION = "version"
QUERIES = "queries"                     # [[protocol, qtype, rcode, count], ...]
QUERIES_TOTAL = "queries_total"
CACHE_ENTRIES = "cache_entries"         # a gauge: entries held now
UPSTREAM = "upstream"                   # one object per upstream server, keys UP_*

# Counters since the worker started; the supervisor sums them over workers.
CACHE_HITS = "cache_hits"
CACHE_MISSES = "cache_misses"
CACHE_EVICTIONS = "cache_evictions"
CACHE_PREFETCHES = "cache_prefetches"
CACHE_STALE_SERVED = "cache_stale_served"
MALFORMED = "malformed"
FORMERR = "formerr"
UNWANTED_REPLY_ACTIONS = "unwanted_reply_actions"   # times unwanted-reply-threshold was reached
MISSES_OVERLOADED = "misses_overloaded"   # misses answered SERVFAIL at once: max_concurrent in flight
MISSES_QUEUED = "misses_queued"           # misses that waited their turn: max_in_flight upstream
PEER_DROPPED = "peer_dropped"             # answers not passed to the other worker: the link was full
PEER_FALLBACKS = "peer_fallbacks"         # misses asked upstream after the owning worker stayed silent
PEER_ASKS = "peer_asks"                   # misses asked of the other worker: it was resolving them already
COUNTERS = (CACHE_HITS, CACHE_MISSES, CACHE_EVICTIONS, CACHE_PREFETCHES, CACHE_STALE_SERVED, MALFORMED, FORMERR,
            UNWANTED_REPLY_ACTIONS, MISSES_OVERLOADED, MISSES_QUEUED, PEER_DROPPED, PEER_FALLBACKS, PEER_ASKS)

UP_SERVER = "server"
UP_QUERIES = "queries"
UP_ERRORS = "errors"
UP_REJECTED = "rejected"
UP_LATENCY_BUCKETS = "latency_buckets"  # upper bounds in seconds; the last is +Inf (null)
UP_LATENCY_COUNTS = "latency_counts"
UP_LATENCY_SUM = "latency_sum"
