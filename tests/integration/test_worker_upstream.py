"""The worker's upstream side, against a running `python -m worker` in a
namespace: per-zone upstreams, failover, force_tcp with one reused
connection, TC=1 retried over TCP, forged answers rejected, SERVFAIL within
the zone's timeout when the upstream is silent.

Real unbound instances serve the data; a scripted server
(helpers/scripted_upstream.py) plays the upstreams that misbehave.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import dns.rcode
import pytest

from helpers.scripted_upstream import FORGED, REAL, Scripted
from helpers.unbound import Unbound
from helpers.worker import Worker
from worker.upstream_udp import POOL_SLOTS

pytestmark = pytest.mark.netns

# Addresses inside the test namespace; nothing listens on DOWN.
DOWN = "127.0.0.9:53"


def addresses(reply) -> list[str]:
    return sorted(rd.address for rrset in reply.answer for rd in rrset if hasattr(rd, "address"))


def upstream_toml(*zones: dict) -> str:
    out = []
    for z in zones:
        out.append("[[upstream]]")
        for key, value in z.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, str):
                value = f'"{value}"'
            elif isinstance(value, list):
                value = "[" + ", ".join(f'"{v}"' for v in value) + "]"
            out.append(f"{key} = {value}")
    return "\n".join(out) + "\n"


@pytest.fixture
def started(netns, tmp_path):
    """Starts things in the namespace; stops them all at the end."""
    things = []

    def start(kind, *args, **kw):
        thing = kind(*args, **kw)
        things.append(thing)
        return thing
    yield start
    for thing in reversed(things):
        thing.stop()


def worker_with(netns, tmp_path, started, *zones: dict) -> Worker:
    return started(Worker, netns, tmp_path / "worker", upstream=None, config=upstream_toml(*zones))


def test_longest_zone_match_picks_the_upstream(netns, tmp_path, started):
    # Two unbounds that give different addresses for the same names.
    started(Unbound, tmp_path / "u2", addr="127.0.0.2", netns=netns, extra=[
        'local-data: "www.stub.test. 60 IN A 192.0.2.101"',
        'local-data: "www.deeper.stub.test. 60 IN A 192.0.2.102"'])
    started(Unbound, tmp_path / "u3", addr="127.0.0.3", netns=netns, extra=[
        'local-data: "www.stub.test. 60 IN A 198.51.100.1"',
        'local-data: "www.deeper.stub.test. 60 IN A 198.51.100.2"'])
    w = worker_with(netns, tmp_path, started,
                    {"zone": ".", "servers": ["127.0.0.2"]},
                    {"zone": "Stub.Test", "servers": ["127.0.0.3"]},
                    {"zone": "deeper.stub.test.", "servers": ["127.0.0.2:53"]})
    assert addresses(w.ask("www.stub.test")) == ["198.51.100.1"]
    assert addresses(w.ask("WWW.STUB.test")) == ["198.51.100.1"]
    assert addresses(w.ask("www.deeper.stub.test")) == ["192.0.2.102"]
    assert addresses(w.ask("a.test")) == ["192.0.2.10"]


@pytest.mark.parametrize("force_tcp", [False, True], ids=["udp", "tcp"])
def test_failover_when_the_first_server_is_down(netns, tmp_path, started, upstream, force_tcp):
    w = worker_with(netns, tmp_path, started,
                    {"servers": [DOWN, upstream.server], "timeout": 2, "force_tcp": force_tcp})
    t0 = time.monotonic()
    reply = w.ask("a.test")
    # A closed port answers with ICMP (UDP) or RST (TCP): the worker moves on
    # at once, not after a timeout.
    assert time.monotonic() - t0 < 0.5
    assert reply.rcode() == dns.rcode.NOERROR and addresses(reply) == ["192.0.2.10"]


def test_failover_from_a_silent_server_within_the_timeout_then_tried_last(
        netns, tmp_path, started, upstream):
    silent = started(Scripted, netns, tmp_path, "silent", addr="127.0.0.3")
    w = worker_with(netns, tmp_path, started,
                    {"servers": [silent.server, upstream.server], "timeout": 2})
    t0 = time.monotonic()
    reply = w.ask("n1.hit.test")
    elapsed = time.monotonic() - t0
    assert reply.rcode() == dns.rcode.NOERROR and addresses(reply) == ["192.0.2.1"]
    assert 0.5 < elapsed < 2.0, elapsed          # waited for the silent one, but not the whole timeout
    # The silent server failed recently: the next misses go to the good one first.
    for i in range(2, 6):
        t0 = time.monotonic()
        assert addresses(w.ask(f"n{i}.hit.test")) == ["192.0.2.1"]
        assert time.monotonic() - t0 < 0.5
    assert silent.counts()["udp_queries"] == 1


def test_silent_upstream_gives_servfail_within_timeout(netns, tmp_path, started):
    silent = started(Scripted, netns, tmp_path, "silent", addr="127.0.0.3")
    w = worker_with(netns, tmp_path, started, {"servers": [silent.server], "timeout": 0.6})
    t0 = time.monotonic()
    reply = w.ask("quiet.test")
    elapsed = time.monotonic() - t0
    assert reply.rcode() == dns.rcode.SERVFAIL
    # At the timeout, not before; the upper bound leaves room for a busy CI machine.
    assert 0.55 < elapsed < 2.0, elapsed
    assert silent.counts()["udp_queries"] >= 1


def test_a_lost_upstream_datagram_is_asked_again_not_servfail(netns, tmp_path, started):
    """One upstream, and the first datagram of every question lost: the worker
    asks again before the timeout (a client's own retry would only join the
    miss in flight): at half the timeout while the server's round trip is
    unknown, then after its RTO (50 ms for a server this close), as unbound does."""
    lossy = started(Scripted, netns, tmp_path, "lossy", addr="127.0.0.3")
    w = worker_with(netns, tmp_path, started, {"servers": [lossy.server], "timeout": 2})
    took = []
    for name in ("lost-once.test", "lost-too.test"):
        t0 = time.monotonic()
        reply = w.ask(name)
        assert reply.rcode() == dns.rcode.NOERROR and addresses(reply) == [REAL]
        took.append(time.monotonic() - t0)
    assert 0.9 < took[0] < 1.9, took              # nothing known of the server yet: half of 2 s
    assert 0.04 < took[1] < 0.4, took             # one answer in ~1 ms known: RTO_MIN, 50 ms
    counts = lossy.counts()
    assert counts["udp_queries"] == 4, counts
    assert len(set(counts["ids"])) == 4, "each ask has its own ID"


def test_spoofed_answers_are_rejected_and_the_real_one_served(netns, tmp_path, started):
    spoofer = started(Scripted, netns, tmp_path, "spoof", addr="127.0.0.3", delay=0.15)
    w = worker_with(netns, tmp_path, started, {"servers": [spoofer.server], "timeout": 1})
    reply = w.ask("Real.Test")
    assert addresses(reply) == [REAL]
    assert str(reply.question[0].name) == "Real.Test."
    assert spoofer.counts()["forged"] == 5
    # Only forgeries, never a real answer: the client gets SERVFAIL, not a forgery.
    reply = w.ask("nothing-real.test")
    assert reply.rcode() == dns.rcode.SERVFAIL and FORGED not in addresses(reply)


def test_upstream_tc_is_retried_over_tcp(netns, tmp_path, started):
    truncating = started(Scripted, netns, tmp_path, "tc", addr="127.0.0.3")
    w = worker_with(netns, tmp_path, started, {"servers": [truncating.server]})
    reply = w.ask("long.test")
    assert addresses(reply) == [REAL]
    counts = truncating.counts()
    assert counts["udp_queries"] == 1 and counts["tcp_queries"] == 1


def test_large_answer_from_unbound_arrives_whole(netns, tmp_path, started, upstream):
    w = worker_with(netns, tmp_path, started, {"servers": [upstream.server]})
    reply = w.ask("big.test", "TXT", tcp=True)
    assert len(reply.answer) == 1 and len(reply.answer[0]) == 30


def tcp_connections_to(netns, server: str) -> list[str]:
    """States of the TCP sockets at either end of a connection to `server`
    (a closed connection leaves TIME-WAIT on whichever side closed first)."""
    out = netns.run(["ss", "-Htan", "state", "all", f"( dst {server} or src {server} )"]).stdout
    return sorted(state for state, *_ in (line.split() for line in out.splitlines() if line.strip())
                  if state != "LISTEN")


def test_force_tcp_reuses_one_connection(netns, tmp_path, started):
    # This unbound does not serve UDP at all: every answer proves TCP.
    tcp_only = started(Unbound, tmp_path / "tcp-only", addr="127.0.0.2", netns=netns,
                       extra=["do-udp: no"])
    w = worker_with(netns, tmp_path, started,
                    {"servers": [tcp_only.server], "force_tcp": True})
    for i in range(20):
        assert addresses(w.ask(f"n{i}.hit.test")) == ["192.0.2.1"]
    # Concurrent misses share the connection too (pipelined).
    clients = [netns.popen(["dig", "+short", "+tries=1", "+time=3", "-p", str(w.server[1]),
                            f"@{w.server[0]}", f"p{i}.ttl.test"], stdout=subprocess.PIPE, text=True)
               for i in range(10)]
    assert [c.communicate(timeout=10)[0].strip() for c in clients] == ["192.0.2.3"] * 10
    assert tcp_only.queries() == 30
    # One connection, still open; no closed ones (TIME-WAIT) from one-per-query.
    assert tcp_connections_to(netns, tcp_only.server) == ["ESTAB", "ESTAB"]


def test_force_tcp_counted_at_the_server(netns, tmp_path, started):
    counting = started(Scripted, netns, tmp_path, "answer", addr="127.0.0.3")
    w = worker_with(netns, tmp_path, started,
                    {"zone": ".", "servers": [counting.server], "force_tcp": True})
    for i in range(5):
        assert addresses(w.ask(f"c{i}.test")) == [REAL]
    counts = counting.counts()
    assert (counts["udp_queries"], counts["tcp_connections"], counts["tcp_queries"]) == (0, 1, 5)
    assert len(set(counts["ids"])) == 5          # IDs told apart on the shared connection


def test_udp_queries_go_out_from_the_pools_random_ports_with_random_ids(netns, tmp_path, started):
    counting = started(Scripted, netns, tmp_path, "answer", addr="127.0.0.3")
    w = worker_with(netns, tmp_path, started, {"servers": [counting.server]})
    for i in range(20):
        assert addresses(w.ask(f"p{i}.test")) == [REAL]
    counts = counting.counts()
    ports, ids = counts["udp_ports"], counts["ids"]
    # One at a time, the queries take the pool's sockets in turn (worker/upstream_udp.py).
    opened = list(dict.fromkeys(ports))
    assert len(ports) == 20 and len(opened) == POOL_SLOTS
    assert ports == [opened[i % POOL_SLOTS] for i in range(20)]
    # Not a counter: random ports from the ephemeral range spread far apart.
    assert max(ports) - min(ports) > 1000 and sorted(opened) != opened
    assert len(set(ids)) >= 19 and max(ids) - min(ids) > 1000


def dig_query_time_ms(proc) -> tuple[str, int]:
    """(answer address, dig's measured query time in ms) from a finished dig."""
    out = proc.communicate(timeout=10)[0]
    address = [l.split()[-1] for l in out.splitlines() if "\tA\t" in l and not l.startswith(";")]
    ms = [int(l.split()[3]) for l in out.splitlines() if l.startswith(";; Query time:")]
    return (address[0] if address else ""), (ms[0] if ms else -1)


def test_tcp_answers_are_matched_by_id_in_any_order(netns, tmp_path, started):
    # The server holds back answers to "slow*" names: a later query on the same
    # connection is answered first and must still reach the right client.
    server = started(Scripted, netns, tmp_path, "answer", addr="127.0.0.3", delay=1.0)
    w = worker_with(netns, tmp_path, started, {"servers": [server.server], "force_tcp": True})
    assert addresses(w.ask("warm.test")) == [REAL]

    def dig(name):
        return netns.popen(["dig", "+tries=1", "+time=3", "-p", str(w.server[1]),
                            f"@{w.server[0]}", name], stdout=subprocess.PIPE, text=True)
    slow = dig("slow1.test")
    time.sleep(0.1)
    fast = dig("fast1.test")
    fast_answer, fast_ms = dig_query_time_ms(fast)
    slow_answer, slow_ms = dig_query_time_ms(slow)
    assert fast_answer == REAL and slow_answer == REAL
    assert fast_ms < 600 <= slow_ms, (fast_ms, slow_ms)     # not stuck behind the slow one
    assert server.counts()["tcp_connections"] == 1 and server.counts()["tcp_queries"] == 3


def test_tcp_reconnects_when_the_upstream_closes(netns, tmp_path, started):
    server = started(Scripted, netns, tmp_path, "answer", addr="127.0.0.3", close_after=2)
    w = worker_with(netns, tmp_path, started, {"servers": [server.server], "force_tcp": True})
    for i in range(5):
        assert addresses(w.ask(f"r{i}.test")) == [REAL]
    assert server.counts()["tcp_connections"] == 3


def test_ipv6_upstream_over_udp_and_tcp(netns, tmp_path, started):
    v6 = started(Unbound, tmp_path / "v6", addr="::1", netns=netns, extra=["do-ip6: yes"])
    w = worker_with(netns, tmp_path, started, {"servers": ["[::1]:53"]},
                    {"zone": "ttl.test", "servers": ["::1"], "force_tcp": True})
    assert addresses(w.ask("a.test")) == ["192.0.2.10"]
    assert addresses(w.ask("x.ttl.test")) == ["192.0.2.3"]
    assert v6.queries() == 2


FORWARD_AND_REPORT = """
import asyncio, json, sys
import dns.message, uvloop
from worker import wire
from worker.config import UpstreamZone
from worker.upstream import Forwarder, UpstreamError
from worker.upstream_query import UpstreamQuery

def query(name):
    return UpstreamQuery.from_question(wire.parse_query(dns.message.make_query(name, "A").to_wire()))

async def main():
    servers = tuple((ip, int(port)) for ip, port in (s.rsplit(":", 1) for s in sys.argv[1:]))
    forwarder = Forwarder([UpstreamZone(".", servers, timeout=1.0)])
    results = []
    for name in ("one.test", "two.test", "three.test"):
        try:
            reply = dns.message.from_wire(await forwarder.forward(query(name)))
            results.append(reply.answer[0][0].address)
        except UpstreamError:
            results.append("UpstreamError")
    print(json.dumps({"results": results, "stats": forwarder.stats()}))
    await forwarder.close()

uvloop.run(main())
"""


def test_per_server_stats(netns, tmp_path, started):
    """The Forwarder on its own (as the worker reports it in STATS): queries,
    errors, rejected forgeries and the latency histogram, per server."""
    spoofer = started(Scripted, netns, tmp_path, "spoof", addr="127.0.0.3", delay=0.05)
    p = netns.run([sys.executable, "-c", FORWARD_AND_REPORT, DOWN, spoofer.server], timeout=30)
    report = json.loads(p.stdout)
    assert report["results"] == [REAL] * 3
    down, spoofed = report["stats"]
    assert down["server"] == DOWN and spoofed["server"] == spoofer.server
    # Refused once, then tried last: the next queries go straight to the good server.
    assert (down["queries"], down["errors"]) == (1, 1)
    assert (spoofed["queries"], spoofed["errors"]) == (3, 0)
    # Per query: wrong ID, wrong question and QR=0 reach the socket and are
    # rejected; the other-port and other-address forgeries the kernel drops.
    assert spoofed["rejected"] == 3 * 3
    assert sum(spoofed["latency_counts"]) == 3
    assert 3 * 0.05 <= spoofed["latency_sum"] < 3 * 0.5
    assert len(spoofed["latency_counts"]) == len(spoofed["latency_buckets"]) + 1


BURST = """
import asyncio, collections, json, sys
import dns.message, uvloop
from worker import wire
from worker.config import UpstreamZone
from worker.upstream import Forwarder
from worker.upstream_query import UpstreamQuery

def query(name):
    return UpstreamQuery.from_question(wire.parse_query(dns.message.make_query(name, "A").to_wire()))

async def main():
    forwarder = Forwarder([UpstreamZone(".", (("127.0.0.2", 53),), timeout=5.0)])
    outcomes = collections.Counter()
    async def one(i):
        try:
            reply = dns.message.from_wire(await forwarder.forward(query(f"b{i}.hit.test")))
            outcomes[reply.answer[0][0].address] += 1
        except Exception as e:
            outcomes[repr(e)] += 1
    await asyncio.gather(*(one(i) for i in range(int(sys.argv[1]))))
    print(json.dumps({"outcomes": outcomes, "stats": forwarder.stats()}))
    await forwarder.close()

uvloop.run(main())
"""


def test_burst_of_misses_beyond_the_fd_limit_queues_instead_of_failing(netns, upstream):
    # 64 file descriptors, 400 concurrent misses: without a bound on open
    # upstream sockets most would fail with EMFILE and the server be blamed.
    p = netns.run(["bash", "-c", f'ulimit -Sn 64 && exec "$0" -c "$1" 400',
                   sys.executable, BURST], timeout=60)
    report = json.loads(p.stdout)
    assert report["outcomes"] == {"192.0.2.1": 400}
    assert report["stats"][0]["errors"] == 0 and report["stats"][0]["queries"] == 400
