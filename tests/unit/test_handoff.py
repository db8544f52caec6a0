"""The cache stream a worker hands to its successor (worker/handoff.py):
format, bounds, config check, and the two ends over a real pipe. No root."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import time

import dns.message
import dns.rrset
import pytest

from worker import wire
from worker.cache import Cache
from worker.response import entry_from_response
from worker.config import CacheConfig, HeaderRule, WorkerConfig
from worker.handoff import (CacheStreamError, StreamReader, decode_entry, encode_entry, encode_stream, fingerprint,
                            receive_cache, send_cache)

CONFIG = WorkerConfig(headers=(HeaderRule(zone="test.", set=frozenset({"ra", "aa"})),))


def cached_entry(name: str, ttl: int = 3600, stored_at: float | None = None):
    query = dns.message.make_query(name, "A", use_edns=0)
    q = wire.parse_query(query.to_wire())
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text(name, ttl, "IN", "A", "192.0.2.1"))
    now = time.monotonic() if stored_at is None else stored_at
    return q.key, entry_from_response(reply.to_wire(), now, CacheConfig(), None, False)


def test_entries_survive_the_round_trip():
    entries = [cached_entry(f"n{i}.test.") for i in range(3)]
    reader = StreamReader(fingerprint(CONFIG))
    got = []
    for chunk in encode_stream(fingerprint(CONFIG), entries):
        for i in range(0, len(chunk), 7):          # arrives in arbitrary pieces
            got += reader.feed(chunk[i:i + 7])
    reader.check_end()
    assert [k for k, _ in got] == [k for k, _ in entries]
    for (_, a), (_, b) in zip(entries, got):
        assert (a.template, a.ttl_offsets, a.ttls, a.stored_at, a.expires, a.rcode, a.mirror_rd, a.do) == \
               (b.template, b.ttl_offsets, b.ttls, b.stored_at, b.expires, b.rcode, b.mirror_rd, b.do)
        assert a.plain == b.plain


def test_a_record_carries_the_ttls_as_stored_whatever_age_the_entry_shows():
    """The sender's entry may show lowered TTLs (a hit re-rendered it): the
    record still holds the stored ones, with stored_at, and the receiver
    lowers them by its own clock."""
    for age in (0, 2, 0):
        key, entry = cached_entry("aged.test.", ttl=3600, stored_at=time.monotonic() - age)
        entry.render(age)
        assert dns.message.from_wire(entry.plain).answer[0].ttl == 3600 - age
        _, got = decode_entry(encode_entry(key, entry)[4:])
        assert dns.message.from_wire(got.template).answer[0].ttl == 3600
        assert got.ttls == (3600,) and got.stored_at == entry.stored_at
        assert dns.message.from_wire(entry.template).answer[0].ttl == 3600


def test_the_fingerprint_ignores_set_order_but_not_content():
    same = WorkerConfig(headers=(HeaderRule(zone="test.", set=frozenset({"aa", "ra"})),))
    assert fingerprint(same) == fingerprint(CONFIG)
    other = dataclasses.replace(CONFIG, cache=CacheConfig(max_ttl=60))
    assert fingerprint(other) != fingerprint(CONFIG)


def test_a_stream_made_under_another_config_is_refused():
    header = next(encode_stream(fingerprint(WorkerConfig()), []))
    with pytest.raises(CacheStreamError, match="different config"):
        StreamReader(fingerprint(CONFIG)).feed(header)
    with pytest.raises(CacheStreamError, match="not a twindns"):
        StreamReader(fingerprint(CONFIG)).feed(b"GET / HTTP/1.1\r\n" * 4)


@pytest.mark.parametrize("damage", ["cut", "long_length", "bad_offset", "length_mismatch"])
def test_a_damaged_record_ends_the_load(damage):
    key, entry = cached_entry("d.test.")
    record = bytearray(encode_entry(key, entry))
    if damage == "cut":
        record = record[:-3]
    elif damage == "long_length":
        record[0:4] = (10**6).to_bytes(4, "big")
    elif damage == "bad_offset":
        record[-6:-4] = (len(entry.template) - 2).to_bytes(2, "big")   # last TTL's offset: past the end
    elif damage == "length_mismatch":
        record[0:4] = (len(record) - 4 + 1).to_bytes(4, "big")
        record += b"\x00"
        record[4:6] = (len(key) + 1).to_bytes(2, "big")                 # key longer than it is
    reader = StreamReader(fingerprint(CONFIG))
    with pytest.raises(CacheStreamError):
        reader.feed(next(encode_stream(fingerprint(CONFIG), [])) + bytes(record))
        reader.check_end()


@pytest.mark.parametrize("capacity", [2000, 100])
def test_send_and_receive_over_a_pipe_keep_newer_entries_and_drop_expired(capacity):
    now = time.monotonic()
    old, new = Cache(2000), Cache(capacity)
    for i in range(1200):                           # more than one slice
        old.put(*cached_entry(f"n{i}.test.", stored_at=now))
    key, expired = cached_entry("gone.test.", ttl=1, stored_at=now - 5)
    old.entries[key] = expired                      # past its lifetime, not yet swept
    mine_key, mine = cached_entry("n1.test.", ttl=60)
    new.put(mine_key, mine)
    mine.referenced = True                          # a hit since we started

    async def hand_over():
        r, w = os.pipe()
        return await asyncio.gather(send_cache(old, w, fingerprint(CONFIG)),
                                    receive_cache(new, r, fingerprint(CONFIG)))

    sent, stored = asyncio.run(hand_over())
    assert sent == 1200, "the expired entry is not sent"
    assert stored == 1199, "all but the key we hold ourselves"
    assert key not in new.entries
    assert len(new) == min(1200, capacity), "the cache's own bound holds"
    if capacity == 2000:
        assert new.entries[mine_key] is mine, "our own (newer) entry is kept"
        assert list(new.entries)[1:] == [k for k in old.entries if k not in (mine_key, key)], "order kept"


def test_receive_reads_a_cache_left_in_a_file():
    """After `systemctl restart` the cache arrives as a memfd from the fd store,
    a file (always readable: no readiness to wait for)."""
    now = time.monotonic()
    old, new = Cache(2000), Cache(2000)
    for i in range(1200):
        old.put(*cached_entry(f"n{i}.test.", stored_at=now))

    async def through_a_file():
        fd = os.memfd_create("twindns-cache", os.MFD_CLOEXEC)
        sent = await send_cache(old, os.dup(fd), fingerprint(CONFIG))
        mine = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)      # as spawn() opens it for --cache-fd
        os.close(fd)
        return sent, await receive_cache(new, mine, fingerprint(CONFIG))

    assert asyncio.run(through_a_file()) == (1200, 1200)
    assert list(new.entries) == list(old.entries)


def test_an_entry_that_leaves_the_cache_mid_stream_is_skipped_not_sent_broken():
    """send_cache lists the live entries, then encodes them slice by slice while
    the worker serves: one evicted meanwhile (leave(): expiry -inf) must not
    end the receiver's load with "entry fields out of range"."""
    import time as _time
    from worker.handoff import StreamReader, encode_stream
    from worker.response import entry_from_response
    from worker.config import CacheConfig
    import dns.message
    import dns.rrset
    now = _time.monotonic()
    entries = []
    for i in range(3):
        q = dns.message.make_query(f"n{i}.example.", "A", use_edns=False)
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(f"n{i}.example.", 300, "IN", "A", "192.0.2.1"))
        key = q.question[0].name.to_wire() + b"\x00\x01\x00\x01\x00"
        entries.append((key, entry_from_response(r.to_wire(), now, CacheConfig(), None, False)))
    listed = list(entries)

    def lazily():
        for i, item in enumerate(listed):
            if i == 1:
                entries[2][1].leave()       # evicted while the stream is being written
            yield item
    data = b"".join(encode_stream(b"p" * 32, lazily()))
    reader = StreamReader(b"p" * 32)
    got = reader.feed(data)
    assert [k for k, _ in got] == [entries[0][0], entries[1][0]]
