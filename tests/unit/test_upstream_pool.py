"""Upstream UDP sockets are pooled (worker/upstream_udp.py): queries in
flight share a few random ports, a port carries at most ROTATE_AFTER
queries, and sharing weakens none of the checks an answer must pass.
Against a hand-driven server on the loopback (no root)."""
from __future__ import annotations

import asyncio
import time
from collections import Counter

import dns.message
import psutil
import uvloop

from worker.config import UpstreamZone
from worker.upstream import Forwarder
from worker import upstream_udp
from worker.upstream_udp import POOL_SLOTS, ROTATE_AFTER

from helpers.loopback_upstream import FakeServer, answer, outcome, query


def asked_name(sent: bytes) -> str:
    return dns.message.from_wire(sent).question[0].name.to_text().lower()


async def wave(server: FakeServer, forwarder: Forwarder, label: str, size: int) -> Counter:
    """`size` queries at once, each answered: how many went out from each source port."""
    ports: Counter = Counter()
    done = [outcome(forwarder, query(f"{label}-{i}.test.")) for i in range(size)]
    for _ in done:
        sent, source = await asyncio.wait_for(server.receive(), 1)
        ports[source[1]] += 1
        server.sock.sendto(answer(sent), source)
    await asyncio.wait_for(asyncio.gather(*done), 1)
    return ports


def sockets_to(server: FakeServer) -> int:
    """Our UDP sockets connected to `server`: the pool's, and nothing else the
    test process may open meanwhile (a count of all fds was, on CI)."""
    me = psutil.Process()
    connections = me.net_connections if hasattr(me, "net_connections") else me.connections
    return sum(1 for c in connections(kind="udp") if tuple(c.raddr or ()) == server.address)


def test_queries_in_flight_share_pool_slots_ports_and_a_port_rotates_after_its_share():
    server = FakeServer()

    async def scenario():
        forwarder = Forwarder([UpstreamZone(".", (server.address,), timeout=10.0)])
        # One unanswered query per slot keeps every pooled socket open.
        holders = [outcome(forwarder, query(f"hold{i}.test.")) for i in range(POOL_SLOTS)]
        held = [await asyncio.wait_for(server.receive(), 1) for _ in holders]
        shared = Counter(source[1] for _, source in held)
        # Up to each socket's share, 3 queries per slot at a time.
        full, rest = divmod(ROTATE_AFTER - 1, 3)
        for n in range(full):
            shared += await wave(server, forwarder, f"w{n}", 3 * POOL_SLOTS)
        if rest:                # whatever ROTATE_AFTER is, each socket reaches exactly its share
            shared += await wave(server, forwarder, "rest", rest * POOL_SLOTS)
        rotated = await wave(server, forwarder, "after", POOL_SLOTS)
        # The holders' sockets left the pool but stay open for their answers.
        for sent, source in held:
            server.sock.sendto(answer(sent, "192.0.2.9"), source)
        answers = [dns.message.from_wire(await asyncio.wait_for(h, 1)) for h in holders]
        return shared, rotated, answers, forwarder.stats()[0]
    try:
        shared, rotated, answers, stats = uvloop.run(scenario())
    finally:
        server.close()
    assert sorted(shared.values()) == [ROTATE_AFTER] * POOL_SLOTS
    assert len(rotated) == POOL_SLOTS and not set(rotated) & set(shared)
    assert all(a.answer[0][0].address == "192.0.2.9" for a in answers)
    assert stats["rejected"] == 0


