"""The miss path: one upstream query per distinct key in flight, shared by
every client that asks the same question meanwhile; the answer is stored and
handed to each waiting client.

It works on wire bytes and callbacks: the upstream query is built from the
client's parsed question, the answer is checked and stored without a
dnspython message, and no Future or Task is made per miss. dnspython is left
for the rare local answers (class CH).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from contract import stats as stats_keys
from worker import scrub, wire
from worker.cache import Cache, Entry
from worker.peer_misses import PeerMisses
from worker.response import entry_from_response
from worker.config import CacheConfig, HeaderRule, zone_labels
from worker.upstream import Forwarder
from worker.upstream_query import UpstreamQuery

log = logging.getLogger(__name__)

Waiter = Callable[[Entry], None]

# Distinct questions waiting or in flight upstream at most (default of
# [cache] max_concurrent). Past it a miss is answered SERVFAIL at once: a
# flood of unique names (or a slow upstream) must not grow memory or the
# wait without bound; CoreDNS's max_concurrent, unbound's num-queries-per-thread.
MAX_PENDING = 2048
# New misses sent upstream per turn of the event loop. The client sockets are
# read between turns (64 datagrams a batch), so under a miss flood the hits
# queued behind the misses are answered at read speed, not at miss speed.
MISSES_PER_TURN = 16
# Local answers and SERVFAILs are made per miss and never stored.
UNCACHED = CacheConfig(servfail_ttl=0)


class LocalAnswers:
    """Names the worker answers itself (class CH): the supervisor's readiness
    probe `ready.twindns. CH TXT`; other CH questions are REFUSED."""

    PROBE = dns.name.from_text("ready.twindns.")

    def __init__(self, identity: str) -> None:
        self.identity = identity
        # The probe's reply (ID 0) per cache key (its flags: 4 at most), built once:
        # made with dnspython at every probe it cost a worker ~1 ms of a cold
        # interpreter each probe_interval, a stall of every hit queued behind it
        # (the pair's hit p99 at 20,000 qps, bench/miss_latency.py --hit).
        self.probe_replies: dict[bytes, bytes] = {}

    def reply(self, q: wire.Question) -> bytes:
        """The reply (ID 0) to q, a class CH question."""
        reply = self.probe_replies.get(q.key)
        if reply is None:
            # From the bytes we would send upstream (rare but for the probe, so dnspython may parse it).
            query = dns.message.from_wire(UpstreamQuery.from_question(q).wire(0))
            reply = self.answer(query)
            if query.question[0].name == self.PROBE and query.question[0].rdtype == dns.rdatatype.TXT:
                self.probe_replies[q.key] = reply
        return reply

    def answer(self, query: dns.message.Message) -> bytes:
        reply = dns.message.make_response(query)
        q = query.question[0]
        if q.name == self.PROBE and q.rdtype == dns.rdatatype.TXT:
            reply.answer.append(dns.rrset.from_text(q.name, 0, "CH", "TXT", f'"{self.identity}"'))
        else:
            reply.set_rcode(dns.rcode.REFUSED)
        return reply.to_wire()


def servfail_response(q: wire.Question) -> bytes:
    """What an upstream's SERVFAIL to our query for q would be: header
    (QR, RD, RA, the client's CD) and question."""
    flags = bytes((wire.FLAG_QR | wire.FLAG_RD,
                   wire.FLAG_RA | (wire.FLAG_CD if q.cd else 0) | wire.RCODE_SERVFAIL))
    return b"\x00\x00" + flags + b"\x00\x01\x00\x00\x00\x00\x00\x00" + wire.key_question(q.key)


class Resolver(PeerMisses):
    """Fills the cache from upstream. Made inside the running event loop."""

    def __init__(self, forwarder: Forwarder, cache: Cache, policy: CacheConfig,
                 headers: Sequence[HeaderRule], local: LocalAnswers,
                 max_pending: int = MAX_PENDING) -> None:
        self.forwarder = forwarder
        self.loop = asyncio.get_running_loop()     # kept: each get_running_loop() calls getpid()
        self.max_pending = max_pending
        # Misses asked upstream at once ([cache] max_in_flight); more wait in `queued`, in order.
        self.in_flight = 0
        self.cache = cache
        self.policy = policy
        self.headers = {zone_labels(r.zone): r for r in headers}
        self.header_depth = max(map(len, self.headers), default=0)
        self.local = local
        # Key -> the clients waiting for its answer, while its query waits or is upstream.
        self.pending: dict[bytes, list[Waiter]] = {}
        self.queued: deque[tuple[wire.Question, bool]] = deque()   # misses not yet sent (and: a refresh?)
        self.zone_wires: dict[str, bytes] = {}          # upstream zone -> its name wire, for scrub
        # Key -> the forwarder's unwanted.epoch when its query was sent (unwanted_reply_threshold).
        self.epochs: dict[bytes, int] = {}
        unwanted = getattr(forwarder, "unwanted", None)     # absent in test doubles
        self.track_unwanted = unwanted is not None and bool(unwanted.threshold)
        # With zone "." alone every answer is in its zone: nothing to scrub (see _scrubbed).
        self.scrubbing = not getattr(forwarder, "root_only", False)
        self.sending = False                            # a _send_queued turn is scheduled
        self._init_peer_state(forwarder)               # PeerMisses: the other worker of the pair
        self.upstream_failures = 0
        # Misses refused at max_pending, ours and the peer's (each answered SERVFAIL at once):
        # the one count behind STATS misses_overloaded.
        self.overloaded = 0
        # Misses held in `queued` because max_in_flight were upstream (STATS misses_queued), each
        # counted once: the first `blocked` of the queue are counted already.
        self.waited = 0
        self.blocked = 0

    def counts(self) -> dict:
        """The resolver's STATS counters (worker/stats.py)."""
        peer = self.peer_counts
        return {stats_keys.MISSES_OVERLOADED: self.overloaded, stats_keys.MISSES_QUEUED: self.waited,
                stats_keys.PEER_DROPPED: peer.dropped,
                stats_keys.PEER_FALLBACKS: peer.fallbacks, stats_keys.PEER_ASKS: peer.asks}

    def miss(self, q: wire.Question, waiter: Waiter, refresh: bool = False) -> bool:
        """Call waiter(entry) once an answer for q is known (it always is:
        an upstream failure gives a SERVFAIL entry), never before miss()
        returns. False, and no call, when max_pending distinct questions are
        already in flight."""
        waiters = self.pending.get(q.key)
        if waiters is not None:
            waiters.append(waiter)
            return True
        if len(self.pending) >= self.max_pending and q.qclass != wire.CLASS_CH:
            # CH (the supervisor's readiness probe) is answered locally at once: a worker
            # at its bound is busy, not hung, and must not be restarted as one.
            if not refresh:     # a refused prefetch answers nobody SERVFAIL
                self.overloaded += 1
            return False
        self.pending[q.key] = [waiter]
        try:
            if q.qclass == wire.CLASS_CH:       # the supervisor's probe: never behind a miss flood
                asyncio.get_running_loop().call_soon(self._finish, q.key, self._local(q))
                return True
        except Exception:  # noqa: BLE001 - waiters must always get an answer
            log.exception("miss path failed for %r", q.key)
            asyncio.get_running_loop().call_soon(self._finish, q.key, self._servfail(q))
            return True
        self.queued.append((q, refresh))
        if not self.sending:
            self.sending = True
            self.loop.call_soon(self._send_queued)
        return True

    def _send_queued(self) -> None:
        """Send up to MISSES_PER_TURN queued misses upstream, the rest next
        turn; at max_in_flight, the rest when a miss in flight is done."""
        queued, loop = self.queued, self.loop
        for _ in range(min(MISSES_PER_TURN, len(queued))):
            if self.in_flight >= self.policy.max_in_flight:
                self.waited += len(queued) - self.blocked
                self.blocked = len(queued)
                self.sending = False        # _done() sends on
                return
            q, refresh = queued.popleft()
            if self.blocked:
                self.blocked -= 1
            if self.track_unwanted:
                self.epochs[q.key] = self.forwarder.unwanted.epoch
            try:
                self._forward(q, refresh)
                if self.policy.stale_client_timeout and self._has_stale(q.key):
                    loop.call_later(self.policy.stale_client_timeout, self._stale_early, q.key)
            except Exception:  # noqa: BLE001 - waiters must always get an answer
                log.exception("miss path failed for %r", q.key)
                loop.call_soon(self._finish, q.key, self._servfail(q))
        if queued:
            loop.call_soon(self._send_queued)
        else:
            self.sending = False

    def _upstream(self, q: wire.Question) -> None:
        self.forwarder.ask(UpstreamQuery.from_question(q), lambda answer: self._answered(q, answer))
        self.in_flight += 1         # after ask(): it never answers before it returns

    def _has_stale(self, key: bytes) -> bool:
        entry = self.cache.entries.get(key)
        return entry is not None and entry.stale_until is not None and entry.expires <= time.monotonic()

    def _stale_early(self, key: bytes) -> None:
        """The upstream is slow to refresh an expired answer: its waiters get
        the stale one now (RFC 8767 section 5, unbound's
        serve-expired-client-timeout); the refresh goes on and replaces it."""
        waiters = self.pending.get(key)
        if not waiters:
            return
        entry = self.cache.stale(key, time.monotonic())
        if entry is None:
            return
        self.pending[key] = []          # later askers hit the stale copy until the refresh lands
        for waiter in waiters:
            try:
                waiter(entry)
            except Exception:  # noqa: BLE001 - one client's failure must not cost the others theirs
                log.exception("answering a client for %r failed", key)

    def prefetch(self, key: bytes) -> None:
        """Refresh a popular entry before it expires: a miss nobody waits
        for, whose answer replaces the entry (a failure leaves it alone)."""
        if key in self.pending or len(self.pending) >= self.max_pending:
            return
        self.miss(wire.question_from_key(key), lambda entry: None, refresh=True)

    def _answered(self, q: wire.Question, answer: bytes | None) -> None:
        """The forwarder's outcome for q: scrub it, follow a CNAME out of the
        zone, store it, hand it to the waiters and tell the peer."""
        try:
            if answer is not None and self.scrubbing:
                answer, follow, parsed = self._scrubbed(wire.key_qname(q.key), answer)
                if follow is not None and scrub.target_type(q.qtype):
                    target = UpstreamQuery(follow, q.qtype, q.qclass, q.do, q.cd)
                    self.forwarder.ask(target, lambda t: self._followed(q, answer, follow, t))
                    return
                entry = self._entry(q, answer, parsed)
            else:
                entry = self._entry(q, answer)
        except Exception:  # noqa: BLE001 - waiters must always get an answer
            log.exception("miss path failed for %r", q.key)
            entry = self._servfail(q)
        self._done(q, entry)

    def _done(self, q: wire.Question, entry: Entry) -> None:
        """Waiters get `entry`; the peer gets it when it asked, or when it can
        cache it too; a queued miss may take this one's place upstream."""
        self.in_flight -= 1
        if self.queued and not self.sending:
            self.sending = True
            self.loop.call_soon(self._send_queued)
        self._finish(q.key, entry)
        if self.peer is not None:
            self.peer.settle(q.key)
            asked = q.key in self.peer_asked
            self.peer_asked.discard(q.key)
            if asked or entry.expires > entry.stored_at:
                self.peer.tell(q.key, entry, reply=asked)

    def _scrubbed(self, qname: bytes, answer: bytes) -> scrub.Scrubbed | tuple[None, None, None]:
        """The answer scrubbed to its zone (scrub.Scrubbed); a malformed
        answer is (None, None, None), an upstream failure."""
        name = self.forwarder.zone_for(qname).zone
        if name == ".":         # holds every name: nothing to scrub, and no Scrubbed to build
            return answer, None, None
        zone = self.zone_wires.get(name)
        if zone is None:
            zone = self.zone_wires[name] = dns.name.from_text(name).to_wire().lower()
        try:
            return scrub.scrub(answer, zone)
        except wire.WireError:
            return None, None, None

    def _followed(self, q: wire.Question, chain: bytes, target_name: bytes, target: bytes | None) -> None:
        """The target's own upstream answered (or not): one answer of both.
        A chain that leaves the target's zone again ends there (one hop, as
        far as forwarding goes; the client sees the CNAME)."""
        try:
            if target is not None:
                target = self._scrubbed(target_name, target)[0]
            answer = scrub.with_target(chain, target) if target is not None else None
            entry = self._entry(q, answer)
        except Exception:  # noqa: BLE001 - waiters must always get an answer
            log.exception("miss path failed for %r", q.key)
            entry = self._servfail(q)
        self._done(q, entry)

    def _entry(self, q: wire.Question, answer: bytes | None, parsed: wire.Response | None = None) -> Entry:
        if answer is None:
            self.upstream_failures += 1
            return self._stale_or_servfail(q)
        rule = wire.longest_zone(self.headers, wire.key_qname(q.key), self.header_depth) if self.headers else None
        try:
            entry = entry_from_response(answer, time.monotonic(), self.policy, rule, q.do, parsed)
        except wire.WireError:
            self.upstream_failures += 1
            return self._stale_or_servfail(q)
        if entry.rcode == wire.RCODE_SERVFAIL:
            # The upstream could not resolve it either: a live answer (this was
            # a prefetch) stays, an expired one is served stale (RFC 8767).
            kept = self.cache.get(q.key, entry.stored_at) or self.cache.stale(q.key, entry.stored_at)
            if kept is not None:
                return kept
        if entry.expires > entry.stored_at and (
                not self.track_unwanted or self.epochs.get(q.key) == self.forwarder.unwanted.epoch):
            self.cache.put(q.key, entry)
        return entry

    def _stale_or_servfail(self, q: wire.Question) -> Entry:
        """Every upstream failed: the stale answer already served early, the
        expired answer if serve_stale still allows it (cached for 30 s), else
        SERVFAIL, cached for servfail_ttl so a retry does not wait out the
        upstream timeout again."""
        now = time.monotonic()
        kept = self.cache.get(q.key, now) or self.cache.stale(q.key, now)
        if kept is not None:
            return kept
        entry = entry_from_response(servfail_response(q), now, self.policy, None, q.do)
        if entry.expires > entry.stored_at:
            self.cache.put(q.key, entry)
        return entry

    def _finish(self, key: bytes, entry: Entry) -> None:
        self.epochs.pop(key, None)
        self.asked_peer.pop(key, None)
        for waiter in self.pending.pop(key, ()):
            try:
                waiter(entry)
            except Exception:  # noqa: BLE001 - one client's failure must not cost the others theirs
                log.exception("answering a client for %r failed", key)

    def _local(self, q: wire.Question) -> Entry:
        return entry_from_response(self.local.reply(q), time.monotonic(), UNCACHED, None, q.do)

    @staticmethod
    def _servfail(q: wire.Question) -> Entry:
        return entry_from_response(servfail_response(q), time.monotonic(), UNCACHED, None, q.do)
