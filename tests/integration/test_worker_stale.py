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
timeout = 0.5
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
            assert time.monotonic() - started < 0.3, "the stale answer is reused for 30 s, upstream not waited for"
            assert stale.ask("never-asked.short.test").rcode() == dns.rcode.SERVFAIL, "nothing stale to serve"
            assert fresh_only.ask("old.short.test").rcode() == dns.rcode.SERVFAIL, "serve_stale = 0"
        finally:
            stale.stop()
            fresh_only.stop()


PREFETCH_CONFIG = """
[cache]
max_ttl = 10
prefetch = {prefetch}

[[upstream]]
zone = "."
servers = ["127.0.0.2"]
"""


@pytest.mark.parametrize("prefetch", ["true", "false"])
def test_a_name_asked_near_its_expiry_is_refreshed_before_it_expires(tmp_path, prefetch):
    """max_ttl = 10: a hit in the last second of the lifetime refreshes the
    entry from upstream in the background, so an ask after the old expiry is
    still a hit. Without prefetch that ask is a miss."""
    require_netns()
    with Netns() as ns:
        unbound = Unbound(tmp_path / "unbound", addr="127.0.0.2", port=53, netns=ns)
        w = Worker(ns, tmp_path, listen="127.0.0.1:5353", upstream=None,
                   config=PREFETCH_CONFIG.format(prefetch=prefetch))
        try:
            stored = time.monotonic()
            assert w.ask("popular.hit.test").answer[0].ttl == 10
            time.sleep(max(0.0, stored + 9.3 - time.monotonic()))
            before = unbound.queries()
            assert w.ask("popular.hit.test").answer[0].ttl <= 1, "a hit, in the last 10% of its lifetime"
            time.sleep(max(0.0, stored + 10.6 - time.monotonic()))      # the first answer has expired
            refreshed = unbound.queries() - before
            after_expiry = w.ask("popular.hit.test")
            asked_for_it = unbound.queries() - before - refreshed
            if prefetch == "true":
                assert (refreshed, asked_for_it) == (1, 0), "refreshed in the background; the ask was a hit"
                assert after_expiry.answer[0].ttl <= 9, "from the entry refreshed ~1.3 s ago"
            else:
                assert (refreshed, asked_for_it) == (0, 1), "nothing refreshed; the ask was a miss"
                assert after_expiry.answer[0].ttl == 10
        finally:
            w.stop()
