"""Answers around their expiry, as a client sees them. Serve-stale (RFC
8767): when the upstream is gone, an answer that expired less than
`serve_stale` seconds ago is served again with TTL 30 instead of SERVFAIL;
with serve_stale = 0 it is SERVFAIL. Prefetch: a popular answer is
refreshed before it expires, so it never expires into a miss."""
from __future__ import annotations

import time

import dns.rcode
import pytest

from conftest import require_netns
from helpers.netns import Netns
from helpers.unbound import Unbound
from helpers.worker import Worker

pytestmark = pytest.mark.netns

CONFIG = """
[cache]
serve_stale = {stale}

[[upstream]]
zone = "."
servers = ["127.0.0.2"]
timeout = 1.0
"""


def test_expired_answers_are_served_stale_while_the_upstream_is_down(tmp_path):
    require_netns()
    with Netns() as ns:
        unbound = Unbound(tmp_path / "unbound", addr="127.0.0.2", port=53, netns=ns)
        stale = Worker(ns, tmp_path, listen="127.0.0.1:5353", upstream=None, config=CONFIG.format(stale=60))
        fresh_only = Worker(ns, tmp_path, listen="127.0.0.1:5354", upstream=None, config=CONFIG.format(stale=0))
        try:
            for w in (stale, fresh_only):
                first = w.ask("old.short.test")
                assert first.answer[0].ttl == 1 and first.answer[0][0].address == "192.0.2.2"
            unbound.stop()
            time.sleep(1.2)                               # both answers expired
            served = stale.ask("old.short.test")
            assert served.rcode() == dns.rcode.NOERROR
            assert served.answer[0][0].address == "192.0.2.2" and served.answer[0].ttl == 30
            started = time.monotonic()
            again = stale.ask("old.short.test")
            assert again.answer[0][0].address == "192.0.2.2" and again.answer[0].ttl <= 30
            assert time.monotonic() - started < 0.6, "the stale answer is reused for 30 s, upstream (1 s timeout) not waited for"
            assert stale.ask("never-asked.short.test").rcode() == dns.rcode.SERVFAIL, "nothing stale to serve"
            assert fresh_only.ask("old.short.test").rcode() == dns.rcode.SERVFAIL, "serve_stale = 0"
        finally:
            stale.stop()
            fresh_only.stop()


PREFETCH_CONFIG = """
[cache]
max_ttl = 20
prefetch = {prefetch}

[[upstream]]
zone = "."
servers = ["127.0.0.2"]
"""


def test_a_name_asked_near_its_expiry_is_refreshed_before_it_expires(tmp_path):
    """max_ttl = 20: a hit in the last 2 seconds (10%) of the lifetime
    refreshes the entry from upstream in the background, so an ask after the
    old expiry is still a hit. With prefetch = false that ask is a miss.
    (The two workers share the upstream, so each asks its own name.)"""
    require_netns()
    with Netns() as ns:
        unbound = Unbound(tmp_path / "unbound", addr="127.0.0.2", port=53, netns=ns)
        workers = {flag: Worker(ns, tmp_path, listen=f"127.0.0.1:{port}", upstream=None,
                                config=PREFETCH_CONFIG.format(prefetch=flag))
                   for flag, port in (("true", 5353), ("false", 5354))}
        name = {"true": "popular.hit.test", "false": "unrefreshed.hit.test"}
        try:
            stored = time.monotonic()
            for flag, w in workers.items():
                assert w.ask(name[flag]).answer[0].ttl == 20
            time.sleep(max(0.0, stored + 18.5 - time.monotonic()))
            before = unbound.queries()
            for flag, w in workers.items():
                assert w.ask(name[flag]).answer[0].ttl <= 2, "a hit, in the last 10% of its lifetime"
            time.sleep(max(0.0, stored + 20.7 - time.monotonic()))      # the first answers have expired
            refreshed = unbound.queries() - before
            assert refreshed == 1, "one background query: the prefetching worker's"
            late = workers["true"].ask(name["true"])
            assert unbound.queries() - before == 1, "the prefetched name's ask after expiry was a hit"
            assert late.answer[0].ttl <= 19, "from the entry refreshed ~2 s ago"
            late = workers["false"].ask(name["false"])
            assert unbound.queries() - before == 2, "without prefetch the ask after expiry was a miss"
            assert late.answer[0].ttl == 20
        finally:
            for w in workers.values():
                w.stop()
