"""sd_notify over a real unix datagram socket standing in for systemd's."""
from __future__ import annotations

import os
import socket
import time

import pytest

from helpers.sdnotify import fill_queue

from supervisor.sdnotify import Notifier, NotifySocketError, socket_address


@pytest.fixture
def systemd_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


def received(sock) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def test_ready_status_watchdog_stopping_reach_the_socket(systemd_socket):
    path, sock = systemd_socket
    n = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert n.enabled
    n.status("starting workers")
    assert received(sock) == {"STATUS": "starting workers"}
    n.ready("2 workers ready")
    assert received(sock) == {"READY": "1", "STATUS": "2 workers ready"}
    n.watchdog()
    assert received(sock) == {"WATCHDOG": "1"}
    n.stopping()
    assert received(sock) == {"STOPPING": "1"}


def test_reloading_carries_monotonic_usec(systemd_socket):
    path, sock = systemd_socket
    n = Notifier.from_environ({"NOTIFY_SOCKET": path})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.reloading("rolling restart")
    msg = received(sock)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert msg["RELOADING"] == "1"
    assert before <= int(msg["MONOTONIC_USEC"]) <= after
    assert msg["STATUS"] == "rolling restart"


def test_abstract_namespace_socket():
    name = f"twindns-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    try:
        Notifier.from_environ({"NOTIFY_SOCKET": "@" + name}).ready()
        assert received(sock) == {"READY": "1"}
    finally:
        sock.close()


def test_no_socket_is_a_silent_noop():
    n = Notifier.from_environ({})
    assert not n.enabled
    assert n.ready() is False
    assert n.watchdog_interval() is None


def test_multiline_status_stays_one_field(systemd_socket):
    path, sock = systemd_socket
    Notifier.from_environ({"NOTIFY_SOCKET": path}).status("a\nREADY=1")
    assert received(sock) == {"STATUS": "a READY=1"}


def test_vanished_socket_does_not_raise(tmp_path):
    n = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert n.ready() is False


def test_watchdog_interval_from_environment():
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}
    assert Notifier.from_environ(env).watchdog_interval() == 30.0
    assert Notifier.from_environ({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval() == 30.0
    # the watchdog is meant for another process (we are a child of the main one)
    assert Notifier.from_environ({**env, "WATCHDOG_PID": "1"}).watchdog_interval() is None
    assert Notifier.from_environ({**env, "WATCHDOG_USEC": "0"}).watchdog_interval() is None
    assert Notifier.from_environ({**env, "WATCHDOG_USEC": "soon"}).watchdog_interval() is None


def test_relative_notify_socket_is_refused():
    assert socket_address("@x") == b"\0x"
    with pytest.raises(NotifySocketError, match="NOTIFY_SOCKET"):
        Notifier.from_environ({"NOTIFY_SOCKET": "relative/path"})


def drain(sock) -> list[dict[str, str]]:
    sock.settimeout(0.2)
    got = []
    try:
        while True:
            got.append(received(sock))
    except socket.timeout:
        return got


@pytest.mark.timeout(30)
def test_a_full_queue_never_blocks_and_state_changes_arrive_in_order(systemd_socket):
    path, sock = systemd_socket
    assert fill_queue(path) >= 1
    n = Notifier.from_environ({"NOTIFY_SOCKET": path})
    t0 = time.monotonic()
    n.reloading("rolling restart")
    for i in range(50):
        n.status(f"progress {i}")          # lost: only a STATUS line
    n.watchdog()
    n.watchdog()                            # one held ping is enough
    n.ready("2/2 workers ready")
    assert time.monotonic() - t0 < 0.5      # a blocking send would hang here for good
    assert n.dropped == 50
    n.flush()                               # still full: nothing moves, nothing blocks
    got = [m for m in drain(sock) if m.get("STATUS") != "filler"]
    assert got == []
    n.flush()
    got = [m for m in drain(sock) if m.get("STATUS") != "filler"]
    assert [next(iter(m)) for m in got] == ["RELOADING", "WATCHDOG", "READY"], got
    assert got[-1] == {"READY": "1", "STATUS": "2/2 workers ready"}
    n.status("after")                      # delivered straight away again
    assert received(sock) == {"STATUS": "after"}
