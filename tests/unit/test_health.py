"""Health: the kernel's drop counters for a real socket, and the verdict logic."""
from __future__ import annotations

import socket
import time

import pytest

from supervisor.health import HealthJudge, socket_inode, udp_drops


def test_udp_drops_counts_a_real_receive_queue_overflow():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)   # the kernel's minimum
    rx.bind(("127.0.0.1", 0))
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ino, other_ino = socket_inode(rx), socket_inode(other)
        before = udp_drops([ino, other_ino])
        assert before == {ino: 0, other_ino: 0}
        for _ in range(200):                                  # never read: the queue overflows
            tx.sendto(b"x" * 512, rx.getsockname())
        deadline = time.monotonic() + 2
        while udp_drops([ino])[ino] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        after = udp_drops([ino, other_ino])
        assert after[ino] > 100
        assert after[other_ino] == 0
    finally:
        for s in (rx, other, tx):
            s.close()
    assert udp_drops([ino]) == {}                            # closed sockets vanish


def test_udp6_sockets_are_found_too():
    rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        rx.bind(("::1", 0))
    except OSError:
        rx.close()
        pytest.skip("no IPv6 loopback here")
    try:
        ino = socket_inode(rx)
        assert udp_drops([ino]) == {ino: 0}
    finally:
        rx.close()


def test_proc_format_is_parsed_by_column(tmp_path):
    f = tmp_path / "udp"
    f.write_text(
        "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n"
        "  1: 0A1414A9:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 17\n"
        "garbage\n")
    assert udp_drops([4242, 9], paths=[str(f), str(tmp_path / "missing")]) == {4242: 17}


def test_healthy_when_a_worker_is_ready_and_network_verifies():
    v = HealthJudge(drop_window=30).observe(0.0, 2, [], {"A": 0, "B": 0})
    assert (v.status, v.body) == (200, "ok\n")


def test_unhealthy_reasons_are_named():
    v = HealthJudge(drop_window=30).observe(0.0, 0, ["rule missing: raw PREROUTING NOTRACK"], {})
    assert v.status == 503
    assert "no worker is ready" in v.body
    assert "network: rule missing: raw PREROUTING NOTRACK" in v.body


def test_one_burst_is_reported_but_stays_200():
    j = HealthJudge(drop_window=10)
    j.observe(0.0, 2, [], {"A": 0, "B": 0})
    v = j.observe(1.0, 2, [], {"A": 500, "B": 0})
    assert v.status == 200
    assert "worker A" in v.body and "500 datagrams dropped" in v.body
    assert "worker B" not in v.body
    v = j.observe(2.0, 2, [], {"A": 500, "B": 0})
    assert (v.status, v.body) == (200, "ok\n")


def test_drops_that_persist_past_the_window_turn_503():
    j = HealthJudge(drop_window=10)
    j.observe(0.0, 2, [], {"A": 0, "B": 0})
    total = 0
    for t in range(1, 11):
        total += 100
        v = j.observe(float(t), 2, [], {"A": total, "B": 0})
        assert v.status == 200, t
    total += 100
    v = j.observe(11.0, 2, [], {"A": total, "B": 0})
    assert v.status == 503
    assert "worker A: UDP receive queue overflowing, 1100 datagrams dropped in 10s" in v.body
    # drops stop: healthy again at the next sample
    assert j.observe(12.0, 2, [], {"A": total, "B": 0}).status == 200


def test_a_quiet_sample_restarts_the_window():
    j = HealthJudge(drop_window=3)
    j.observe(0.0, 2, [], {"A": 0})
    j.observe(1.0, 2, [], {"A": 10})
    j.observe(2.0, 2, [], {"A": 20})
    j.observe(3.0, 2, [], {"A": 20})         # quiet
    assert j.observe(4.0, 2, [], {"A": 30}).status == 200
    assert j.observe(5.0, 2, [], {"A": 40}).status == 200


def test_replaced_worker_is_forgotten():
    j = HealthJudge(drop_window=1)
    j.observe(0.0, 2, [], {"A gen 1": 0})
    j.observe(1.0, 2, [], {"A gen 1": 5})
    # a new generation starts with its own counter; the old name is gone
    assert j.observe(5.0, 2, [], {"A gen 2": 0}).status == 200
    assert j.observe(6.0, 2, [], {"A gen 2": 0}).status == 200
