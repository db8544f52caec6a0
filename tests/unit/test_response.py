"""Response classification (worker/response.py): each kind of upstream answer."""
from __future__ import annotations

import dns.rcode
import pytest

from test_cache import SOA, response
from worker import wire
from worker.config import CacheConfig
from worker.response import ResponseType, classify, entry_from_response


def kind(data: bytes) -> ResponseType:
    resp = wire.parse_response(data)
    return classify(resp, [r for r in resp.records if r.rtype != wire.TYPE_OPT])


@pytest.mark.parametrize("data, expected", [
    (response(answers=["a.test. 300 IN A 192.0.2.1"]), ResponseType.POSITIVE),
    (response(rdtype="CNAME", answers=["a.test. 300 IN CNAME b.test."]), ResponseType.POSITIVE),
    (response(rcode=dns.rcode.NXDOMAIN, authority=[SOA]), ResponseType.NXDOMAIN),
    (response(rcode=dns.rcode.NXDOMAIN), ResponseType.NXDOMAIN),
    (response(authority=[SOA]), ResponseType.NODATA),
    (response(rdtype="AAAA", answers=["a.test. 300 IN CNAME cdn.test."]), ResponseType.NODATA),
    (response(authority=["test. 300 IN NS ns.test."]), ResponseType.REFERRAL),
    (response(authority=[SOA, "test. 300 IN NS ns.test."]), ResponseType.NODATA),
    (response(rcode=dns.rcode.SERVFAIL), ResponseType.SERVFAIL),
    (response(rcode=dns.rcode.REFUSED), ResponseType.SERVFAIL),
    (response(rcode=dns.rcode.FORMERR), ResponseType.OTHER),
])
def test_each_kind_of_answer(data, expected):
    assert kind(data) is expected


def test_a_truncated_answer_is_never_cacheable():
    data = bytearray(response(answers=["a.test. 300 IN A 192.0.2.1"]))
    data[2] |= wire.FLAG_TC
    assert kind(bytes(data)) is ResponseType.OTHER


def test_an_opt_record_anywhere_but_last_makes_the_answer_unusable():
    good = response(answers=["a.test. 300 IN A 192.0.2.1"])     # its OPT is the last record
    assert entry_from_response(good, 0.0, CacheConfig(), None, False).rcode == dns.rcode.NOERROR
    # One more additional record after the OPT (ARCOUNT 1 -> 2): the OPT
    # could not be cut without moving a record a pointer may point into.
    extra = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x01\x2c\x00\x04\xc0\x00\x02\x63"
    bad = good[:10] + (wire.U16.unpack_from(good, 10)[0] + 1).to_bytes(2, "big") + good[12:] + extra
    assert [r.rtype for r in wire.parse_response(bad).records] == [1, wire.TYPE_OPT, 1]
    with pytest.raises(wire.WireError, match="OPT record is not the last"):
        entry_from_response(bad, 0.0, CacheConfig(), None, False)
