"""Issue 14 item 4: an upstream's answer reaches clients scrubbed to the zone
it serves (as unbound scrubs a forward zone's answers): authority and
additional records about other zones are removed, and a CNAME leaving the
zone is followed through the upstream that owns the target, never answered
with the first upstream's records for it."""
from __future__ import annotations

import dns.message
import dns.rdatatype
import pytest

from helpers.scripted_upstream import FORGED, REAL, Scripted
from helpers.worker import Worker

pytestmark = pytest.mark.netns

CONFIG = """
[[upstream]]
zone = "."
servers = ["127.0.0.2"]

[[upstream]]
zone = "inner.test"
servers = ["127.0.0.3"]
"""


def addresses(reply: dns.message.Message) -> set[str]:
    return {rd.address for section in (reply.answer, reply.authority, reply.additional)
            for rrset in section if rrset.rdtype == dns.rdatatype.A for rd in rrset}


def test_out_of_zone_records_are_removed_and_a_cname_is_followed_by_its_own_upstream(netns, upstream, tmp_path):
    inner = Scripted(netns, tmp_path, "outofzone", addr="127.0.0.3")
    w = Worker(netns, tmp_path, upstream=None, config=CONFIG)
    try:
        for _ in range(2):                                  # the miss, then the cached answer
            plain = w.ask("host.inner.test")
            assert addresses(plain) == {REAL}
            assert not plain.authority and not [r for r in plain.additional if r.rdtype != dns.rdatatype.OPT]

            chained = w.ask("chain.inner.test")
            names = [(r.name.to_text(), r.rdtype) for r in chained.answer]
            assert ("chain.inner.test.", dns.rdatatype.CNAME) in names
            assert FORGED not in addresses(chained), "the inner upstream's record for a.test. was passed on"
            assert addresses(chained) == {"192.0.2.10"}, "a.test. asked of its own upstream (unbound)"
    finally:
        w.stop()
        inner.stop()
