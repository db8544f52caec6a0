"""The pair as one cache: the link between the two serving workers.

The kernel spreads clients over both workers by source port, so two
independent caches would each fetch every name (measured: 1.75 upstream
queries per name) and each hold half the hits. Over this link:

* every answer a worker stores from upstream (positive, negative, SERVFAIL
  within servfail_ttl, prefetch refreshes) is told to the other, which
  stores it too, so a name fetched once is a hit at both workers;
* a miss is asked upstream only by the key's owner (crc32(key) & 1 picks
  slot A or B): the other worker asks the owner over the link and answers
  its clients when the owner tells it the result, so identical misses
  arriving at both workers at once go upstream once.

Why this and not a shared-memory table: the hit path stays exactly what it
is (a dict lookup in the worker's own memory, no locks, no cross-process
pointers), and the cost lands on misses only (two small datagrams on a
socketpair). Memory is spent twice for the pair, which is what makes either
worker able to serve alone when the other is replaced.

The link is an AF_UNIX SOCK_SEQPACKET socketpair the supervisor hands to
both workers (control op `peer`). Messages, one per datagram:

    b"H" + config fingerprint        first, both ways: a link between workers
                                     of different configs (mid-reload) is unused
    b"?" + key                       "you own this key: resolve it, tell me"
    b"R" + key                       the same for a prefetch: not from your cache
    b"!" + handoff record body       "this is what I learned for key"

Nothing here is needed for correctness: a message that cannot be sent at
once is dropped (an ask falls back to our own upstream query after the
zone's timeout), and a closed link leaves each worker resolving everything
itself, as a lone worker does.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import zlib
from collections.abc import Callable

from worker.cache import Entry
from worker.handoff import CacheStreamError, decode_entry, encode_entry

log = logging.getLogger(__name__)

HELLO, ASK, REFRESH, TOLD = b"H", b"?", b"R", b"!"
MAX_MESSAGE = 70000              # one handoff record: a DNS message of 64 KiB at most, and its fields
READS_PER_WAKE = 256             # bounded work per event-loop turn
SLOTS = ("A", "B")


def valid_key(key: bytes) -> bool:
    """A cache key as wire.make_key builds it: a name wire (labels of 1-63
    bytes, 255 bytes at most, ending in the root), qtype, qclass, flags 0-3."""
    name, i = key[:-5], 0
    if len(key) < 6 or len(name) > 255 or key[-1] > 3:
        return False
    while i < len(name):
        length = name[i]
        if length == 0:
            return i == len(name) - 1
        if length > 63:
            return False
        i += length + 1
    return False


def owner(key: bytes) -> str:
    """The slot that asks upstream for `key`; the same in every process."""
    return SLOTS[zlib.crc32(key) & 1]


class PeerLink:
    """One end of the link. `on_ask(key, refresh)` and `on_told(key, entry)` are the
    resolver's; the link only moves bytes."""

    def __init__(self, sock: socket.socket, slot: str, config_print: bytes,
                 on_ask: Callable[[bytes, bool], None], on_told: Callable[[bytes, Entry], None],
                 on_close: Callable[["PeerLink"], None]) -> None:
        self.sock = sock
        self.slot = slot
        self.config_print = config_print
        self.on_ask, self.on_told, self.on_close = on_ask, on_told, on_close
        self.agreed = False          # the peer's fingerprint is ours
        self.closed = False
        self.sent = self.received = self.dropped = self.bad = 0
        self.loop = asyncio.get_running_loop()

    def start(self) -> None:
        self.sock.setblocking(False)
        self.loop.add_reader(self.sock.fileno(), self._readable)
        self._send(HELLO + self.config_print)

    @property
    def usable(self) -> bool:
        return self.agreed and not self.closed

    def owns_elsewhere(self, key: bytes) -> bool:
        """True when the peer owns `key` and can be asked for it."""
        return self.usable and owner(key) != self.slot

    def ask(self, key: bytes, refresh: bool = False) -> bool:
        return self._send((REFRESH if refresh else ASK) + key)

    def tell(self, key: bytes, entry: Entry) -> bool:
        if not self.usable or entry.expires < entry.stored_at:     # not one that left the cache
            return False
        return self._send(TOLD + encode_entry(key, entry)[4:])   # the datagram is its own length

    def _send(self, data: bytes) -> bool:
        if self.closed:
            return False
        try:
            self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            self.dropped += 1       # the peer is behind: it costs a duplicate upstream query at worst
            return False
        except OSError:
            self.close()
            return False
        self.sent += 1
        return True

    def _readable(self) -> None:
        for _ in range(READS_PER_WAKE):
            try:
                data = self.sock.recv(MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self.close()
                return
            self.received += 1
            self._take(data)

    def _take(self, data: bytes) -> None:
        kind, body = data[:1], data[1:]
        if kind == HELLO:
            self.agreed = body == self.config_print
            if not self.agreed:
                log.info("peer link unused: the other worker runs another config")
            return
        if not self.agreed:
            return
        try:
            if kind == ASK or kind == REFRESH:
                if not valid_key(body):
                    raise CacheStreamError("not a cache key")
                self.on_ask(bytes(body), kind == REFRESH)
            elif kind == TOLD:
                key, entry = decode_entry(body)
                if not valid_key(key):
                    raise CacheStreamError("not a cache key")
                self.on_told(key, entry)
            else:
                raise CacheStreamError(f"unknown message type {kind!r}")
        except (CacheStreamError, ValueError) as e:
            self.bad += 1
            log.warning("peer link: bad message dropped: %s", e)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.loop.remove_reader(self.sock.fileno())
        except (ValueError, OSError):
            pass
        self.sock.close()
        self.on_close(self)
