"""From query bytes to reply bytes: the hit path, and the hand-off to the miss
path. UDP clients, TCP connections and the supervisor's probe all come here.

The hit path is the product, so it is written for speed (measured with
bench/micro_hit.py and bench/bench_cache.py): the common query shapes
(no extra records, or one OPT right after the question) are recognised from
fixed offsets and looked up without building a Question; anything else, and
every miss, takes the full parse in wire.parse_query().
"""
from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum
from typing import Any

from worker import wire
from worker.cache import Cache, Entry
from worker.resolver import Resolver
from worker.stats import Stats

Send = Callable[[bytes, Any], None]

class Pending(Enum):
    """answer()'s result when a miss is in flight and send() will be called
    later: falsy like "nothing to send now" (the servers test `if reply:`),
    but not None, which means the packet is dropped."""
    PENDING = "pending"

    def __bool__(self) -> bool:
        return False


PENDING = Pending.PENDING

# Header bytes 4..12 (QD, AN, NS, AR counts) of the two shapes nearly all queries have.
_COUNTS_PLAIN = b"\x00\x01\x00\x00\x00\x00\x00\x00"
_COUNTS_OPT = b"\x00\x01\x00\x00\x00\x00\x00\x01"
_OPT_HEAD = b"\x00\x00\x29"     # root owner, TYPE 41
# The C accelerator's splice (worker/_fastwire.c), or None: one allocation for _splice_slow's four slices.
_splice = wire.ACCEL.splice if wire.ACCEL is not None else None


