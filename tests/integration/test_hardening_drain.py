"""Issue 14 item 7: TCP through a drain. A draining worker answers every
query it has read and every one that arrives before it is done, tells a
client that sent edns-tcp-keepalive to close (timeout 0, RFC 7828), shuts
its side at a message boundary (FIN) and never resets the connection."""
from __future__ import annotations

import socket
import struct
import time

import dns.edns
import dns.message
import dns.rcode
import pytest

from helpers.tcpclients import frame, read_reply
from helpers.worker import SupervisedWorker, listen_sockets, ns_socket

pytestmark = pytest.mark.netns

CONFIG = """
[[upstream]]
zone = "."
servers = ["127.0.0.2"]

[[upstream]]
zone = "slow.test"
servers = ["127.0.0.9"]
timeout = 1.0
"""
SERVER = ("127.0.0.1", 53)
KEEPALIVE = 11


def keepalive_timeout(reply: dns.message.Message) -> int | None:
    for opt in reply.options:
        if opt.otype == KEEPALIVE:
            return struct.unpack(">H", opt.to_wire())[0] if opt.to_wire() else -1
    return None


def test_drain_answers_what_arrives_signals_keepalive_and_closes_with_fin(netns, upstream, tmp_path):
    silent = ns_socket(netns)
    silent.bind(("127.0.0.9", 53))          # the slow zone's upstream never answers
    udp, tcp = listen_sockets(netns)
    w = SupervisedWorker(netns, tmp_path, CONFIG, [udp], [tcp])
    conn = ns_socket(netns, socket.AF_INET, socket.SOCK_STREAM)
    try:
        w.wait_ready()
        conn.settimeout(5)
        conn.connect(SERVER)
        first = dns.message.make_query("a.test", "A", use_edns=0,
                                       options=[dns.edns.GenericOption(KEEPALIVE, b"")])
        conn.sendall(frame(first))
        assert read_reply(conn).id == first.id
        slow = dns.message.make_query("x.slow.test", "A", use_edns=0)
        conn.sendall(frame(slow))                           # keeps the connection busy for 1 s
        time.sleep(0.1)
        assert w.request("drain", timeout=3.0)["ok"]
        time.sleep(0.2)
        late = dns.message.make_query("a.test", "A", use_edns=0)
        conn.sendall(frame(late))                           # arrives while the worker drains
        replies = {r.id: r for r in (read_reply(conn), read_reply(conn))}
        assert set(replies) == {slow.id, late.id}, "every query that reached the worker is answered"
        assert replies[late.id].answer and replies[slow.id].rcode() == dns.rcode.SERVFAIL
        assert all(keepalive_timeout(r) == 0 for r in replies.values()), "keepalive timeout 0 signals the close"
        try:
            assert conn.recv(1) == b"", "closed by FIN"
        except ConnectionResetError:
            pytest.fail("the draining worker reset the connection")
        assert w.wait() == 0
    finally:
        conn.close()
        w.close()
        udp.close()
        tcp.close()
        silent.close()
