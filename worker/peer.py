"""The pair as one cache: the link between the two serving workers.

The kernel spreads clients over both workers by source port, so two
independent caches would each fetch every name (measured: 1.75 upstream
queries per name) and each hold half the hits. Over this link:

* every answer a worker stores from upstream (positive, negative, SERVFAIL
  within servfail_ttl, prefetch refreshes) is told to the other, which
  keeps it too (as the record, made an entry when first asked for there:
  worker/cache.py hold()), so a name fetched once is a hit at both workers;
* a miss is asked upstream only by the worker that claimed its key first
  in the pair's claim table (worker/claims.py: shared memory, one
  compare-and-swap); the other worker asks that one over the link and
  answers its clients when it tells the result, so identical misses
  arriving at both workers at once go upstream once. Without the table
  the key's owner by crc32(key) & 1 (slot A or B) asks, and the other
  worker asks it.

Why the cache itself is not a shared-memory table: the hit path stays
exactly what it is (a dict lookup in the worker's own memory, no locks, no
cross-process pointers), and the cost lands on misses only (a share per
answer, a small message on a socketpair). Memory is spent twice for the
pair, which is what makes either worker able to serve alone when the other
is replaced. Only the misses in flight are shared: a word per key, and no
pointers.

The link is an AF_UNIX SOCK_SEQPACKET socketpair the supervisor hands to
both workers (control op `peer`). Messages are frames (FRAME_LEN below),
batched per turn of the event loop into datagrams (an answer the peer did
not ask for waits up to SHARE_DELAY for one):

    b"H" + protocol + fingerprint    first, both ways: a link between workers
                                     of different configs (mid-reload) or
                                     framings (mid-upgrade) is unused
    b"?" + key                       "you are resolving this key (or own it): tell me"
    b"R" + key                       the same for a prefetch: not from a copy
                                     in its own prefetch window
    b"!" + handoff record body       "this is what I learned for key"

Nothing here is needed for correctness, but clients wait on a reply: a
worker that asked the owner answers its clients only when the owner tells
it the outcome, or after the zone's timeout (+0.5 s) if it never does (after
0.5 s if nothing at all comes from the owner: worker/peer_misses.py). So
when the link is full (the other worker busy for a moment: a burst, a
sibling starting on a 2-core node) the three kinds of message are treated
differently:

* a datagram that does not fit waits in an in-process backlog, sent in
  order once the link drains: a reply dropped there cost the asker's
  clients 2.5 s (seen as ~20-400 queries lost per rolling restart under
  20,000 qps, tests/integration/test_ops_upgrade.py);
* while the backlog is not empty, a reply is added to it, an ask is not
  made (we go upstream ourselves: one duplicate upstream query at worst),
  and a share (an answer the peer did not ask for) is dropped and counted
  (STATS peer_dropped): the peer fetches it itself if asked.

The socketpair keeps the kernel's default buffers (supervisor/peering.py
says why). A closed link leaves each worker resolving everything itself,
as a lone worker does; a miss that waited on a silent owner is counted in
STATS peer_fallbacks.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from worker.cache import Entry
from worker.claims import ClaimTable, Held
from worker.handoff import CacheStreamError, encode_entry, record_key, told_frames
from worker.wire import ACCEL

log = logging.getLogger(__name__)

HELLO, ASK, REFRESH, TOLD = b"H", b"?", b"R", b"!"
# Each message is a frame: its type byte, its body's length (4 bytes, big
# endian: a cache-stream record, worker/handoff.py, is exactly that length and
# body), the body. A datagram carries the frames queued in one turn of the
# event loop: a send, and a wake-up of the other worker, cost more than a
# miss's own work (~10 us; the pair spent 72-95 us of CPU per miss against one
# worker's 39-42 with a datagram per message).
FRAME_LEN = struct.Struct("!I")
FRAME_HEAD = 1 + FRAME_LEN.size
# In HELLO before the fingerprint: a worker framing messages otherwise (an
# older release, mid-upgrade) never agrees, and the link stays unused.
PROTOCOL = b"\x02"
MAX_MESSAGE = 70000              # one handoff record: a DNS message of 64 KiB at most, and its fields
MAX_BATCH = 16 * 1024            # frames per datagram, in bytes (a larger one goes alone)
MAX_DATAGRAM = MAX_BATCH + MAX_MESSAGE + FRAME_HEAD
READS_PER_WAKE = 256             # bounded work per event-loop turn
# Seconds an answer the peer did not ask for may wait for a datagram to ride
# in: meanwhile a query for it at the peer is asked of us (a hit here), so
# no upstream query is added; below the 0.1 s of a client's first retry.
SHARE_DELAY = 0.02
# Seconds a claim outlives its miss (worker/claims.py): the answer reaches
# the peer within SHARE_DELAY and a turn of its loop; meanwhile the peer's
# misses for it are asked of us, a hit here, not upstream.
SHARE_HOLD = SHARE_DELAY + 0.03
# Datagrams held while the link is full (up to MAX_BATCH each: ~8 MiB, ~40
# times what the link's own buffer holds): a peer that far behind is stuck,
# and its clients have waited out the fallback (or its replacement) anyway.
MAX_BACKLOG = 512
SLOTS = ("A", "B")
PEER, FULL = int(Held.PEER), int(Held.FULL)     # plain ints: compared on every miss


def valid_key_reference(key: bytes) -> bool:
    """A cache key as wire.make_key builds it: a name wire (labels of 1-63
    bytes, 255 bytes at most, ending in the root), qtype, qclass, flags 0-3.
    The reference of the C accelerator's valid_key."""
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


