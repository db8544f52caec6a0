"""TCP serving: length-prefixed, several queries per connection, pipelined
and answered as they complete, idle timeout, connection cap, oversized
lengths."""
from __future__ import annotations

import socket
import struct
import time

import dns.message
import dns.rcode
import pytest

from helpers.worker import Worker, ns_socket

pytestmark = pytest.mark.netns

# slow.test goes to an address where a socket is bound but never answers.
CONFIG = """
[[upstream]]
zone = "."
servers = ["127.0.0.2"]

[[upstream]]
zone = "slow.test"
servers = ["127.0.0.9"]
timeout = 1.0
"""


@pytest.fixture
def worker(netns, upstream, tmp_path):
    silent = ns_socket(netns)
    silent.bind(("127.0.0.9", 53))
    w = Worker(netns, tmp_path, upstream=None, config=CONFIG,
               extra=["--tcp-idle-timeout", "0.5", "--tcp-max-connections", "3"])
    try:
        yield w
    finally:
        w.stop()
        silent.close()


def connect(netns, w: Worker) -> socket.socket:
    s = ns_socket(netns, socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(w.server)
    return s


def frame(q: dns.message.Message) -> bytes:
    wire = q.to_wire()
    return struct.pack(">H", len(wire)) + wire


def read_reply(s: socket.socket) -> dns.message.Message:
    length = struct.unpack(">H", read_exactly(s, 2))[0]
    return dns.message.from_wire(read_exactly(s, length))


def read_exactly(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def closed_by_peer(s: socket.socket, within: float) -> bool:
    s.settimeout(within)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_pipelined_queries_answered_as_they_complete(worker, netns):
    worker.ask("a.test", tcp=True)                      # cached now
    with connect(netns, worker) as s:
        slow = dns.message.make_query("x.slow.test", "A")
        hits = [dns.message.make_query("a.test", "A") for _ in range(3)]
        miss = dns.message.make_query("y.hit.test", "A")
        s.sendall(b"".join(frame(q) for q in [slow, *hits, miss]))
        replies = [read_reply(s) for _ in range(5)]
    order = [r.id for r in replies]
    assert set(order[:4]) == {q.id for q in hits + [miss]}, "fast answers do not wait for the slow one"
    assert order[4] == slow.id and replies[4].rcode() == dns.rcode.SERVFAIL, \
        "a silent upstream gives SERVFAIL within its timeout"
    assert all(r.answer for r in replies[:4])


def test_many_queries_on_one_connection(worker, netns):
    with connect(netns, worker) as s:
        for i in range(20):
            q = dns.message.make_query(f"m{i % 4}.hit.test", "A")
            s.sendall(frame(q))
            reply = read_reply(s)
            assert reply.id == q.id and reply.answer[0][0].address == "192.0.2.1"


def test_idle_connections_are_closed(worker, netns):
    with connect(netns, worker) as s:
        s.sendall(frame(dns.message.make_query("a.test", "A")))
        read_reply(s)
        t0 = time.monotonic()
        assert closed_by_peer(s, within=3.0)
        assert time.monotonic() - t0 < 2.0


def test_connection_cap(worker, netns):
    held = [connect(netns, worker) for _ in range(3)]
    try:
        for s in held:      # make sure all three are accepted and served
            s.sendall(frame(dns.message.make_query("a.test", "A")))
            read_reply(s)
        # The fourth takes the slot of the one idle longest, which is closed.
        extra = connect(netns, worker)
        q = dns.message.make_query("a.test", "A")
        extra.sendall(frame(q))
        assert read_reply(extra).id == q.id
        assert closed_by_peer(held[0], within=0.4), "the oldest idle connection gave way"
        assert not closed_by_peer(held[2], within=0.1)
        extra.close()
    finally:
        for s in held:
            s.close()
    time.sleep(0.2)
    assert worker.ask("a.test", tcp=True).answer, "a slot frees when a connection closes"


def test_oversized_length_gets_formerr_and_close(worker, netns):
    with connect(netns, worker) as s:
        q = dns.message.make_query("a.test", "A")
        s.sendall(struct.pack(">H", 65000) + q.to_wire())
        reply = read_reply(s)
        assert reply.id == q.id and reply.rcode() == dns.rcode.FORMERR
        assert closed_by_peer(s, within=2.0)
    assert worker.ask("a.test", tcp=True).answer
