"""Socket custody decisions (supervisor/custody.py): pure logic over slot
records, no sockets."""
from __future__ import annotations

from supervisor.custody import MAX_ORPHAN_GENERATIONS, orphans_to_keep, others_serving, steer_when_lost, \
    unserved_sockets
from supervisor.slot import Backoff, Worker, WorkerSlot
from supervisor.states import RestartCause, SlotState


class Sockets:
    def __init__(self, name: str, steered: bool = False) -> None:
        self.name, self.steered = name, steered


class Handles:
    def __init__(self, name: str, adopted: str | None = None) -> None:
        self.sockets = Sockets(name)
        self.adopted = Sockets(adopted) if adopted else None


def worker(slot: str, pid: int, state: SlotState, adopted: str | None = None) -> Worker:
    return Worker(slot=slot, generation=pid, pid=pid, started_at=0.0, state=state,
                  handles=Handles(f"own{pid}", adopted))


def two_slots(a: Worker | None, b: Worker | None) -> list[WorkerSlot]:
    slots = [WorkerSlot("A", Backoff(1.0, 30.0)), WorkerSlot("B", Backoff(1.0, 30.0))]
    for slot, w in zip(slots, (a, b)):
        if w is not None:
            slot.serve(w)
    return slots


def test_only_a_ready_worker_not_being_killed_counts_as_serving():
    dead = worker("A", 1, SlotState.READY)
    for other_state, serving in ((SlotState.READY, True), (SlotState.STARTING, False),
                                 (SlotState.DRAINING, False)):
        assert others_serving(two_slots(dead, worker("B", 2, other_state)), dead) is serving
    killed = worker("B", 2, SlotState.READY)
    killed.kill_cause = RestartCause.HANG
    assert not others_serving(two_slots(dead, killed), dead)
    assert not others_serving(two_slots(dead, None), dead)


def test_an_incoming_replacement_counts_as_serving():
    slots = two_slots(worker("A", 1, SlotState.READY), None)
    slots[1].incoming = worker("B", 3, SlotState.READY)
    assert others_serving(slots, slots[0].current)


def test_a_lost_worker_is_steered_only_when_someone_else_serves_and_not_twice():
    w = worker("A", 1, SlotState.READY)
    assert steer_when_lost(w, others=True)
    assert not steer_when_lost(w, others=False)
    w.handles.sockets.steered = True
    assert not steer_when_lost(w, others=True)
    draining = worker("A", 2, SlotState.DRAINING)
    assert not steer_when_lost(draining, others=True)      # retire() steers it itself


def test_unserved_sockets_are_orphans_adopted_sets_and_killed_workers_own():
    adopting = worker("A", 1, SlotState.STARTING, adopted="dead0")
    killed = worker("B", 2, SlotState.READY)
    killed.kill_cause = RestartCause.HANG
    slots = two_slots(adopting, killed)
    slots[1].orphans = Sockets("orphanB")
    assert [s.name for s in unserved_sockets(slots)] == ["orphanB", "dead0", "own2"]
    killed.state = SlotState.DRAINING                       # being drained: not ours to steer
    assert [s.name for s in unserved_sockets(slots)] == ["orphanB", "dead0"]


def test_orphans_keep_only_bound_sockets_of_the_newest_generations():
    held = [f"g{g}" for g in range(6)] + ["unbound"]
    kept, closed = orphans_to_keep(held, lambda s: s != "unbound", listen_count=1)
    assert kept == [f"g{g}" for g in range(6 - MAX_ORPHAN_GENERATIONS, 6)]
    assert closed == [f"g{g}" for g in range(6 - MAX_ORPHAN_GENERATIONS)] + ["unbound"]
    kept, closed = orphans_to_keep(held, lambda s: True, listen_count=3)
    assert kept == held and closed == []
