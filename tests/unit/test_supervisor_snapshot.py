"""The typed supervisor-state snapshot (supervisor/snapshot.py): JSON round
trip, the shape older releases wrote, fds marked process-local."""
from __future__ import annotations

import json

import pytest

from supervisor.snapshot import FORMAT, ListenerRecord, SlotRecord, SnapshotError, SupervisorRecord, \
    SupervisorSnapshot, WorkerFds, WorkerRecord


def sample() -> SupervisorSnapshot:
    fds = WorkerFds(pidfd=10, control=11, probe=12, udp=(13,), tcp=(14,), adopted_udp=(15,), steered=True)
    slots = {"A": SlotRecord("A", WorkerRecord("A", 4, 1234, "ready", 12.5, fds), (), {"crash": 2}, 1, None),
             "B": SlotRecord("B", None, (), {"crash": 0}, 0, "exit 78")}
    return SupervisorSnapshot(SupervisorRecord(99, 4, 100.0, "/etc/twindns.toml", None, slots),
                              from_version="0.1.0", to_version="0.2.0", config_text="x = 1\n",
                              config_path="/etc/twindns.toml", metrics={"rolling_restarts": 3},
                              listeners=(ListenerRecord("127.0.0.1", 9253, 16),), reply_fd=17)


def test_round_trip_keeps_every_field():
    snap = sample()
    assert SupervisorSnapshot.from_json(snap.to_json()) == snap
    assert json.loads(snap.to_json())["format"] == FORMAT


def test_reads_the_shape_releases_before_it_wrote():
    legacy = {"from_version": "0.1.0", "to_version": "0.2.0", "config_text": "", "config_path": "/c.toml",
              "arbiter": {"pid": 5, "generation": 2, "uptime": 3.0, "config_arg": None, "socket_arg": None,
                          "slots": {"A": {"name": "A", "current": {
                              "slot": "A", "generation": 2, "pid": 77, "state": "ready", "uptime": 1.0,
                              "fds": {"pidfd": 3, "udp": [4], "tcp": [5], "adopted_udp": [], "steered": False,
                                      "control": 6, "probe": 7}},
                              "retiring": [], "restarts": {"rolling": 1}, "backoff_failures": 0,
                              "given_up": None}}},
              "metrics": {}, "http": [{"host": "127.0.0.1", "port": 9253, "fd": 8}], "reply_fd": 9}
    snap = SupervisorSnapshot.from_json(json.dumps(legacy))
    assert snap.supervisor.slots["A"].current.fds == WorkerFds(3, 6, 7, (4,), (5,), (), False)
    assert snap.fds() == [3, 6, 7, 4, 5, 8, 9]
    assert json.loads(snap.to_json()) == {**legacy, "format": FORMAT}     # and writes it back for them


def test_fds_lists_every_process_local_number_and_renumbering_maps_them_all():
    snap = sample()
    assert snap.fds() == [10, 11, 12, 13, 14, 15, 16, 17]
    moved = snap.renumbered({f: f + 100 for f in snap.fds()})
    assert moved.fds() == [f + 100 for f in snap.fds()]
    assert moved.supervisor.slots["A"].current.fds.steered is True       # portable fields unchanged
    assert moved.supervisor.slots["B"] == snap.supervisor.slots["B"]
    assert moved.workers()[0].pid == 1234


@pytest.mark.parametrize("text", ["{not json", "[]", '{"arbiter": {}}',
                                  '{"arbiter": {"slots": {"A": {"current": {"pid": "x"}}}}}'])
def test_malformed_json_is_one_error_type(text):
    with pytest.raises(SnapshotError):
        SupervisorSnapshot.from_json(text)
