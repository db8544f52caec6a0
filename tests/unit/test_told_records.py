"""What the other worker of the pair tells us is kept as its record bytes
and made into an entry when first asked for here (worker/cache.py hold(),
worker/peer_misses.py peer_told()): served as a hit, counted, bounded,
found by serve-stale and carried by the cache handoff."""
from __future__ import annotations

import asyncio
import os
import time

import dns.message
import dns.rrset

from worker import wire
from worker.cache import Cache
from worker.config import CacheConfig
from worker.handoff import encode_entry, receive_cache, send_cache
from worker.peer_misses import unfold_record
from worker.response import entry_from_response


def told(name: str, now: float, ttl: int = 300, address: str = "192.0.2.7") -> tuple[bytes, bytes]:
    """(key, the record the peer sends for it): an answer it stored at `now`."""
    query = dns.message.make_query(name, "A")
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text(query.question[0].name, ttl, "IN", "A", address))
    key = wire.parse_query(query.to_wire()).key
    return key, encode_entry(key, entry_from_response(reply.to_wire(), now, CacheConfig(), None, False))[4:]


def test_a_held_record_is_counted_and_becomes_the_entry_it_holds_when_asked_for():
    cache, now = Cache(10), time.monotonic()
    key, record = told("a.test", now)
    cache.hold(key, record, unfold_record)
    assert len(cache) == 1 and key not in cache.entries          # counted, not yet made
    entry = cache.get(key, now + 1)
    assert entry is not None and entry.ttls == (300,) and b"\xc0\x00\x02\x07" in entry.plain
    assert cache.entries[key] is entry and not cache.told and len(cache) == 1


def test_what_we_store_ourselves_replaces_a_held_record_and_entries_and_records_stay_within_capacity():
    cache, now = Cache(3), time.monotonic()
    keys = []
    for i in range(5):
        key, record = told(f"n{i}.test", now)
        cache.hold(key, record, unfold_record)
        keys.append(key)
    assert list(cache.told) == keys[2:] and len(cache) == 3      # the two oldest dropped
    mine, record = told("n4.test", now, address="192.0.2.99")
    cache.put(mine, unfold_record(record))
    assert keys[4] not in cache.told and len(cache) == 3
    assert b"\xc0\x00\x02\x63" in cache.get(mine, now).plain     # ours, not the held one
    for i in range(5, 8):                                        # our own entries push records out
        key, record = told(f"n{i}.test", now)
        cache.put(key, unfold_record(record))
    assert not cache.told and len(cache) == 3
    key, record = told("n9.test", now)                           # full of entries: made one, evicting
    cache.hold(key, record, unfold_record)
    assert key in cache.entries and len(cache) == 3


def test_serve_stale_finds_a_held_record_that_expired():
    cache, now = Cache(10, serve_stale=3600), time.monotonic()
    key, record = told("old.test", now - 100, ttl=30)
    cache.hold(key, record, unfold_record)
    assert cache.get(key, now) is None                           # expired: a miss
    stale = cache.stale(key, now)
    assert stale is not None and b"\xc0\x00\x02\x07" in stale.plain


def test_a_record_that_does_not_hold_together_is_a_miss_not_a_crash():
    cache, now = Cache(10), time.monotonic()
    key, record = told("bad.test", now)
    cache.hold(key, record[:-3], unfold_record)
    assert cache.get(key, now) is None and len(cache) == 0


def test_the_cache_handoff_carries_held_records():
    async def scenario():
        sender, receiver, now = Cache(10), Cache(10), time.monotonic()
        key, record = told("handed.test", now)
        sender.hold(key, record, unfold_record)
        r, w = os.pipe()
        sent, stored = await asyncio.gather(send_cache(sender, w, b"p" * 32), receive_cache(receiver, r, b"p" * 32))
        return sent, stored, receiver.get(key, time.monotonic())

    sent, stored, entry = asyncio.run(scenario())
    assert (sent, stored) == (1, 1) and entry is not None and entry.ttls == (300,)
