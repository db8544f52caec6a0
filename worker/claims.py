"""Which worker of the pair asks upstream for a key: the first to miss it.

The pair's two workers map one table in shared memory (a memfd the
supervisor makes per link, contract/claimtable.py, and hands to both with
the link's socket, supervisor/peering.py). A worker that misses a key claims it there with one
compare-and-swap (worker/_claims.c) and asks upstream itself; a worker that
finds the other's live claim asks the other over the link instead
(worker/peer.py), so identical misses arriving at both workers at once still
go upstream once.

Why a claim and not only the crc32 rule it replaces (crc32(key) & 1 picks
the owner, worker/peer.py's owner()): under the rule half of all lone
misses took a hop to the other worker and back, two wake-ups and an
encode and decode on the path of a client waiting for its answer. At 2,000
lone misses a second the pair answered at p50 0.286 ms and 225 us of CPU
per answer, one worker at ~0.19 ms and ~130 us (bench/miss_latency.py).
With the claim, a lone miss is what it is for one worker, plus one C call.

A claim lasts until the miss is done, then SHARE_HOLD more (peer.py): the
answer is told to the other worker with the next datagram, up to
SHARE_DELAY later, and meanwhile a miss for the key at the other worker is
asked of us (a hit here) rather than upstream. Without the C extension, or
when a key's slots are all taken, the crc32 rule decides.
"""
from __future__ import annotations

import enum
import mmap
import os

from worker import accel

CLAIMS, WHY = accel.find("_claims", "claim table", "crc32 owner rule")


class Held(enum.IntEnum):
    """claim()'s verdict, as worker/_claims.c returns it."""
    MINE = 0            # ask upstream: a miss for it at the peer is asked of us
    PEER = 1            # the peer is resolving it: ask the peer
    FULL = 2            # the key's slots are all taken: the crc32 rule decides


class ClaimTable:
    """One worker's view of the pair's table; `me` is its slot (0: A, 1: B)."""

    def __init__(self, fd: int, me: int) -> None:
        """Maps the table behind `fd` (the caller closes fd); ValueError if
        its size is not a table's."""
        size = os.fstat(fd).st_size
        if size < 8 * CLAIMS.PROBES or size & (size - 1):
            raise ValueError(f"claim table of {size} bytes: expected a power of two >= {8 * CLAIMS.PROBES}")
        self.map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.me = me
        self._claim, self._settle = CLAIMS.claim, CLAIMS.settle

    @classmethod
    def open(cls, fd: int | None, me: int) -> ClaimTable | None:
        """The table behind `fd`, or None (no fd, no C extension, not a
        table); fd is closed either way."""
        if fd is None:
            return None
        try:
            return cls(fd, me) if CLAIMS is not None else None
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)

    def claim(self, key: bytes, ahead: float) -> int:
        """A Held verdict; MINE holds the key for `ahead` seconds unless settled sooner."""
        return self._claim(self.map, key, self.me, min(int(ahead * 1000) + 1, CLAIMS.MAX_AHEAD_MS))

    def settle(self, key: bytes, hold: float) -> bool:
        """Our miss of key is done: the claim ends `hold` seconds from now (0: now)."""
        return self._settle(self.map, key, self.me, int(hold * 1000))

    def close(self) -> None:
        self.map.close()
