"""The answer cache: stored wire responses, their lifetimes and eviction.

An `Entry` keeps the upstream response as wire bytes with the offsets of every
TTL field, so a hit only patches integers into a copy (once per second of age,
not per query) and splices in the client's ID and question.
"""
from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable

from worker import wire

# The C accelerator's opt_form() and untrack() (worker/_fastwire.c), or None.
_with_opt = wire.ACCEL.with_opt if wire.ACCEL is not None else None
_untrack = wire.ACCEL.untrack if wire.ACCEL is not None else None
# RFC 8767 section 4: a stale answer's TTL, and how long it is reused before upstream is asked again.
STALE_TTL = 30
# Expiry is kept in slots of 1/EXPIRY_SLOTS_PER_SECOND seconds: an expired entry
# is dropped first when the cache is full once its whole slot has passed.
EXPIRY_SLOTS_PER_SECOND = 10
# Prefetch as unbound does it: in the last 10% of the lifetime.
PREFETCH_FRACTION = 0.1
PREFETCH_MIN_LIFETIME = 10.0


class Entry:
    """One cached response and its pre-rendered forms for the current age.

    It holds only bytes, numbers, tuples of ints and its shared hit row (a
    list of two ints), so it is never part of a reference cycle, and the C
    accelerator takes it out of the cyclic garbage collector (untrack):
    every young collection walked each entry cached since the last one,
    ~1-2 ms of the event loop per collection, and a collection of the older
    generation 26 ms with a 100,000-entry cache under a miss flood, freeing
    nothing. A slot added here must not hold anything that can refer back
    to the entry."""

    __slots__ = ("qname_end", "qtype", "ttl_offsets", "ttls", "stored_at", "expires", "rcode",
                 "mirror_rd", "do", "plain", "with_opt", "referenced",
                 "hits", "render_at", "shown_age", "stale_until", "key", "prefetched")

    def __init__(self, template: bytes, qname_end: int, ttl_offsets: tuple[int, ...], ttls: tuple[int, ...],
                 stored_at: float, lifetime: float, rcode: int, mirror_rd: bool, do: bool,
                 rendered: bool = False) -> None:
        # No copy of `template` is kept: `plain` differs from it only in the TTLs,
        # which every render rewrites from `ttls` (a cached entry costs ~1/3 less).
        self.plain = template
        self.qname_end = qname_end
        self.qtype = wire.U16.unpack_from(template, qname_end)[0]
        self.hits: list[int] | None = None      # its hit row (worker/stats.py), from its first hit
        self.ttl_offsets = ttl_offsets
        self.ttls = ttls
        self.stored_at = stored_at
        self.expires = stored_at + lifetime
        self.rcode = rcode
        self.mirror_rd = mirror_rd
        self.do = do
        self.referenced = False
        self.stale_until: float | None = None   # set by Cache.put (serve_stale)
        self.key: bytes | None = None           # set by Cache.put
        self.prefetched = False
        # `template` may already show `ttls` (a miss's): then it need not be copied again.
        self._show(template if rendered else self._rendered(0), 0)
        if _untrack is not None:
            _untrack(self)

    def _rendered(self, age: int) -> bytes:
        buf = bytearray(self.plain)
        pack = wire.U32.pack_into
        for off, ttl in zip(self.ttl_offsets, self.ttls):
            pack(buf, off, ttl - age if ttl > age else 0)
        return bytes(buf)

    def render(self, age: int) -> None:
        """Pre-render the reply with TTLs lowered by `age` seconds; the form
        with OPT is made at the first query with EDNS (opt_form())."""
        self._show(self._rendered(age), age)

    def _show(self, plain: bytes, age: int) -> None:
        self.plain = plain
        self.shown_age = age
        self.with_opt = None
        # time.monotonic() from which the shown TTLs are a second too high, or
        # the entry is expired or gone (see leave()): a hit compares one float.
        next_second = self.stored_at + age + 1
        self.render_at = next_second if next_second < self.expires else self.expires

    def opt_form(self) -> bytes:
        """`plain` with our OPT record appended (ARCOUNT + 1), kept until the next render."""
        p = self.plain
        formed = _with_opt(p, wire.OPT_RECORDS[self.do]) if _with_opt is not None else None
        if formed is None:          # no C accelerator (or it declines: the reference raises why)
            formed = b"".join((p[:10], wire.U16.pack(wire.U16.unpack_from(p, 10)[0] + 1), p[12:],
                               wire.OPT_RECORDS[self.do]))
        self.with_opt = formed
        return formed

    @property
    def template(self) -> bytes:
        """The stored response as first rendered (TTLs not lowered): for handoff and stale copies.
        Every answer the pair learns is told to the other worker while it is
        still shown at age 0: then `plain` is that form already, not re-rendered."""
        return self.plain if self.shown_age == 0 else self._rendered(0)

    def stale_copy(self, now: float) -> "Entry":
        """This expired answer served again (RFC 8767): every TTL 30 seconds,
        cacheable for those 30, still bound by this entry's stale_until."""
        copy = Entry(self.template, self.qname_end, self.ttl_offsets, tuple(STALE_TTL for _ in self.ttls),
                     now, STALE_TTL, self.rcode, self.mirror_rd, self.do)
        copy.stale_until = self.stale_until
        return copy

    def prefetch_due(self, now: float) -> bool:
        """Whether a hit at `now` should refresh this entry from upstream:
        once, in the last PREFETCH_FRACTION of a lifetime of at least
        PREFETCH_MIN_LIFETIME (a 1-second TTL is not worth a second query)."""
        return (not self.prefetched and self.expires - self.stored_at >= PREFETCH_MIN_LIFETIME
                and self.in_refresh_window(now))

    def in_refresh_window(self, now: float) -> bool:
        """In the last PREFETCH_FRACTION of its lifetime: a copy that a
        prefetch (ours, or the peer's asking us) would replace."""
        return self.expires - now <= (self.expires - self.stored_at) * PREFETCH_FRACTION

    def leave(self) -> None:
        """It is no longer the cache's: holders of a direct reference (the
        answerer's exact-query index) see it as expired from now on."""
        self.expires = self.render_at = float("-inf")

    def truncated(self, qname_end: int, has_opt: bool) -> bytes:
        """TC=1 form: header and question only (plus OPT), for a client whose
        UDP payload size is too small for the answer."""
        t = self.plain                  # header and question are the template's
        question_end = qname_end + 4
        head = bytes((t[2] | wire.FLAG_TC, t[3])) + b"\x00\x01\x00\x00\x00\x00"
        if has_opt:
            return t[:2] + head + b"\x00\x01" + t[12:question_end] + wire.OPT_RECORDS[self.do]
        return t[:2] + head + b"\x00\x00" + t[12:question_end]


