"""Issue 14 item 2: slow-drip TCP clients cannot lock out other TCP clients.
A query must arrive whole within the query timeout (bytes dripped into it do
not reset any timer), and when every slot is taken the connection that has
waited longest without anything to answer gives way to a new one."""
from __future__ import annotations

import socket
import struct
import time

import dns.message
import pytest

from helpers.worker import Worker, ns_socket

pytestmark = pytest.mark.netns

HOLDERS = 600            # more than a worker's 512 slots
DRIP_EVERY = 4.0         # one byte per connection every 4 s, as in the adversarial run
HOLD_FOR = 13.0


def fresh_tcp_query(netns, server) -> bool:
    q = dns.message.make_query("a.test", "A")
    wire = q.to_wire()
    s = ns_socket(netns, socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2.0)
    try:
        s.connect(server)
        s.sendall(struct.pack(">H", len(wire)) + wire)
        head = s.recv(2)
        if len(head) < 2:
            return False
        body = b""
        while len(body) < struct.unpack(">H", head)[0]:
            chunk = s.recv(65535)
            if not chunk:
                return False
            body += chunk
        return dns.message.from_wire(body).id == q.id
    except OSError:
        return False
    finally:
        s.close()


def test_slow_drip_connections_cannot_lock_out_fresh_queries(netns, upstream, tmp_path):
    w = Worker(netns, tmp_path)
    holders = []
    try:
        # An announced 100-byte query, then one byte every DRIP_EVERY seconds.
        for _ in range(HOLDERS):
            s = ns_socket(netns, socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(w.server)
            except BlockingIOError:
                pass
            holders.append(s)
        time.sleep(0.5)
        for s in holders:
            try:
                s.send(b"\x00")
            except OSError:
                pass
        started = time.monotonic()
        next_drip = started + DRIP_EVERY
        answered, asked = 0, 0
        while time.monotonic() - started < HOLD_FOR:
            asked += 1
            answered += fresh_tcp_query(netns, w.server)
            if time.monotonic() >= next_drip:
                next_drip += DRIP_EVERY
                for s in holders:
                    try:
                        s.send(b"\x64" if s is holders[0] else b"x")
                    except OSError:
                        pass        # closed by the worker: what we want
            time.sleep(0.5)
        assert answered == asked, f"{asked - answered} of {asked} fresh TCP queries failed during the hold"
        still_open = 0
        for s in holders:
            try:
                still_open += s.recv(1) != b""
            except BlockingIOError:
                still_open += 1
            except ConnectionResetError:
                pass
        assert still_open == 0, f"{still_open} dripping connections still open after {HOLD_FOR} s"
    finally:
        for s in holders:
            s.close()
        w.stop()
