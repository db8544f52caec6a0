"""Socket custody: who holds which UDP sockets of the reuseport group when a
worker dies, is killed or is replaced, and when they are steered away
(DESIGN.md, "Steering away"). Pure decisions over slot records, like
netsetup/rules.plan: the pool carries them out (connect(), close()).

A dead worker's bound UDP sockets still hold queued queries. They stay in
the group (queueing for the replacement) while nobody else serves, since a
group of only connected sockets refuses clients; once another worker serves
they are steered away, and the replacement drains them ("adopted").
"""
from __future__ import annotations

from typing import Callable, Iterable, TypeVar

from supervisor.slot import Worker, WorkerSlot
from supervisor.states import SlotState

# A crash loop would pile sockets up; a replacement gets at most this many
# generations of them (the newest: older ones held the least).
MAX_ORPHAN_GENERATIONS = 3

S = TypeVar("S")


def others_serving(slots: Iterable[WorkerSlot], worker: Worker) -> bool:
    """Whether a READY worker other than `worker` (not one we are killing) is in the group."""
    return any(w is not worker and w.state is SlotState.READY and w.kill_cause is None
               for slot in slots for w in slot.watched())


def steer_when_lost(worker: Worker, others: bool) -> bool:
    """Whether a worker that died or is being killed has its UDP sockets steered away now."""
    return worker.state is not SlotState.DRAINING and not worker.handles.sockets.steered and others


def unserved_sockets(slots: Iterable[WorkerSlot]) -> list:
    """Dead workers' UDP socket sets, awaiting a replacement or being drained by one:
    what leaves the group once a replacement's own sockets are in it."""
    slots = list(slots)
    held = [s.orphans for s in slots if s.orphans is not None]
    for slot in slots:
        for w in slot.watched():
            if w.handles is None:
                continue
            if w.handles.adopted is not None:
                held.append(w.handles.adopted)
            if w.kill_cause is not None and w.state is not SlotState.DRAINING:
                held.append(w.handles.sockets)      # killed, exit not handled yet
    return held


def orphans_to_keep(held: list[S], bound: Callable[[S], bool], listen_count: int) -> tuple[list[S], list[S]]:
    """Of a dead worker's UDP sockets (its adopted ones first, then its own), the ones
    handed to its replacement, and the ones to close: only bound sockets can hold
    queries (a worker that never got ready had none bound), and only the newest
    MAX_ORPHAN_GENERATIONS generations' are kept."""
    candidates = [s for s in held if bound(s)]
    keep = candidates[-MAX_ORPHAN_GENERATIONS * listen_count:]
    return keep, [s for s in held if not any(s is k for k in keep)]