class Cache:
    """A bounded map from query key to Entry.

    When full, expired entries go first, soonest-expired first (a flood of
    short-lived names must not push out long-lived popular ones), then
    CLOCK (second chance) over insertion order: O(1) amortised, and a hit
    only sets a flag instead of reordering.

    Expired entries are found through slots of expiry time (a tenth of a
    second each), a list of entries per slot and a heap of the slots in
    use: a put appends to a list, and the heap moves only when a slot
    opens or empties. A heap of (expires, entry) items cost ~2 us per put
    in tuple comparisons when full (a pop sifts through every level), and
    ~80 bytes per entry (the item and its float)."""

    def __init__(self, capacity: int, serve_stale: float = 0.0) -> None:
        self.capacity = capacity
        self.serve_stale = serve_stale          # seconds an expired entry is kept for stale()
        self.stale_served = 0
        self.entries: OrderedDict[bytes, Entry] = OrderedDict()
        # Made after the worker froze what it loaded (main.tune_gc), so the collector
        # would walk every key and entry in it at each collection of an older
        # generation (~5 ms per 30,000). It holds only bytes and (untracked) entries:
        # never in a cycle. CPython tracks a dict again at any insertion of an
        # object of a collected type, so put() untracks it after each;
        # without the accelerator nothing is untracked.
        if _untrack is not None:
            _untrack(self.entries)
        # Expiry slot -> the entries put with an expiry in it (entries that left since are
        # skipped when their slot is emptied); the slots in use, as a heap; entries in all lists.
        self.expiry: dict[int, list[Entry]] = {}
        self.expiry_slots: list[int] = []
        self.expiry_items = 0
        self.evictions = 0
        # Answers the other worker of the pair told us (worker/peer.py), as their
        # record bytes until first asked for here (get, stale): most names are
        # asked at one worker only, and building an Entry cost that worker more
        # than anything else a share does. `unfold` (set with the first) makes
        # the Entry, or None for a record that does not hold together.
        self.told: dict[bytes, bytes] = {}
        self.unfold: Callable[[bytes], Entry | None] | None = None

    def __len__(self) -> int:
        return len(self.entries) + len(self.told)

    def hold(self, key: bytes, record: bytes, unfold: Callable[[bytes], Entry | None]) -> None:
        """Keep `record` for key, made into an Entry when first asked for.
        Entries and records together stay within `capacity`: the oldest
        record goes first; with none held, the record is made an entry
        now and evicts as any new entry does."""
        if self.capacity <= 0:
            return
        self.unfold = unfold
        told = self.told
        told.pop(key, None)
        full = len(self.entries) + len(told) >= self.capacity
        unfold_now = full and not told      # a cache full of entries: this one evicts as any new entry
        if full and told:
            del told[next(iter(told))]
        told[key] = record
        if unfold_now:
            self._unfolded(key)

    def unfold_told(self) -> None:
        """Every held record into the cache (before a handoff streams it)."""
        for key in list(self.told):
            self._unfolded(key)

    def _unfolded(self, key: bytes) -> Entry | None:
        record = self.told.pop(key, None)
        entry = None if record is None else self.unfold(record)
        if entry is not None:
            self.put(key, entry)
        return entry

    def get(self, key: bytes, now: float) -> Entry | None:
        entry = self.entries.get(key)
        if entry is None and (not self.told or (entry := self._unfolded(key)) is None):
            return None
        if now >= entry.expires:
            if now >= entry.stale_until:
                del self.entries[key]
                entry.leave()
            return None
        entry.referenced = True
        return entry

    def stale(self, key: bytes, now: float) -> Entry | None:
        """For a miss whose upstreams failed: a copy of the expired answer
        still within serve_stale, now cached for STALE_TTL seconds."""
        entry = self.entries.get(key)
        if entry is None and self.told:
            entry = self._unfolded(key)
        if entry is None or not entry.expires <= now < entry.stale_until:
            return None
        copy = entry.stale_copy(now)
        self.put(key, copy)
        self.stale_served += 1
        return copy

    def put(self, key: bytes, entry: Entry) -> None:
        entry.key = key
        told = self.told
        if told:
            told.pop(key, None)             # what we store now is newer
            if len(self.entries) + len(told) >= self.capacity > 0:
                del told[next(iter(told))]  # held records leave before entries do
        if entry.stale_until is None:
            entry.stale_until = entry.expires + self.serve_stale
        if self.capacity <= 0:
            entry.leave()
            return
        entries = self.entries
        replaced = entries.pop(key, None)
        if replaced is not None:
            replaced.leave()
        if len(entries) >= self.capacity:
            self._drop_expired(entry.stored_at)
        # Second chance is bounded: each pass clears a flag, so at most
        # len(entries) reinsertions happen before an unreferenced one is found.
        while len(entries) >= self.capacity:
            old_key, old = entries.popitem(last=False)
            if old.referenced:
                old.referenced = False
                entries[old_key] = old
            else:
                self.evictions += 1
                old.leave()
        entries[key] = entry
        if _untrack is not None:
            _untrack(entries)       # see __init__: an insertion tracked it again
        self._expires(entry)
        if self.expiry_items > 2 * self.capacity + 64:
            # Too many items of entries that already left: rebuild from the live ones.
            self.expiry, self.expiry_slots, self.expiry_items = {}, [], 0
            for live in entries.values():
                self._expires(live)

    def _expires(self, entry: Entry) -> None:
        try:
            slot = int(entry.expires * EXPIRY_SLOTS_PER_SECOND)
        except (OverflowError, ValueError):     # no finite expiry (one that left, from a stream): CLOCK only
            return
        listed = self.expiry.get(slot)
        if listed is None:
            listed = self.expiry[slot] = [entry]
            if _untrack is not None:        # entries only (see __init__), so the dict stays untracked too
                _untrack(listed)
            heapq.heappush(self.expiry_slots, slot)
        else:
            listed.append(entry)
        self.expiry_items += 1

    def _drop_expired(self, now: float) -> None:
        """Make room by dropping expired entries, soonest-expired first, only as
        many as a put needs: a cache full of expired answers (a burst of
        short-TTL names a second ago) dropped all at once stalled the worker
        for ~40 ms per 10,000 entries, and every query waited behind it (the
        miss p99 at 2,000 qps)."""
        slots, entries, capacity = self.expiry_slots, self.entries, self.capacity
        passed = int(now * EXPIRY_SLOTS_PER_SECOND)     # slots before it hold only expired entries
        while slots and slots[0] < passed and len(entries) >= capacity:
            listed = self.expiry[slots[0]]
            while listed and len(entries) >= capacity:
                entry = listed.pop()
                self.expiry_items -= 1
                if entries.get(entry.key) is entry:
                    del entries[entry.key]
                    entry.leave()
            if not listed:
                del self.expiry[heapq.heappop(slots)]