# Every frame's key is checked: in C when the accelerator is built.
valid_key = ACCEL.valid_key if ACCEL is not None else valid_key_reference


def owner(key: bytes) -> str:
    """The slot that asks upstream for `key`; the same in every process."""
    return SLOTS[zlib.crc32(key) & 1]


@dataclass
class PeerCounts:
    """A worker's totals over every link it has had (it is relinked after each
    replacement of its sibling): STATS peer_dropped, peer_fallbacks and peer_asks."""
    dropped: int = 0            # shares dropped on a full link, and replies past MAX_BACKLOG
    fallbacks: int = 0          # misses asked upstream by us after the owner stayed silent
    asks: int = 0               # misses asked of the peer (it had claimed them, or owns them)


class PeerLink:
    """One end of the link. `on_ask(key, refresh)` and `on_told(key, record)` (a
    handoff record's body, worker/handoff.py) are the resolver's; the link only moves bytes."""

    def __init__(self, sock: socket.socket, slot: str, config_print: bytes,
                 on_ask: Callable[[bytes, bool], None], on_told: Callable[[bytes, bytes], None],
                 on_close: Callable[["PeerLink"], None], counts: PeerCounts | None = None,
                 claims: ClaimTable | None = None) -> None:
        self.sock = sock
        self.claims = claims         # the pair's misses in flight (worker/claims.py), if shared
        self.slot = slot
        self.slot_bit = SLOTS.index(slot)
        self.config_print = config_print
        self.on_ask, self.on_told, self.on_close = on_ask, on_told, on_close
        self.counts = PeerCounts() if counts is None else counts
        self.agreed = False          # the peer's fingerprint is ours
        self.closed = False
        self.received = self.bad = 0
        self.last_heard = 0.0        # time.monotonic() of the last datagram from the peer
        self.quiet = False           # it left our asks unanswered (PeerMisses._peer_silent): not asked until heard
        self.outgoing: list[bytes] = []          # frames queued in this turn of the event loop
        self.flushing = False                    # a _flush() is scheduled
        self.shares: list[bytes] = []            # answers the peer did not ask for, not yet sent
        self.share_timer: asyncio.TimerHandle | None = None
        self.backlog: deque[bytes] = deque()     # datagrams that met a full link, in order
        self.loop = asyncio.get_running_loop()

    def start(self) -> None:
        self.sock.setblocking(False)
        self.loop.add_reader(self.sock.fileno(), self._readable)
        self.hello()

    def hello(self) -> None:
        """Our protocol and config fingerprint: the first frame, and later a sign
        of life (any datagram is one; a HELLO changes nothing at the peer)."""
        self._queue(HELLO + FRAME_LEN.pack(len(PROTOCOL) + len(self.config_print)) + PROTOCOL + self.config_print)

    @property
    def usable(self) -> bool:
        return self.agreed and not self.closed

    def held_elsewhere(self, key: bytes, ahead: float) -> bool:
        """True when the peer is resolving `key` (its live claim, worker/claims.py),
        or owns it by the crc32 rule when there is no claim table or the
        key's slots are full: ask the peer. False: resolve it ourselves;
        with the table the key is then claimed for us for `ahead` seconds
        (or until settle()), so a miss for it at the peer is asked of us."""
        if not self.agreed or self.closed or self.quiet:
            return False
        claims = self.claims
        if claims is not None:
            held = claims.claim(key, ahead)
            if held != FULL:
                return held == PEER
        # owner(key) != self.slot, inline: asked for every miss without a claim.
        return zlib.crc32(key) & 1 != self.slot_bit

    def settle(self, key: bytes) -> None:
        """Our miss of key is done: its claim lasts SHARE_HOLD more, while the
        answer is on its way to the peer."""
        if self.claims is not None and not self.closed:
            self.claims.settle(key, SHARE_HOLD)

    def ask(self, key: bytes, refresh: bool = False) -> bool:
        """False when the link is full or closed: ask upstream yourself."""
        if self.closed or self.backlog:
            return False
        self._queue((REFRESH if refresh else ASK) + FRAME_LEN.pack(len(key)) + key)
        return True

    def tell(self, key: bytes, entry: Entry, reply: bool) -> bool:
        """What we know for `key`: `reply` when the peer asked for it (its
        clients wait: held until the link has room), else a share (dropped
        and counted when the link is full)."""
        if not self.agreed or self.closed or entry.expires < entry.stored_at:     # not one that left the cache
            return False
        if self.backlog and (not reply or len(self.backlog) >= MAX_BACKLOG):
            self.counts.dropped += 1
            return False
        frame = encode_entry(key, entry, TOLD)      # a handoff record is a frame's length and body
        if reply:
            self._queue(frame)
        else:
            self._queue_share(frame)
        return True

    def _queue_share(self, frame: bytes) -> None:
        """A share goes with the next datagram sent anyway, or SHARE_DELAY
        later: at a few misses a second each share was a datagram, and a
        wake-up of the other worker, of its own."""
        self.shares.append(frame)
        if self.share_timer is None and not self.flushing:
            self.share_timer = self.loop.call_later(SHARE_DELAY, self._flush)

    def _queue(self, frame: bytes) -> None:
        self.outgoing.append(frame)
        if not self.flushing:
            self.flushing = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """This turn's frames, in datagrams of up to MAX_BATCH bytes: one send
        (and one wake-up of the peer) for many messages."""
        self.flushing = False
        frames, self.outgoing = self.outgoing, []
        if self.shares:
            frames += self.shares
            self.shares = []
        if self.share_timer is not None:
            self.share_timer.cancel()
            self.share_timer = None
        if self.closed or not frames:
            return
        batch: list[bytes] = []
        size = 0
        for frame in frames:
            if batch and size + len(frame) > MAX_BATCH:
                self._send(b"".join(batch))
                batch, size = [], 0
            batch.append(frame)
            size += len(frame)
        self._send(b"".join(batch))

    def _send(self, datagram: bytes) -> None:
        """Send now, or behind what already waits for room."""
        if self.closed:
            return
        if not self.backlog:
            try:
                self.sock.send(datagram)
                return
            except (BlockingIOError, InterruptedError):
                self.loop.add_writer(self.sock.fileno(), self._writable)
            except OSError:
                self.close()
                return
        self.backlog.append(datagram)

    def _writable(self) -> None:
        backlog = self.backlog
        try:
            while backlog:
                self.sock.send(backlog[0])
                backlog.popleft()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        self.loop.remove_writer(self.sock.fileno())

    def poll(self) -> None:
        """Take what the peer has sent, if anything, now."""
        if not self.closed:
            self._readable()

    def _readable(self) -> None:
        for _ in range(READS_PER_WAKE):
            try:
                data = self.sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self.close()
                return
            self.received += 1
            self.last_heard = time.monotonic()
            self.quiet = False
            if self.agreed and told_frames is not None:
                frames = told_frames(data)      # None: other frames among them, or bad ones
                if frames is not None:
                    on_told = self.on_told
                    for key, record in frames:
                        on_told(key, record)
                    continue
            at, end = 0, len(data)
            while at < end and not self.closed:
                if end - at < FRAME_HEAD or (body_end := at + FRAME_HEAD + FRAME_LEN.unpack_from(data, at + 1)[0]) > end:
                    self.bad += 1
                    log.warning("peer link: a frame runs past the end of its datagram; the rest dropped")
                    break
                self._take(data[at:at + 1], data[at + FRAME_HEAD:body_end])
                at = body_end

    def _take(self, kind: bytes, body: bytes) -> None:
        if kind == HELLO:
            self.agreed = body == PROTOCOL + self.config_print
            if not self.agreed:
                log.info("peer link unused: the other worker runs another config or release")
            return
        if not self.agreed:
            return
        try:
            if kind == TOLD:            # the most frequent: every answer either worker learns
                key = record_key(body)  # the rest is decoded when the entry is needed (worker/cache.py)
                if not valid_key(key):
                    raise CacheStreamError("not a cache key")
                self.on_told(key, body)
            elif kind == ASK or kind == REFRESH:
                if not valid_key(body):
                    raise CacheStreamError("not a cache key")
                self.on_ask(body, kind == REFRESH)
            else:
                raise CacheStreamError(f"unknown message type {kind!r}")
        except (CacheStreamError, ValueError, struct.error) as e:
            self.bad += 1
            log.warning("peer link: bad message dropped: %s", e)

    def close(self) -> None:
        if self.closed:
            return
        if (self.outgoing or self.shares) and not self.backlog:
            self._flush()       # best effort: replies and shares not sent yet (a drain closes the link)
            if self.closed:     # the send found the link broken and closed it
                return
        self.closed = True
        self.outgoing.clear()
        self.shares.clear()
        if self.share_timer is not None:
            self.share_timer.cancel()
            self.share_timer = None
        self.backlog.clear()         # the asker re-asks upstream when it sees the link close
        try:
            self.loop.remove_reader(self.sock.fileno())
            self.loop.remove_writer(self.sock.fileno())
        except (ValueError, OSError):
            pass
        self.sock.close()
        if self.claims is not None:
            self.claims.close()
        self.on_close(self)
