"""From query bytes to reply bytes: the hit path, and the hand-off to the miss
path. UDP clients, TCP connections and the supervisor's probe all come here."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from worker import wire
from worker.cache import Cache, Entry
from worker.resolver import Resolver
from worker.stats import Stats

Send = Callable[[bytes, Any], None]

PENDING = b""   # answer() result: a miss is in flight and will call send() later


class Answerer:
    """Answers queries from the cache; misses go to the resolver."""

    def __init__(self, cache: Cache, resolver: Resolver, stats: Stats) -> None:
        self.cache = cache
        self.resolver = resolver
        self.stats = stats

    def answer(self, data: bytes, udp: bool, send: Send, dest: Any) -> bytes | None:
        """The reply to send now, PENDING when send(reply, dest) will be called
        later, or None when the packet is dropped."""
        # A response (QR=1) is never answered: two servers that answered each
        # other's errors would loop forever.
        if len(data) < 12 or data[2] & 0x80:
            self.stats.malformed += 1
            return None
        try:
            q = wire.parse_query(data)
        except wire.BadQuery:
            self.stats.malformed += 1
            return wire.error_reply(data, wire.RCODE_NOTIMP)
        except wire.WireError:
            self.stats.malformed += 1
            self.stats.formerr += 1
            return wire.error_reply(data, wire.RCODE_FORMERR)
        now = time.monotonic()
        entry = self.cache.get(q.key, now)
        stats = self.stats
        if entry is None:
            if stats.per_query:
                stats.cache_misses += 1
            self.resolver.miss(q, lambda e: send(self.reply(e, data, q, udp, time.monotonic()), dest))
            return PENDING
        if stats.per_query:
            stats.cache_hits += 1
            counter = (udp, q.qtype, entry.rcode)
            stats.queries[counter] = stats.queries.get(counter, 0) + 1
        age = int(now - entry.stored_at)
        if age != entry.age:
            entry.render(age)
        body = entry.with_opt if q.has_opt else entry.plain
        qend = q.qname_end
        if (udp and len(body) > q.payload) or (entry.mirror_rd and (data[2] ^ body[2]) & wire.FLAG_RD):
            return self._splice_slow(entry, body, data, q, udp)
        return data[:2] + body[2:12] + data[12:qend] + body[qend:]

    def reply(self, entry: Entry, data: bytes, q: wire.Question, udp: bool, now: float) -> bytes:
        """The reply for a miss once its entry is known (counted here)."""
        if self.stats.per_query:
            counter = (udp, q.qtype, entry.rcode)
            self.stats.queries[counter] = self.stats.queries.get(counter, 0) + 1
        age = int(now - entry.stored_at)
        if age != entry.age:
            entry.render(age)
        return self._splice_slow(entry, entry.with_opt if q.has_opt else entry.plain, data, q, udp)

    @staticmethod
    def _splice_slow(entry: Entry, body: bytes, data: bytes, q: wire.Question, udp: bool) -> bytes:
        """Splice with the rare cases handled: truncation to the client's UDP
        payload size, and the client's RD bit mirrored."""
        if udp and len(body) > q.payload:
            body = entry.truncated(q.qname_end, q.has_opt)
        if entry.mirror_rd and (data[2] ^ body[2]) & wire.FLAG_RD:
            body = body[:2] + bytes((body[2] ^ wire.FLAG_RD,)) + body[3:]
        qend = q.qname_end
        return data[:2] + body[2:12] + data[12:qend] + body[qend:]
