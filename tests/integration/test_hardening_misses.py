"""Issue 14 item 6: misses in flight are bounded per worker ([cache]
max_concurrent); past the bound a miss is answered SERVFAIL at once instead
of waiting behind the others, and cached names keep being answered at once."""
from __future__ import annotations

import select
import time

import dns.message
import dns.rcode
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
