"""Handing the cache to the next worker of a rolling restart.

The supervisor gives the old worker the write end and the new worker the
read end of a pipe (docs/internals.md, control ops `cache_send` and
`cache_receive`). The old worker streams its live entries; the new one
stores those it does not have yet, so a restart does not turn every hit
into a miss. Both run on the same host, and time.monotonic() is the same
clock in every process there, so stored_at and expires travel as they are.

The stream is a header (magic, config fingerprint) and records, each length
prefixed. The reader is bounded like the wire parser: a record that does
not fit its own length, or an entry whose offsets point outside its
template, ends the load (what came before it is kept). A worker whose
config differs (a reload) discards the stream: entries made under another
policy or from other upstreams must not be served.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import stat
import struct
import time
from collections.abc import Iterable, Iterator

from worker.cache import Cache, Entry
from worker.config import WorkerConfig
from worker.wire import ACCEL

MAGIC = b"TWC1"
_HEADER = struct.Struct("!4s32s")
_RECORD_LEN = struct.Struct("!I")
# key length, template length, qname end, rcode, flags, TTL count, stored_at, expires
_FIXED = struct.Struct("!HHHBBHdd")
_TTL = struct.Struct("!HI")
_RECORD_HEAD = struct.Struct("!I" + _FIXED.format[1:])     # a record's length, then its fixed part
_MIRROR_RD, _DO = 1, 2
MAX_RECORD = 70000              # a template is one DNS message (64 KiB at most)
RECORDS_PER_SLICE = 500         # the sender yields to its event loop between slices


class CacheStreamError(Exception):
    """A cache stream that is not one we can load."""


class ConfigMismatch(CacheStreamError):
    """The stream was made under another worker config (a reload changed it): starting cold is expected."""


def fingerprint(config: WorkerConfig) -> bytes:
    """The same for two workers exactly when their cache, upstream and
    header config are the same (sets sorted: their order varies by process)."""
    text = json.dumps(dataclasses.asdict(config), sort_keys=True, default=sorted)
    return hashlib.sha256(text.encode()).digest()


# The C accelerator (worker/_fastwire.c), when built for this record layout: record()
# is encode_entry in one allocation, told_frames() splits a datagram of told records
# (worker/peer.py). Else None, and the Python here and in peer.py does it.
_FAST = ACCEL if ACCEL is not None and ACCEL.RECORD_FIXED == _FIXED.size else None
_record = _FAST.record if _FAST is not None else None
told_frames = _FAST.told_frames if _FAST is not None else None


def encode_entry(key: bytes, entry: Entry, prefix: bytes = b"") -> bytes:
    """One record after `prefix` (a peer-link frame's type byte, or none):
    its length, then the body decode_entry reads. Every answer the pair
    learns is encoded once, so it is built in one join (in C when built)."""
    flags = (_MIRROR_RD if entry.mirror_rd else 0) | (_DO if entry.do else 0)
    template = entry.template       # possibly rendered anew: asked for once per record, not twice
    ttls = entry.ttls
    if _record is not None:
        encoded = _record(prefix, key, template, entry.qname_end, entry.rcode, flags, entry.stored_at,
                          entry.expires, entry.ttl_offsets, ttls)
        if encoded is not None:
            return encoded
    body_len = _FIXED.size + len(key) + len(template) + len(ttls) * _TTL.size
    return b"".join((prefix, _RECORD_HEAD.pack(body_len, len(key), len(template), entry.qname_end, entry.rcode,
                                               flags, len(ttls), entry.stored_at, entry.expires),
                     key, template, *map(_TTL.pack, entry.ttl_offsets, ttls)))


def decode_entry(body: bytes) -> tuple[bytes, Entry]:
    """One record's body; CacheStreamError when it does not hold together."""
    if len(body) < _FIXED.size:
        raise CacheStreamError("record shorter than its fixed part")
    key_len, tlen, qname_end, rcode, flags, nttl, stored_at, expires = _FIXED.unpack_from(body)
    key_end = _FIXED.size + key_len
    ttls_at = key_end + tlen
    if len(body) != ttls_at + nttl * _TTL.size:
        raise CacheStreamError("record length does not match its fields")
    if not 12 < qname_end <= tlen - 4 or key_len == 0 or not expires >= stored_at:
        raise CacheStreamError("entry fields out of range")
    offsets: tuple[int, ...] = ()
    ttls: tuple[int, ...] = ()
    if nttl:
        # Every peer-told answer and every entry of a restart comes through
        # here: zip() splits the (offset, ttl) pairs into the two tuples at C speed.
        offsets, ttls = zip(*_TTL.iter_unpack(body[ttls_at:]))
        if min(offsets) < qname_end or max(offsets) + 4 > tlen:
            raise CacheStreamError("TTL offset outside the template")
    # rendered=True: encode_entry sends the template as shown at age 0, so it
    # already holds `ttls` (every release has). A sender that lied there could
    # as well have lied in any other byte of the answer: it is our own sibling.
    entry = Entry(body[key_end:ttls_at], qname_end, offsets, ttls, stored_at, expires - stored_at, rcode,
                  bool(flags & _MIRROR_RD), bool(flags & _DO), rendered=True)
    return body[_FIXED.size:key_end], entry


def record_key(body: bytes) -> bytes:
    """The key of a record's body, without decoding the rest (decode_entry
    checks that when the entry is made); CacheStreamError when too short."""
    if len(body) < _FIXED.size:
        raise CacheStreamError("record shorter than its fixed part")
    key_end = _FIXED.size + (body[0] << 8 | body[1])
    if key_end > len(body):
        raise CacheStreamError("key runs past the record")
    return body[_FIXED.size:key_end]


def encode_stream(config_print: bytes, entries: Iterable[tuple[bytes, Entry]]) -> Iterator[bytes]:
    """Header, then one chunk per RECORDS_PER_SLICE entries. An entry that
    left the cache since `entries` was listed (Entry.leave() sets its expiry
    to -inf) is skipped: encoded, it would fail the reader's range check and
    end the load there (seen under load: "entry fields out of range")."""
    yield _HEADER.pack(MAGIC, config_print)
    chunk: list[bytes] = []
    for key, entry in entries:
        if entry.expires < entry.stored_at:
            continue
        chunk.append(encode_entry(key, entry))
        if len(chunk) >= RECORDS_PER_SLICE:
            yield b"".join(chunk)
            chunk = []
    if chunk:
        yield b"".join(chunk)


class StreamReader:
    """Turns the bytes of a cache stream, as they arrive, into entries."""

    def __init__(self, config_print: bytes) -> None:
        self.config_print = config_print
        self.buf = bytearray()
        self.header_seen = False

    def feed(self, data: bytes) -> list[tuple[bytes, Entry]]:
        self.buf += data
        if not self.header_seen:
            if len(self.buf) < _HEADER.size:
                return []
            magic, theirs = _HEADER.unpack_from(self.buf)
            if magic != MAGIC:
                raise CacheStreamError("not a twindns cache stream")
            if theirs != self.config_print:
                raise ConfigMismatch("made under a different config")
            del self.buf[:_HEADER.size]
            self.header_seen = True
        out = []
        buf = self.buf
        while len(buf) >= _RECORD_LEN.size:
            (length,) = _RECORD_LEN.unpack_from(buf)
            if length > MAX_RECORD:
                raise CacheStreamError(f"record of {length} bytes")
            if len(buf) < _RECORD_LEN.size + length:
                break
            out.append(decode_entry(bytes(buf[_RECORD_LEN.size:_RECORD_LEN.size + length])))
            del buf[:_RECORD_LEN.size + length]
        return out

    def check_end(self) -> None:
        """At EOF: nothing at all (the sender never got its end) is fine;
        a cut header or record is not."""
        if self.buf:
            raise CacheStreamError("stream ended inside a record")


async def send_cache(cache: Cache, fd: int, config_print: bytes) -> int:
    """Write every live entry to fd (a pipe's write end; closed at the end).
    Yields to the loop between slices and while the pipe is full, so the
    worker keeps serving. Returns the entries sent."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    try:
        # A snapshot, oldest first (the receiver keeps the order): the cache
        # changes while we yield.
        cache.unfold_told()             # answers the peer told us, kept as records until now
        now = time.monotonic()
        live = [(key, entry) for key, entry in cache.entries.items() if now < entry.expires]
        for chunk in encode_stream(config_print, live):
            view = memoryview(chunk)
            while view:
                try:
                    view = view[os.write(fd, view):]
                except BlockingIOError:
                    await _writable(loop, fd)
            await asyncio.sleep(0)
        return len(live)
    finally:
        os.close(fd)


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    # Watched only while full: a writer left registered on a writable pipe
    # would wake the loop on every turn.
    ready = loop.create_future()
    loop.add_writer(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_writer(fd)


async def receive_cache(cache: Cache, fd: int, config_print: bytes) -> int:
    """Store the entries read from fd for which the cache holds no live entry
    (a live one of ours is newer); returns how many were stored. Stops at
    EOF or a bad record. fd is a pipe, or a file (a cache the previous
    supervisor left in systemd's fd store across a restart), which is read
    in slices without waiting for readiness (files are always readable)."""
    loop = asyncio.get_running_loop()
    is_file = stat.S_ISREG(os.fstat(fd).st_mode)
    os.set_blocking(fd, False)
    readable = asyncio.Event()
    if not is_file:
        loop.add_reader(fd, readable.set)
    reader = StreamReader(config_print)
    stored = 0
    try:
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                readable.clear()
                await readable.wait()
                continue
            if not data:
                break
            now = time.monotonic()
            for key, entry in reader.feed(data):
                held = cache.entries.get(key)   # ours is newer, unless it is only kept for serve-stale
                if (held is None or now >= held.expires) and now < entry.expires:
                    cache.put(key, entry)
                    stored += 1
            if is_file:
                await asyncio.sleep(0)      # keep serving between slices
        reader.check_end()
        return stored
    finally:
        if not is_file:
            loop.remove_reader(fd)
        os.close(fd)
