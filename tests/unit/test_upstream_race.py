"""The Forwarder's callback machinery against in-process UDP sockets on the
loopback (no root, no namespace): answers matched, forgeries counted,
failover, the timeout, the socket budget, and nothing left for the cyclic
garbage collector. The full behaviour against real servers is in
tests/integration/test_worker_upstream.py."""
from __future__ import annotations

import asyncio
import gc
import time

import dns.message
import uvloop

from worker.config import UpstreamZone
from worker.upstream import Forwarder

from helpers.loopback_upstream import FakeServer, answer, closed_port, outcome, query


def test_done_is_never_called_before_ask_returns():
    async def scenario():
        forwarder = Forwarder([UpstreamZone("cluster.local.", (("127.0.0.1", 9),))])
        calls = []
        forwarder.ask(query("example.com."), calls.append)      # no zone: known at once
        before = list(calls)
        await asyncio.sleep(0)
        return before, calls
    assert uvloop.run(scenario()) == ([], [None])


def test_forged_answers_are_counted_and_the_real_one_taken():
    server = FakeServer()

    async def scenario():
        forwarder = Forwarder([UpstreamZone(".", (server.address,), timeout=2.0)])
        done = outcome(forwarder, query("Real.Test."))
        sent, source = await server.receive()
        query_id = int.from_bytes(sent[:2], "big")
        server.sock.sendto(answer(sent, query_id=query_id ^ 1), source)             # wrong ID
        server.sock.sendto(answer(sent, name="other.test."), source)                # wrong question
        server.sock.sendto(sent, source)                                            # QR=0
        await asyncio.sleep(0.05)
        assert not done.done()
        server.sock.sendto(answer(sent, "192.0.2.77"), source)
        data = await asyncio.wait_for(done, 1)
        return dns.message.from_wire(data), forwarder.stats()[0]
    try:
        reply, stats = uvloop.run(scenario())
    finally:
        server.close()
    assert reply.answer[0][0].address == "192.0.2.77"
    assert (stats["queries"], stats["errors"], stats["rejected"]) == (1, 0, 3)
    assert sum(stats["latency_counts"]) == 1 and stats["latency_sum"] >= 0.05


def test_refused_server_hands_over_at_once_and_counts_one_error():
    server = FakeServer()
    down = closed_port()

    async def scenario():
        forwarder = Forwarder([UpstreamZone(".", (down, server.address), timeout=2.0)])
        t0 = time.monotonic()
        done = outcome(forwarder, query("a.test."))
        sent, source = await asyncio.wait_for(server.receive(), 1)
        elapsed = time.monotonic() - t0
        server.sock.sendto(answer(sent), source)
        await asyncio.wait_for(done, 1)
        return elapsed, forwarder.stats()
    try:
        elapsed, (down_stats, up_stats) = uvloop.run(scenario())
    finally:
        server.close()
    assert elapsed < 0.5
    assert (down_stats["queries"], down_stats["errors"]) == (1, 1)
    assert (up_stats["queries"], up_stats["errors"]) == (1, 0)


def test_silent_server_is_asked_again_then_fails_at_the_timeout():
    server = FakeServer()

    async def scenario():
        forwarder = Forwarder([UpstreamZone(".", (server.address,), timeout=0.6)])
        t0 = time.monotonic()
        result = await outcome(forwarder, query("quiet.test."))
        return result, time.monotonic() - t0, forwarder.stats()[0]
    try:
        result, elapsed, stats = uvloop.run(scenario())
        asked = server.received()
    finally:
        server.close()
    assert result is None
    assert 0.55 < elapsed < 1.0
    # Asked at 0 and after 0.3 s; a third ask would leave less than 0.25 s.
    assert asked == 2 and stats["queries"] == 2
    assert stats["errors"] == 1          # once per miss, however often it was asked


def test_misses_beyond_the_socket_budget_wait_for_a_socket():
    server = FakeServer()

    async def scenario():
        forwarder = Forwarder([UpstreamZone(".", (server.address,), timeout=2.0)])
        forwarder._udp_budget = 1
        results = [outcome(forwarder, query(f"n{i}.test.")) for i in range(3)]
        for _ in range(3):
            sent, source = await asyncio.wait_for(server.receive(), 1)
            await asyncio.sleep(0.02)
            assert server.received() == 0, "a second socket was open"
            server.sock.sendto(answer(sent), source)
        return [dns.message.from_wire(await asyncio.wait_for(r, 1)).question[0].name.to_text().lower()
                for r in results]       # asked (and echoed) in 0x20 random case
    try:
        names = uvloop.run(scenario())
    finally:
        server.close()
    assert names == ["n0.test.", "n1.test.", "n2.test."]


def test_a_miss_leaves_nothing_for_the_cyclic_collector():
    """Each miss is freed by reference counting: cycles would make the
    collector run (and walk the whole cache) far more often."""
    server = FakeServer()

    async def scenario():
        forwarder = Forwarder([UpstreamZone(".", (server.address, closed_port()), timeout=2.0)])
        for i in range(5):
            done = outcome(forwarder, query(f"n{i}.test."))
            sent, source = await server.receive()
            server.sock.sendto(answer(sent), source)
            await done
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        loop = uvloop.new_event_loop()
        loop.run_until_complete(scenario())
        gc.collect()
        left = {type(o).__name__ for o in gc.garbage} & {"_Race", "_Attempt", "UdpExchange", "PooledSocket", "UpstreamQuery"}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        loop.close()
        server.close()
    assert left == set()
