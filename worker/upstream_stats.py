"""Per-server upstream counters, in the shape of STATS["upstream"]
(docs/internals.md)."""
from __future__ import annotations

import bisect
import logging
import math
from dataclasses import dataclass, field

from contract import stats as keys

log = logging.getLogger(__name__)

# Upper bounds (seconds) of the latency histogram; one more count is +Inf.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# The shortest retransmission timeout: unbound's RTT_MIN_TIMEOUT. A server a
# millisecond away is asked again 50 ms after a lost datagram, not after half
# the zone's timeout (1 s by default) as before.
RTO_MIN = 0.05
RTO_BACKOFF_MAX = 64


@dataclass
class ServerStats:
    server: str                    # "ip:port" / "[v6]:port"
    queries: int = 0               # queries sent
    errors: int = 0                # sent queries that got no usable answer
    rejected: int = 0              # messages ignored as not answering our query
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    srtt: float = -1.0             # smoothed round trip (RFC 6298); < 0 before the first answer
    rttvar: float = 0.0
    backoff: int = 1               # doubled per silence, back to 1 on an answer (unbound's infra cache)

    def answered(self, seconds: float) -> None:
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        if self.srtt < 0:
            self.srtt, self.rttvar = seconds, seconds / 2
        else:
            self.rttvar += (abs(self.srtt - seconds) - self.rttvar) / 4
            self.srtt += (seconds - self.srtt) / 8
        self.backoff = 1

    def silent(self) -> None:
        """A query to this server went unanswered for its RTO: wait longer next time."""
        self.backoff = min(self.backoff * 2, RTO_BACKOFF_MAX)

    def rto(self, round_: int) -> float:
        """How long a query may wait for this server's answer before it (or the
        next server) is asked again, in a miss's `round_` of asks (1: the
        first): srtt + 4 x rttvar (RFC 6298), at least RTO_MIN, doubled per
        round and per recent silence; unknown (inf) before the first answer."""
        if self.srtt < 0:
            return math.inf
        return max(RTO_MIN, self.srtt + 4 * self.rttvar) * self.backoff * (1 << (round_ - 1))

    def count_rejected(self) -> None:
        self.rejected += 1

    def as_dict(self) -> dict:
        return {keys.UP_SERVER: self.server, keys.UP_QUERIES: self.queries, keys.UP_ERRORS: self.errors,
                keys.UP_REJECTED: self.rejected, keys.UP_LATENCY_BUCKETS: list(LATENCY_BUCKETS),
                keys.UP_LATENCY_COUNTS: list(self.latency_counts), keys.UP_LATENCY_SUM: self.latency_sum}


class UnwantedReplies:
    """unbound's unwanted-reply-threshold: every `threshold` upstream replies
    that answer nothing we asked (a poisoning attempt's flood), `epoch`
    moves on, and the resolver does not cache the answers that were in
    flight then. 0 turns it off."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.total = 0
        self.epoch = 0
        self.actions = 0

    def count(self, stats: ServerStats) -> None:
        """One unwanted reply from the server of `stats`."""
        stats.count_rejected()
        self.total += 1
        if self.threshold and self.total % self.threshold == 0:
            self.epoch += 1
            self.actions += 1
            log.warning("%d unwanted upstream replies (unwanted_reply_threshold %d): answers in flight "
                        "now are passed on but not cached", self.total, self.threshold)
