"""The resolver's side of the peer link (worker/peer.py): which misses go to
the other worker of the pair instead of upstream, and what comes back.
A mixin of worker.resolver.Resolver (it uses its pending, cache, forwarder,
miss(), _upstream(), _finish() and _servfail()): kept apart so the miss path
reads in one sitting."""
from __future__ import annotations

import asyncio
import logging
import struct
import time

from worker import wire
from worker.cache import Entry
from worker.handoff import CacheStreamError, decode_entry
from worker.peer import PeerCounts

log = logging.getLogger(__name__)

# A miss asked of the peer is asked upstream by us after the zone's timeout
# and this: the owner answers within its timeout, even if only SERVFAIL.
PEER_SLACK = 0.5
# How often the asks still waiting are looked at (a silent owner is noticed
# up to this late): one timer for all of them, where a uvloop timer armed and
# cancelled per ask cost more than the ask's message.
SILENCE_SWEEP = 0.1
# An ask this old with nothing at all heard from the peer since it was made:
# the peer has stopped (hung, until its probes fail and it is replaced, ~3 s
# by default), so we ask upstream ourselves now rather than after the zone's
# timeout, and stop asking it until it is heard from again.
PEER_STALL = 0.5
# While we resolve keys the peer asked of us we are heard from at least this
# often (a HELLO, if nothing else is sent): waiting on a slow or silent
# upstream is not being hung, and a peer that took it for that would send
# the same query upstream a second time, to an upstream already failing.
HEARTBEAT = PEER_STALL / 3


class PeerMisses:
    def _init_peer_state(self, forwarder) -> None:
        # The other worker of the pair (worker/peer.py), when linked.
        self.peer = None
        self.asked_peer: dict[bytes, tuple[float, float]] = {}   # keys the peer resolves for us -> (asked, give up)
        self.silence_sweep: asyncio.TimerHandle | None = None     # _peer_silent, while asks wait
        self.peer_asked: set[bytes] = set()                       # keys we resolve for the peer
        self.heartbeat: asyncio.TimerHandle | None = None         # _heartbeat, while peer_asked holds keys
        self.peer_counts = PeerCounts()                           # over every link we have had
        # How long our claim of a key holds while its miss is upstream (worker/claims.py): past
        # the peer's own fallback on an ask (the zone's timeout + PEER_SLACK) it is stale anyway.
        self.claim_ahead = getattr(forwarder, "longest_timeout", 2.0) + PEER_SLACK

    def _forward(self, q: wire.Question, refresh: bool = False) -> None:
        """Upstream, or to the peer when it is resolving the key already (one
        upstream query for the pair: worker/claims.py); `refresh`: a
        prefetch, which the peer must not answer from its cache (its copy is
        as old as ours). What the peer asked of us goes upstream: never
        asked back."""
        peer = self.peer
        if peer is not None and q.key not in self.peer_asked and peer.held_elsewhere(q.key, self.claim_ahead) \
                and peer.ask(q.key, refresh):
            self.peer_counts.asks += 1
            now = time.monotonic()
            self.asked_peer[q.key] = (now, now + self.forwarder.zone_for(wire.key_qname(q.key)).timeout + PEER_SLACK)
            if self.silence_sweep is None:
                self.silence_sweep = asyncio.get_running_loop().call_later(SILENCE_SWEEP, self._peer_silent)
            return
        self._upstream(q)

    def _peer_silent(self) -> None:
        """Asks the peer never answered (its reply was dropped), or made while
        it has stopped (PEER_STALL): ask upstream ourselves."""
        self.silence_sweep = None
        peer = self.peer
        if peer is not None:
            peer.poll()                 # what it sent while we were not running (stopped, starved) counts
        peer = self.peer                # (the poll may have found the link closed)
        now = time.monotonic()
        heard = peer.last_heard if peer is not None else now
        due = [key for key, (asked_at, deadline) in self.asked_peer.items()
               if deadline <= now or (heard < asked_at and now - asked_at >= PEER_STALL)]
        if peer is not None and heard < now - PEER_STALL and due:
            peer.quiet = True           # asked again once it is heard from
        for key in due:
            del self.asked_peer[key]
            if key in self.pending:
                self.peer_counts.fallbacks += 1
                self._upstream(wire.question_from_key(key))
        if self.asked_peer:
            self.silence_sweep = asyncio.get_running_loop().call_later(SILENCE_SWEEP, self._peer_silent)

    def peer_asks(self, key: bytes, refresh: bool) -> None:
        """The peer has a miss (or a prefetch: `refresh`) for a key we claimed (or own):
        resolve it (sharing a query already waiting or in flight) and tell it the outcome.
        A prefetch gets our copy when that is out of its refresh window: one we
        refreshed a moment ago, which the peer asked for before our telling it
        reached it (up to SHARE_DELAY); a copy as old as the peer's goes upstream."""
        now = time.monotonic()
        entry = self.cache.get(key, now)
        if entry is not None and not (refresh and entry.in_refresh_window(now)):
            self.peer.tell(key, entry, reply=True)
            return
        q = wire.question_from_key(key)
        self.peer_asked.add(key)
        if self.heartbeat is None:
            self.heartbeat = asyncio.get_running_loop().call_later(HEARTBEAT, self._heartbeat)
        if key in self.pending:
            return
        if not self.miss(q, lambda entry: None, refresh):   # the peer's prefetch stays a prefetch here
            self.peer_asked.discard(key)
            self.peer.tell(key, self._servfail(q), reply=True)

    def _heartbeat(self) -> None:
        self.heartbeat = None
        if self.peer is not None and self.peer_asked:
            self.peer.hello()
            self.heartbeat = asyncio.get_running_loop().call_later(HEARTBEAT, self._heartbeat)

    def peer_told(self, key: bytes, record: bytes) -> None:
        """What the peer learned from upstream for `key` (a handoff record):
        clients waiting for `key` get it now, also when we had given up on
        the peer and asked upstream ourselves (its answer is as good, and
        here first); it replaces what we hold for key; otherwise the cache
        keeps the record and makes it an entry when key is first asked for
        here (worker/cache.py: most names never are)."""
        self.asked_peer.pop(key, None)
        cache = self.cache
        if key not in self.pending and key not in cache.entries:
            cache.hold(key, record, unfold_record)
            return
        entry = unfold_record(record)
        if entry is None:
            return
        if entry.expires > time.monotonic():
            cache.put(key, entry)
        if key in self.pending:
            self._finish(key, entry)

    def peer_gone(self) -> None:
        """The link closed: what we asked of the peer we ask upstream now."""
        self.peer = None
        self.peer_asked.clear()
        asked, self.asked_peer = self.asked_peer, {}
        for key in asked:
            if key in self.pending:
                self._upstream(wire.question_from_key(key))


def unfold_record(record: bytes) -> Entry | None:
    """The Entry of a record the peer told us, or None (logged) when it does
    not hold together: the peer is our own sibling, so only a bug sends one."""
    try:
        return decode_entry(record)[1]
    except (CacheStreamError, ValueError, struct.error) as e:
        log.warning("peer link: bad answer record dropped: %s", e)
        return None
