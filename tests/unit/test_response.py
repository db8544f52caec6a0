"""Response classification (worker/response.py): each kind of upstream answer."""
from __future__ import annotations

import dns.rcode
import pytest

from test_cache import SOA, response
from worker import wire
from worker.response import ResponseType, classify


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
