"""net.ipv4.tcp_migrate_req handling, against a stand-in file."""
from __future__ import annotations

from netsetup.sysctl import ensure_tcp_migrate_req, tcp_migrate_req_problems


def test_sets_it_once_and_reports_it(tmp_path):
    knob = tmp_path / "tcp_migrate_req"
    knob.write_text("0\n")
    assert tcp_migrate_req_problems(str(knob)) == ["net.ipv4.tcp_migrate_req is 0, want 1"]
    assert ensure_tcp_migrate_req(str(knob)) == ["set net.ipv4.tcp_migrate_req = 1"]
    assert knob.read_text().strip() == "1"
    assert ensure_tcp_migrate_req(str(knob)) == [] and tcp_migrate_req_problems(str(knob)) == []


def test_kernels_without_it_are_left_alone(tmp_path):
    missing = str(tmp_path / "absent")
    assert ensure_tcp_migrate_req(missing) == [] and tcp_migrate_req_problems(missing) == []
