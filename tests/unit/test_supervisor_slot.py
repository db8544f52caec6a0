"""The slot state machine and crash-loop backoff: pure logic."""
from __future__ import annotations

import pytest

from supervisor.slot import Backoff, TransitionError, Worker, WorkerSlot
from supervisor.states import RestartCause, SlotPhase, SlotState


def slot_with_worker() -> tuple[WorkerSlot, Worker]:
    slot = WorkerSlot("A", Backoff(1.0, 30.0))
    w = Worker(slot="A", generation=1, pid=100, started_at=0.0)
    slot.current = w
    return slot, w


def test_lifecycle_records_every_change_with_monotonic_time():
    slot, w = slot_with_worker()
    assert w.state is SlotState.STARTING
    slot.change_state(w, SlotState.READY, "probe answered")
    slot.change_state(w, SlotState.DRAINING, "replaced")
    slot.change_state(w, SlotState.STOPPED, "exit 0")
    assert [(e.source, e.target) for e in slot.events] == [
        (SlotState.STARTING, SlotState.READY), (SlotState.READY, SlotState.DRAINING),
        (SlotState.DRAINING, SlotState.STOPPED)]
    assert w.ready_at == slot.events[0].at
    assert slot.events[0].at <= slot.events[1].at <= slot.events[2].at
    assert not w.alive


@pytest.mark.parametrize("source", list(SlotState))
def test_transitions_not_in_the_table_are_refused(source):
    for target in SlotState:
        slot, w = slot_with_worker()
        w.state = source
        if source.may_become(target):
            slot.change_state(w, target, "ok")
            assert w.state is target
        else:
            with pytest.raises(TransitionError, match=f"{source.value} -> {target.value}"):
                slot.change_state(w, target, "nope")
            assert w.state is source and not slot.events


def test_terminal_states_are_final():
    for final in (SlotState.STOPPED, SlotState.FAILED):
        assert not any(final.may_become(t) for t in SlotState)
    assert SlotState.STARTING.may_become(SlotState.READY)
    assert not SlotState.READY.may_become(SlotState.STARTING)


def test_slot_state_without_a_worker():
    slot = WorkerSlot("B", Backoff(1.0, 30.0))
    assert slot.state is SlotState.STOPPED
    slot.change_phase(SlotPhase.BACKOFF, "crashed", respawn_at=5.0)
    assert slot.state is SlotState.FAILED
    slot.serve(Worker(slot="B", generation=1, pid=100, started_at=0.0))
    slot.current = None
    slot.change_phase(SlotPhase.GIVEN_UP, "exit 78")
    assert slot.state is SlotState.FAILED


def test_backoff_first_crash_is_immediate_then_doubles_to_the_cap():
    b = Backoff(initial=1.0, maximum=8.0)
    assert [b.next_delay(uptime=0.5) for _ in range(6)] == [0.0, 1.0, 2.0, 4.0, 8.0, 8.0]


def test_backoff_resets_after_a_worker_ran_long_enough():
    b = Backoff(initial=1.0, maximum=8.0)
    b.next_delay(0.1)
    assert b.next_delay(0.1) == 1.0
    assert b.next_delay(uptime=8.0) == 0.0
    assert b.next_delay(0.1) == 1.0


def test_snapshot_is_plain_data():
    import json
    slot, w = slot_with_worker()
    slot.restarts[RestartCause.CRASH] += 2
    snap = slot.snapshot().as_dict()
    assert json.loads(json.dumps(snap)) == snap
    assert snap["current"]["pid"] == 100 and snap["current"]["state"] == "starting"
    assert snap["restarts"]["crash"] == 2


def test_slot_phases_follow_the_table():
    slot = WorkerSlot("A", Backoff(1.0, 30.0))
    assert slot.phase is SlotPhase.EMPTY and not slot.respawn_due(100.0)
    slot.change_phase(SlotPhase.BACKOFF, "spawn failed", respawn_at=5.0)
    assert not slot.respawn_due(4.9) and slot.respawn_due(5.0)
    slot.serve(Worker(slot="A", generation=1, pid=100, started_at=0.0))
    assert slot.phase is SlotPhase.SERVING and slot.respawn_at is None
    slot.current = None
    slot.change_phase(SlotPhase.GIVEN_UP, "exit 78")
    assert slot.given_up == "exit 78" and not slot.respawn_due(100.0)
    with pytest.raises(TransitionError, match="given_up -> backoff"):
        slot.change_phase(SlotPhase.BACKOFF, "crash", respawn_at=1.0)
    slot.change_phase(SlotPhase.EMPTY, "rolling replacement")
    assert slot.given_up is None and slot.state is SlotState.STOPPED