def test_an_emptied_socket_waits_idle_close_for_the_next_query_then_closes(monkeypatch):
    # Long enough that no socket closes between two lone queries on a loaded
    # CI machine, short enough to wait out.
    idle = 0.5
    monkeypatch.setattr(upstream_udp, "IDLE_CLOSE", idle)
    server = FakeServer()

    async def scenario():
        forwarder = Forwarder([UpstreamZone(".", (server.address,), timeout=2.0)])
        first = await wave(server, forwarder, "a", POOL_SLOTS)      # every pool slot opened, then emptied
        alone = Counter()
        for i in range(POOL_SLOTS):     # one at a time: each on an emptied socket of the pool
            alone.update(await wave(server, forwarder, f"alone{i}", 1))
        kept = sockets_to(server)
        closed_by = time.monotonic() + 4 * idle
        while sockets_to(server) and time.monotonic() < closed_by:
            await asyncio.sleep(0.05)
        left = sockets_to(server)
        after = await wave(server, forwarder, "after", 1)
        await forwarder.close()
        return first, alone, kept, left, after
    try:
        first, alone, kept, left, after = uvloop.run(scenario())
    finally:
        server.close()
    assert len(first) == POOL_SLOTS
    assert set(alone) == set(first) and kept == POOL_SLOTS
    assert left == 0 and not set(after) & set(first)


def test_a_late_answer_on_a_shared_socket_is_dropped_uncounted_and_a_forgery_counted():
    server = FakeServer()

    async def scenario():
        forwarder = Forwarder([UpstreamZone(".", (server.address,), timeout=2.0)])
        # POOL_SLOTS + 1 queries in flight: the first and the last share a socket.
        done = [outcome(forwarder, query(f"n{i}.test.")) for i in range(POOL_SLOTS + 1)]
        sent = [await asyncio.wait_for(server.receive(), 1) for _ in done]
        (first, port), (last, port_last) = sent[0], sent[-1]
        assert port == port_last
        server.sock.sendto(answer(first, "192.0.2.1"), port)
        await asyncio.wait_for(done[0], 1)
        server.sock.sendto(answer(first, "192.0.2.66"), port)                    # late duplicate
        other_id = int.from_bytes(last[:2], "big") ^ 0x5A5A
        server.sock.sendto(answer(last, "192.0.2.66", query_id=other_id), port)  # ID no query had
        await asyncio.sleep(0.05)
        assert not done[-1].done()
        server.sock.sendto(answer(last, "192.0.2.8"), port)
        reply = dns.message.from_wire(await asyncio.wait_for(done[-1], 1))
        for s, source in sent[1:-1]:
            server.sock.sendto(answer(s), source)
        await asyncio.wait_for(asyncio.gather(*done[1:-1]), 1)
        return reply, forwarder.stats()[0]
    try:
        reply, stats = uvloop.run(scenario())
    finally:
        server.close()
    assert reply.answer[0][0].address == "192.0.2.8"
    assert stats["rejected"] == 1


def test_a_port_unreachable_fails_over_every_query_on_that_socket_at_once():
    down, up = FakeServer(), FakeServer()

    async def scenario():
        forwarder = Forwarder([UpstreamZone(".", (down.address, up.address), timeout=5.0)])
        # 2 * POOL_SLOTS queries: slot 0's socket carries n0 and n8.
        done = [outcome(forwarder, query(f"n{i}.test.")) for i in range(2 * POOL_SLOTS)]
        for _ in done:
            await asyncio.wait_for(down.receive(), 1)
        down.close()
        t0 = time.monotonic()
        # The next query goes on slot 0 again; the ICMP error it draws fails all three there.
        done.append(outcome(forwarder, query(f"n{2 * POOL_SLOTS}.test.")))
        moved = []
        for _ in range(3):
            sent, source = await asyncio.wait_for(up.receive(), 1)
            moved.append(asked_name(sent))
            up.sock.sendto(answer(sent), source)
        return sorted(moved), time.monotonic() - t0, up.received()
    try:
        moved, elapsed, more = uvloop.run(scenario())
    finally:
        up.close()
    assert moved == sorted(f"n{i}.test." for i in (0, POOL_SLOTS, 2 * POOL_SLOTS))
    assert elapsed < 0.25 and more == 0           # before any retry: only those three moved
