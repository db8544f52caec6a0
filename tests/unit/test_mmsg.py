"""Batched datagram I/O (worker/mmsg.py) and the UDP servers built on it, on
real loopback sockets. No root."""
from __future__ import annotations

import asyncio
import socket
import time

import dns.message
import dns.rrset
import pytest

from worker import mmsg, wire
from worker.answer import Answerer
from worker.cache import Cache
from worker.response import entry_from_response
from worker.config import CacheConfig
from worker.server import BatchedUdpServer, UdpServer, udp_server
from worker.stats import Stats


@pytest.fixture(params=[(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")], ids=["v4", "v6"])
def pair(request):
    """A bound server socket and three clients of the same family."""
    family, host = request.param
    server = socket.socket(family, socket.SOCK_DGRAM)
    server.bind((host, 0))
    server.setblocking(False)
    clients = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(3)]
    for c in clients:
        c.bind((host, 0))
        c.settimeout(2)
    yield server, clients
    for s in (server, *clients):
        s.close()


@pytest.fixture(params=["accelerator", "ctypes"])
def batch_calls(request, monkeypatch):
    """recvmmsg/sendmmsg from the C accelerator, or through ctypes (what runs without it)."""
    if request.param == "ctypes":
        monkeypatch.setattr(mmsg, "ACCEL", None)
    else:
        assert mmsg.ACCEL is not None, "the C accelerator is not built: pip install -e . with a C compiler"
    return mmsg._libc_calls()


def test_the_batch_calls_return_counts_and_negative_errnos(batch_calls, pair):
    import errno
    recv, send = batch_calls
    server, clients = pair
    batch = mmsg.DatagramBatch(server, 8, 512)
    assert recv(server.fileno(), batch.in_hdrs_at, 8) == -errno.EAGAIN
    closed = socket.socket(server.family, socket.SOCK_DGRAM)
    fd = closed.fileno()
    closed.close()
    assert recv(fd, batch.in_hdrs_at, 8) == -errno.EBADF
    assert send(fd, batch.out_hdrs_at, 1) == -errno.EBADF


def test_a_batch_reads_every_queued_datagram_with_its_source(batch_calls, pair):
    server, clients = pair
    batch = mmsg.DatagramBatch(server, 8, 512)
    assert batch.receive() == 0, "nothing queued: 0, not an error"
    for n, c in enumerate(clients):
        c.sendto(bytes([0xAB, n]) + b"query-%d" % n, server.getsockname())
    assert batch.receive() == 3
    assert [batch.message(i) for i in range(3)] == [bytes([0xAB, n]) + b"query-%d" % n for n in range(3)]
    assert batch.keys(3) == [b"query-%d" % n for n in range(3)]
    assert [batch.peer(i) for i in range(3)] == [c.getsockname() for c in clients]


def test_replies_go_to_their_own_source_with_the_query_id(batch_calls, pair):
    server, clients = pair
    batch = mmsg.DatagramBatch(server, 8, 512)
    for n, c in enumerate(clients):
        c.sendto(bytes([0x10, n]) + b"q", server.getsockname())
    assert batch.receive() == 3
    batch.queue(0, b"\xff\xff" + b"reply-0")
    batch.skip(1)           # message 1 gets no reply now (a miss, or dropped)
    batch.queue(2, b"\x77\x77" + b"reply-2")
    batch.flush(3)
    assert clients[0].recv(512) == b"\x10\x00" + b"reply-0", "the query's ID, then the reply's rest"
    assert clients[2].recv(512) == b"\x10\x02" + b"reply-2"
    clients[1].settimeout(0.2)
    with pytest.raises(socket.timeout):
        clients[1].recv(512)


def test_a_message_left_without_reply_or_skip_is_never_sent(pair):
    """Its slot would still point at an earlier batch's reply."""
    server, clients = pair
    batch = mmsg.DatagramBatch(server, 8, 512)
    for c in clients[:2]:
        c.sendto(b"\x00\x00q", server.getsockname())
    assert batch.receive() == 2
    batch.queue(1, b"\x00\x00reply")
    with pytest.raises(RuntimeError, match="not one per message"):
        batch.flush(2)


def test_a_datagram_longer_than_the_buffer_arrives_cut(pair):
    server, clients = pair
    batch = mmsg.DatagramBatch(server, 4, 64)
    clients[0].sendto(b"x" * 100, server.getsockname())
    clients[1].sendto(b"y" * 10, server.getsockname())
    assert batch.receive() == 2
    assert batch.message(0) == b"x" * 64 and batch.message(1) == b"y" * 10


def _cached_answerer() -> tuple[Answerer, bytes]:
    query = dns.message.make_query("h1.hit.test", "A", use_edns=False).to_wire()
    q = wire.parse_query(query)
    upstream = dns.message.make_response(dns.message.make_query("h1.hit.test", "A", use_edns=0))
    upstream.answer.append(dns.rrset.from_text("h1.hit.test.", 3600, "IN", "A", "192.0.2.1"))
    cache = Cache(100)
    cache.put(q.key, entry_from_response(upstream.to_wire(), time.monotonic(), CacheConfig(), None, False))
    return Answerer(cache, None, Stats()), query


@pytest.mark.parametrize("server_class", [BatchedUdpServer, UdpServer])
def test_both_udp_servers_answer_hits_repeatedly(server_class):
    """BatchedUdpServer is what runs here; UdpServer is the fallback where
    mmsg.probe() fails. Both answer from the cache and the exact-query index."""
    answerer, query = _cached_answerer()

    async def scenario() -> list[dns.message.Message]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        server = server_class(sock, answerer)
        server.start()
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.setblocking(False)
        loop = asyncio.get_running_loop()
        replies = []
        try:
            for n in range(3):
                client.sendto(bytes([0, n]) + query[2:], sock.getsockname())
                replies.append(dns.message.from_wire(await asyncio.wait_for(loop.sock_recv(client, 512), 2)))
        finally:
            server.close()
            client.close()
        return replies

    replies = asyncio.run(scenario())
    assert [r.id for r in replies] == [0, 1, 2]
    assert all(r.answer[0][0].address == "192.0.2.1" for r in replies)
    assert answerer.exact, "the repeats were served from the exact-query index"


def test_this_platform_gets_the_batched_server():
    async def pick() -> type:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            return type(udp_server(sock, _cached_answerer()[0]))
    assert asyncio.run(pick()) is BatchedUdpServer


def test_late_replies_reach_each_client_in_runs_longer_than_the_vector(batch_calls, pair):
    """Miss answers sent after their batch: to each query's own source, also
    when more are queued than one sendmmsg vector holds."""
    server, clients = pair
    for i, c in enumerate(clients):
        c.sendto(b"\x00" + bytes([i]) + b"query", server.getsockname())
    time.sleep(0.05)
    batch = mmsg.DatagramBatch(server, 8, 512)
    n = batch.receive()
    assert n == 3
    late = mmsg.LateReplies(server, 2)
    sources = {batch.peer(i): batch.name(i) for i in range(n)}
    firsts = [late.add(b"reply-to-" + batch.message(i)[1:2], batch.name(i)) for i in range(n)]
    assert firsts == [True, False, False]
    late.flush()
    assert late.queued == []
    for i, c in enumerate(clients):
        data, src = c.recvfrom(512)
        assert data == b"reply-to-" + bytes([i]) and src[:2] == server.getsockname()[:2]
    assert len(sources) == 3
