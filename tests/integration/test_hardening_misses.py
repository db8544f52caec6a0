"""Issue 14 item 6: misses in flight are bounded per worker ([cache]
max_concurrent); past the bound a miss is answered SERVFAIL at once instead
of waiting behind the others, and cached names keep being answered at once."""
from __future__ import annotations

import select
import time

import dns.message
import dns.rcode
import dns.rrset
import pytest

from helpers.worker import Worker, ns_socket

pytestmark = pytest.mark.netns

CONFIG = """
[cache]
max_concurrent = 50

[[upstream]]
zone = "."
servers = ["127.0.0.2"]

[[upstream]]
zone = "slow.test"
servers = ["127.0.0.9"]
timeout = 2.0
"""


def test_misses_past_max_concurrent_get_servfail_at_once_and_hits_still_flow(netns, upstream, tmp_path):
    silent = ns_socket(netns)
    silent.bind(("127.0.0.9", 53))          # the slow zone's upstream never answers
    w = Worker(netns, tmp_path, upstream=None, config=CONFIG)
    try:
        assert w.ask("a.test").answer           # cached
        names = [f"n{i}.slow.test" for i in range(300)]
        rcodes: dict[int, int] = {}
        with ns_socket(netns) as s:
            s.connect(w.server)
            ids = {}
            for i, name in enumerate(names):
                q = dns.message.make_query(name, "A")
                q.id = i
                ids[i] = name
                s.send(q.to_wire())
            hit = dns.message.make_query("a.test", "A")
            hit.id = 4000
            s.send(hit.to_wire())
            started = time.monotonic()
            hit_after = None
            while time.monotonic() - started < 1.0:
                if not select.select([s], [], [], 0.05)[0]:
                    continue
                reply = dns.message.from_wire(s.recv(4096))
                if reply.id == hit.id:
                    hit_after = time.monotonic() - started
                    assert reply.answer
                else:
                    rcodes[reply.id] = reply.rcode()
        servfail = sum(1 for r in rcodes.values() if r == dns.rcode.SERVFAIL)
        assert servfail >= 240, f"only {servfail} of 300 misses past the bound of 50 were refused within 1 s"
        assert hit_after is not None and hit_after < 0.5, f"the cached name took {hit_after} s"
        assert w.ask("a.test").answer and w.proc.poll() is None
    finally:
        w.stop()
        silent.close()


IN_FLIGHT_CONFIG = """
[cache]
max_in_flight = 8

[[upstream]]
zone = "."
servers = ["127.0.0.2"]

[[upstream]]
zone = "held.test"
servers = ["127.0.0.9"]
timeout = 5.0
"""


def _held_queries(upstream, window: float) -> list[tuple[dns.message.Message, tuple]]:
    """Every query the held zone's upstream receives within `window` seconds."""
    got = []
    deadline = time.monotonic() + window
    while (left := deadline - time.monotonic()) > 0:
        if select.select([upstream], [], [], left)[0]:
            data, source = upstream.recvfrom(4096)
            got.append((dns.message.from_wire(data), source))
    return got


def test_a_burst_of_misses_reaches_upstream_max_in_flight_at_a_time_and_every_client_is_answered(
        netns, upstream, tmp_path):
    """A burst of 40 unique names: the upstream sees 8 queries at a time
    (the next 8 only as answers come back), not one burst of 40 that would
    overflow its socket buffer; every client still gets its answer."""
    held = ns_socket(netns)
    held.bind(("127.0.0.9", 53))            # the test answers for this upstream, when it chooses
    w = Worker(netns, tmp_path, upstream=None, config=IN_FLIGHT_CONFIG)
    try:
        names = {i: f"burst{i}.held.test" for i in range(40)}
        answered: dict[int, dns.message.Message] = {}
        with ns_socket(netns) as client:
            client.connect(w.server)
            for i, name in names.items():
                q = dns.message.make_query(name, "A")
                q.id = i
                client.send(q.to_wire())
            asked: set[str] = set()
            for _round in range(5):
                queries = _held_queries(held, 0.4)
                fresh = {q.question[0].name.to_text().lower() for q, _ in queries}
                assert len(fresh) == 8, f"upstream had {len(fresh)} distinct queries in flight at once, not 8"
                assert not fresh & asked, "a name was asked upstream again"
                asked |= fresh
                for q, source in queries:
                    reply = dns.message.make_response(q)
                    reply.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "192.0.2.7"))
                    held.sendto(reply.to_wire(), source)
            assert asked == {n.lower() + "." for n in names.values()}
            deadline = time.monotonic() + 2.0
            while len(answered) < len(names) and select.select([client], [], [], deadline - time.monotonic())[0]:
                reply = dns.message.from_wire(client.recv(4096))
                answered[reply.id] = reply
        assert sorted(answered) == sorted(names)
        assert all(r.rcode() == dns.rcode.NOERROR and r.answer for r in answered.values())
        assert w.proc.poll() is None
    finally:
        w.stop()
        held.close()