class Answerer:
    """Answers queries from the cache; misses go to the resolver."""

    def __init__(self, cache: Cache, resolver: Resolver, stats: Stats, prefetch: bool = False,
                 max_udp: int = wire.OUR_UDP_PAYLOAD) -> None:
        self.cache = cache
        self.max_udp = max_udp          # UDP answers beyond it get TC, whatever the client offers
        self.resolver = resolver
        self.stats = stats
        self.prefetch = prefetch
        # Query bytes after the ID -> (entry, has_opt), for queries whose
        # reply is the entry's rendered body behind the client's ID. Clients
        # repeat the same bytes (same case, flags and EDNS), so one dict
        # lookup replaces the shape checks, lower-casing and key building.
        # Bounded: cleared when it reaches the cache's capacity.
        self.exact: dict[bytes, tuple[Entry, bool]] = {}
        self.exact_limit = max(cache.capacity, 64)
        self.per_query = stats.per_query

    def exact_body(self, key: bytes, now: float) -> bytes | None:
        """For query bytes `key` (all but the ID) answered from a live entry
        before: the reply, still carrying the entry's own ID (bytes 0-1). None
        sends the query down answer()'s full path. UDP only."""
        hit = self.exact.get(key)
        if hit is None:
            return None
        entry = hit[0]
        if now >= entry.render_at:      # TTLs a second too high, expired, or gone
            if now >= entry.expires:
                del self.exact[key]
                return None
            self._rerender(entry, now)
        entry.referenced = True
        if self.per_query:              # Stats.hit(), inline: the hottest path
            (entry.hits or self.stats.hit_row(entry))[0] += 1
        return (entry.with_opt or entry.opt_form()) if hit[1] else entry.plain

    def exact_reply(self, data: bytes, now: float) -> bytes | None:
        """exact_body() with the client's ID spliced in."""
        body = self.exact_body(data[2:], now)
        return None if body is None else data[:2] + body[2:]

    def answer(self, data: bytes, udp: bool, send: Send, dest: Any, now: float) -> bytes | Pending | None:
        """The reply to send now, PENDING when send(reply, dest) will be called
        later, or None when the packet is dropped. `now` is time.monotonic().
        UDP servers try exact_reply() first."""
        # Fast path. A name found by searching for its zero byte is only
        # trusted when it equals a stored key: stored keys are valid names, and
        # a valid name wire is self-delimiting, so the real parse agrees.
        if len(data) > 16 and not data[2] & 0xFA:     # QR, opcode and TC clear
            counts = data[4:12]
            z = data.find(0, 12) + 1
            if counts == _COUNTS_PLAIN and 0 < z <= len(data) - 4:
                payload, has_opt, flags = 512, False, (data[3] >> 4) & 1
            elif (counts == _COUNTS_OPT and 0 < z and data[z + 4:z + 7] == _OPT_HEAD
                  and len(data) >= z + 15 and not data[z + 10]):    # EDNS version 0
                payload = data[z + 7] << 8 | data[z + 8]
                has_opt, flags = True, (data[z + 11] >> 6) & 2 | (data[3] >> 4) & 1
            else:
                return self._slow(data, udp, send, dest, now)
            name = data[12:z]
            lname = name.lower()
            entry = self.cache.entries.get(lname + data[z:z + 4] + wire.KEY_FLAGS[flags])
            if entry is None or now >= entry.expires:
                return self._slow(data, udp, send, dest, now)
            entry.referenced = True
            if self.per_query:
                self.stats.hit(entry, udp)
            if now >= entry.render_at:
                self._rerender(entry, now)
            body = (entry.with_opt or entry.opt_form()) if has_opt else entry.plain
            if (udp and len(body) > 512 and (len(body) > payload or len(body) > self.max_udp)) or (
                    entry.mirror_rd and (data[2] ^ body[2]) & wire.FLAG_RD):
                return self._splice_slow(entry, body, data, z, udp, has_opt, payload)
            if name == lname:       # the stored question (lower case) is the query's, byte for byte
                # Only whole, plain queries: a UDP reply fits the client's size (so
                # TCP may reuse it, not the reverse), and trailing bytes or EDNS
                # options must not make keys of up to 4 KiB.
                if udp and len(data) == z + (15 if has_opt else 4):
                    exact = self.exact
                    if len(exact) >= self.exact_limit:
                        exact.clear()
                    exact[data[2:]] = (entry, has_opt)
                return data[:2] + body[2:]
            return data[:2] + body[2:12] + name + body[z:]
        return self._slow(data, udp, send, dest, now)

    def _rerender(self, entry: Entry, now: float) -> None:
        """A hit on an entry due for its once-a-second re-render; the cheap
        moment (no per-hit cost) to decide on a prefetch too."""
        entry.render(int(now - entry.stored_at))
        if self.prefetch and entry.key is not None and entry.prefetch_due(now):
            entry.prefetched = True
            self.stats.prefetches += 1
            self.resolver.prefetch(entry.key)

    def _slow(self, data: bytes, udp: bool, send: Send, dest: Any, now: float) -> bytes | Pending | None:
        """Every query the fast path did not answer: full parse, errors, misses."""
        stats = self.stats
        # A response (QR=1) is never answered: two servers that answered each
        # other's errors would loop forever.
        if len(data) < 12 or data[2] & 0x80:
            stats.malformed += 1
            return None
        try:
            q = wire.parse_query(data)
        except wire.BadQuery:
            stats.malformed += 1
            return wire.query_error_reply(data, wire.RCODE_NOTIMP)
        except wire.BadEdnsVersion as e:
            stats.malformed += 1
            return wire.badvers_reply(data, e.question_end, e.do)
        except wire.WireError:
            stats.malformed += 1
            stats.formerr += 1
            return wire.query_error_reply(data, wire.RCODE_FORMERR)
        entry = self.cache.get(q.key, now)
        if entry is not None:
            if stats.per_query:
                stats.hit(entry, udp)
            return self._reply(entry, data, q, udp, now)
        if stats.per_query:
            stats.cache_misses += 1
        if self.resolver.miss(q, lambda e: send(self._reply(e, data, q, udp, time.monotonic(), count=True), dest)):
            return PENDING
        stats.count(udp, q.qtype, wire.RCODE_SERVFAIL)
        return wire.error_reply(data, wire.RCODE_SERVFAIL, q.qname_end, q.do if q.has_opt else None)

    def _reply(self, entry: Entry, data: bytes, q: wire.Question, udp: bool, now: float,
               count: bool = False) -> bytes:
        if count:
            self.stats.count(udp, q.qtype, entry.rcode)
        if now >= entry.render_at:
            self._rerender(entry, now)
        body = (entry.with_opt or entry.opt_form()) if q.has_opt else entry.plain
        return self._splice_slow(entry, body, data, q.qname_end, udp, q.has_opt, q.payload)

    def _splice_slow(self, entry: Entry, body: bytes, data: bytes, qname_end: int, udp: bool,
                     has_opt: bool, payload: int) -> bytes:
        """Splice with the rare cases handled: truncation to the client's UDP
        payload size capped at max_udp (never below 512), and the client's RD
        bit mirrored."""
        if udp and len(body) > wire.CLASSIC_UDP_PAYLOAD and (len(body) > payload or len(body) > self.max_udp):
            body = entry.truncated(qname_end, has_opt)
        if entry.mirror_rd and (data[2] ^ body[2]) & wire.FLAG_RD:
            body = body[:2] + bytes((body[2] ^ wire.FLAG_RD,)) + body[3:]
        if _splice is not None:
            reply = _splice(data, body, qname_end)
            if reply is not None:
                return reply
        return data[:2] + body[2:12] + data[12:qname_end] + body[qname_end:]
