"""Steering a listening UDP socket out of its reuseport group
(contract.endpoint.steer_away), in a namespace the test makes: it takes
no new datagrams and keeps the queued ones, and a socket whose address a
reload has already taken off the interface is left as it is instead of
failing the rolling replacement ("Network is unreachable", seen when a
reload removed a listen address: the reload was rolled back)."""
from __future__ import annotations

import socket

import pytest

from contract.endpoint import steer_away
from helpers.worker import ns_socket

pytestmark = pytest.mark.netns


def listener(netns, addr: str) -> socket.socket:
    s = ns_socket(netns)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((addr, 53))
    s.settimeout(1)
    return s


@pytest.fixture
def queued(netns):
    """A listener on 10.9.9.9:53 with one datagram queued, and its client."""
    netns.add_bridge_address("tw0", "10.9.9.9/32")
    old = listener(netns, "10.9.9.9")
    client = ns_socket(netns)
    client.sendto(b"queued", ("10.9.9.9", 53))
    yield old, client
    old.close()
    client.close()


def test_a_steered_socket_keeps_its_queue_and_takes_nothing_new(netns, queued):
    old, client = queued
    steer_away(old)
    new = listener(netns, "10.9.9.9")
    try:
        client.sendto(b"after", ("10.9.9.9", 53))
        assert old.recv(100) == b"queued"
        assert new.recv(100) == b"after"
    finally:
        new.close()


def test_a_socket_whose_address_left_the_host_is_left_alone(netns, queued):
    old, _ = queued
    netns.run(["ip", "addr", "del", "10.9.9.9/32", "dev", "tw0"])
    with pytest.raises(OSError):            # what the rolling replacement met
        old.connect(old.getsockname())
    steer_away(old)
    assert old.recv(100) == b"queued"      # what was queued is still answered
