"""Serve-stale (RFC 8767) as a client sees it: when the upstream is gone, an
answer that expired less than `serve_stale` seconds ago is served again with
TTL 30 instead of SERVFAIL; with serve_stale = 0 it is SERVFAIL."""
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
