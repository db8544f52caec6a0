"""Health: the kernel's drop counters for a real socket, and the verdict logic."""
from __future__ import annotations

import os
import socket
import time

import pytest

from supervisor.health import HealthJudge, socket_drops


def proc_drops(sock: socket.socket) -> int:
    """The `drops` column of the socket's line in /proc/net/udp{,6}: what SRE tools show."""
    inode = str(os.fstat(sock.fileno()).st_ino)
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        with open(path) as f:
            for line in f:
                cols = line.split()
                if len(cols) >= 13 and cols[9] == inode:
                    return int(cols[12])
    raise AssertionError("socket not in /proc/net/udp")


def test_socket_drops_counts_a_real_receive_queue_overflow_as_proc_net_udp_does():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)   # the kernel's minimum
    rx.bind(("127.0.0.1", 0))
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    twin = socket.socket(fileno=os.dup(rx.fileno()))         # the supervisor's duplicate of a worker socket
    try:
        assert socket_drops(rx) == socket_drops(other) == 0
        for _ in range(200):                                  # never read: the queue overflows
            tx.sendto(b"x" * 512, rx.getsockname())
        deadline = time.monotonic() + 2
        while socket_drops(rx) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert socket_drops(rx) > 100
        assert socket_drops(rx) == socket_drops(twin) == proc_drops(rx)
        assert socket_drops(other) == 0
    finally:
        for s in (rx, other, tx, twin):
            s.close()
    assert socket_drops(rx) is None                           # a closed socket counts nothing


def test_udp6_sockets_are_counted_too():
    rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        rx.bind(("::1", 0))
    except OSError:
        rx.close()
        pytest.skip("no IPv6 loopback here")
    try:
        assert socket_drops(rx) == proc_drops(rx) == 0
    finally:
        rx.close()


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
