"""Is this node's DNS healthy? Inputs for and the verdict behind `/health`.

`socket_drops(sock)` reads one socket's drop counter (datagrams the kernel
discarded because its receive queue was full: the `drops` column of
/proc/net/udp) with getsockopt(SO_MEMINFO). The supervisor holds a
duplicate of every worker socket, so it asks each of them. Reading
/proc/net/udp instead (as before) walks every UDP socket of the host's
hash table, under its bucket locks, for each read: at each probe interval
the supervisor spent 0.5-0.8 ms on it, on a CPU the workers serve from.

`HealthJudge` is pure logic. Each time the arbiter samples (every probe
interval) it calls `judge.observe(now, ready_workers, network_problems,
drops)` with `drops` = {worker name: total drops over its UDP sockets} and
gets a Verdict (status 200 or 503, body text). 503 means: no worker is ready,
the network state does not verify, or some worker's socket has been dropping
datagrams for longer than `drop_window` seconds. A short burst only shows
up in the body, so one spike does not get the node's DNS restarted by a
liveness probe.
"""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from typing import Iterable, Mapping

# linux/asm-generic/socket.h (x86-64, arm64; Linux 4.12+), not in Python's socket module.
SO_MEMINFO = 55
# linux/sock_diag.h: the u32s SO_MEMINFO returns; SK_MEMINFO_DROPS is sk_drops,
# what /proc/net/udp prints as `drops`.
MEMINFO = struct.Struct("=9I")
SK_MEMINFO_DROPS = 8


def socket_drops(sock: socket.socket) -> int | None:
    """Datagrams dropped at sock's full receive queue since it was made;
    None for a closed socket."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, MEMINFO.size)
    except OSError:
        return None
    if len(raw) < MEMINFO.size:
        return None
    return MEMINFO.unpack(raw)[SK_MEMINFO_DROPS]


@dataclass
class DropStreak:
    """One worker's drop counter as seen at successive samples."""
    last_total: int
    since: float | None = None      # start of the current run of dropping samples
    dropped_in_streak: int = 0


@dataclass(frozen=True)
class Verdict:
    status: int                        # 200 or 503
    reasons: tuple[str, ...]           # why 503 (empty when 200)
    notes: tuple[str, ...] = ()        # worth knowing, not failing (a short burst of drops)

    @property
    def healthy(self) -> bool:
        return self.status == 200

    @property
    def body(self) -> str:
        head = "ok" if self.healthy else "unhealthy"
        return "".join(f"{line}\n" for line in (head, *self.reasons, *self.notes))


@dataclass
class HealthJudge:
    """Turns samples into a Verdict; remembers only drop streaks.

    A worker is dropping at a sample when its counter grew since the previous
    sample; a streak is a run of such samples and ends at the first sample
    without growth. It fails health once it has lasted `drop_window` seconds.
    """
    drop_window: float
    _streaks: dict[str, DropStreak] = field(default_factory=dict)

    def observe(self, now: float, ready_workers: int, network_problems: Iterable[str],
                drops: Mapping[str, int], warnings: Iterable[str] = ()) -> Verdict:
        """`now` from time.monotonic(); `network_problems` empty when verify() is ok;
        `warnings` are shown but do not fail health (the config file is invalid, DNS still works)."""
        reasons: list[str] = []
        notes: list[str] = list(warnings)
        if ready_workers < 1:
            reasons.append("no worker is ready")
        reasons.extend(f"network: {p}" for p in network_problems)
        for name in list(self._streaks):
            if name not in drops:                 # worker replaced: forget it
                del self._streaks[name]
        for name, total in sorted(drops.items()):
            line = self._sample(name, total, now)
            if line is None:
                continue
            streak = self._streaks[name]
            if now - streak.since >= self.drop_window:
                reasons.append(line)
            else:
                notes.append(line)
        return Verdict(503 if reasons else 200, tuple(reasons), tuple(notes))

    def _sample(self, name: str, total: int, now: float) -> str | None:
        streak = self._streaks.get(name)
        if streak is None:
            self._streaks[name] = DropStreak(total)
            return None
        grew = total - streak.last_total
        streak.last_total = total
        if grew <= 0:                 # quiet sample (or a counter that restarted)
            streak.since, streak.dropped_in_streak = None, 0
            return None
        if streak.since is None:
            streak.since = now
        streak.dropped_in_streak += grew
        return (f"worker {name}: UDP receive queue overflowing, {streak.dropped_in_streak} "
                f"datagrams dropped in {now - streak.since:.0f}s")
