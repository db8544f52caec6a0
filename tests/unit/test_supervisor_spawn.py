"""The worker command line the supervisor builds (docs/internals.md) and the
pieces of spawning that need no root."""
from __future__ import annotations

import os
import socket

from supervisor import spawn
from supervisor.config import Endpoint
from supervisor.sockets import SocketSet, is_bound


def test_worker_argv_follows_the_supervised_contract():
    udp = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    tcp = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(2)]
    old = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        argv = spawn.worker_argv("B", 7, 11, SocketSet(udp, tcp), SocketSet([old]), 12, 13,
                                 ["169.254.20.10:53", "[fd00::1]:53"])
        assert argv[1:4] == ["-m", "worker", "--supervised"]

        def values(flag):
            return [argv[i + 1] for i, a in enumerate(argv) if a == flag]
        assert values("--config-fd") == ["11"]
        assert values("--listen") == ["169.254.20.10:53", "[fd00::1]:53"]
        assert values("--udp-fd") == [str(s.fileno()) for s in udp]
        assert values("--tcp-fd") == [str(s.fileno()) for s in tcp]
        assert values("--adopt-udp-fd") == [str(old.fileno())]
        assert values("--control-fd") == ["12"] and values("--probe-fd") == ["13"]
        assert values("--slot") == ["B"] and values("--generation") == ["7"]
    finally:
        for s in udp + tcp + [old]:
            s.close()


def test_config_pipe_carries_the_exact_bytes_even_past_64k():
    raw = b"# " + b"x" * 100_000 + b"\nport = 53\n"
    fd = spawn._config_pipe(raw)
    with os.fdopen(fd, "rb") as f:
        assert f.read() == raw


def test_udp_sockets_join_the_group_only_when_bound():
    sockets = SocketSet.open((Endpoint("127.0.0.1", 0),))
    try:
        assert not is_bound(sockets.udp[0]), "not bound before the worker is ready"
        assert is_bound(sockets.tcp[0]), "TCP listens at once (connections wait in the backlog)"
        sockets.steer_away()                 # nothing to steer yet: no error, still unbound
        assert not is_bound(sockets.udp[0])
        fresh = SocketSet.open((Endpoint("127.0.0.1", 0),))
        fresh.bind_udp()
        udp = fresh.udp[0]
        assert is_bound(udp)
        fresh.steer_away()                   # connected to itself: out of the reuseport group
        assert udp.getpeername() == udp.getsockname() and fresh.steered
        fresh.close()
    finally:
        sockets.close()
