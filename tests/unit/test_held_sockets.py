"""The service's held sockets (supervisor/sockets.py HeldSockets) across a
reload that changes the listen addresses: each socket keeps its own
address's fd store name, the added addresses get held sockets of their own,
and dropping one closes it. Real sockets on loopback, no root needed."""
from __future__ import annotations

import socket

from contract.endpoint import Endpoint
from supervisor.sockets import HeldSockets, held_name


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bound(sock: socket.socket) -> tuple[str, int]:
    return sock.getsockname()[:2]


def test_every_held_socket_keeps_its_own_address_name_through_listen_changes():
    a, b, c = (Endpoint("127.0.0.1", free_port()) for _ in range(3))
    held = HeldSockets.open((a, b), {})
    try:
        # A reload to [c, b]: c gets sockets of its own, a's stay named for a until dropped.
        added = held.add((c, b))
        assert sorted(name for name, _ in added) == sorted([held_name("udp", c), held_name("tcp", c)])
        for name, sock in held.named():
            kind, ep = name.split("-", 1)[0], {held_name(k, e): e for e in (a, b, c) for k in ("udp", "tcp")}[name]
            assert bound(sock) == (ep.host, ep.port), name
            assert sock.type == (socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
        assert sorted(held.unlisted((c, b))) == sorted([held_name("udp", a), held_name("tcp", a)])
        assert held.add((c, b)) == []                   # nothing new the second time
        gone = dict(held.named())[held_name("udp", a)]
        held.drop(held.unlisted((c, b)))
        assert gone.fileno() == -1
        assert {name for name, _ in held.named()} == {held_name(k, e) for e in (b, c) for k in ("udp", "tcp")}
        assert len(held.udp_fds()) == len(held.tcp_fds()) == 2
    finally:
        held.close()
    assert held.named() == []


def test_inherited_sockets_are_taken_by_name_and_stale_ones_closed():
    a, b = Endpoint("127.0.0.1", free_port()), Endpoint("127.0.0.1", free_port())
    first = HeldSockets.open((a, b), {})
    inherited = dict(first.named())
    stale = inherited[held_name("udp", a)]
    again = HeldSockets.open((b,), inherited)
    try:
        assert again.inherited and inherited == {}
        assert dict(again.named()) == {held_name("udp", b): first.udp[held_name("udp", b)],
                                       held_name("tcp", b): first.tcp[held_name("tcp", b)]}
        assert stale.fileno() == -1
    finally:
        again.close()
        first.close()
