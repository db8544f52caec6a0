"""Hand parsing of DNS wire data (worker/wire.py): no root needed."""
from __future__ import annotations

import dns.edns
import dns.flags
import dns.rcode
import dns.message
import dns.rrset
import pytest
from hypothesis import given, settings, strategies as st

from worker import wire


def query(name="a.test", rdtype="A", **kw) -> bytes:
    return dns.message.make_query(name, rdtype, **kw).to_wire()


def test_parse_query_plain():
    q = wire.parse_query(query("WwW.Example.", "AAAA", use_edns=False))
    assert q.qtype == 28 and q.qclass == 1
    assert not q.has_opt and q.payload == 512 and not q.do and not q.cd
    assert q.key == b"\x03www\x07example\x00" + b"\x00\x1c\x00\x01" + b"\x00"
    assert q.qname_end == 12 + len(b"\x03www\x07example\x00")


def test_key_is_case_insensitive_and_separates_do_cd():
    plain = wire.parse_query(query("A.TEST")).key
    assert plain == wire.parse_query(query("a.test")).key
    do = wire.parse_query(query("a.test", want_dnssec=True)).key
    cd = wire.parse_query(query("a.test", flags=dns.flags.RD | dns.flags.CD)).key
    assert len({plain, do, cd}) == 3


def test_edns_payload_and_do():
    q = wire.parse_query(query(use_edns=0, payload=4096, want_dnssec=True))
    assert q.has_opt and q.payload == 4096 and q.do
    small = wire.parse_query(query(use_edns=0, payload=100))
    assert small.payload == 512, "below 512 means 512 (RFC 6891)"


def test_qtype_bytes_are_not_lowercased():
    # TYPE 65 (HTTPS) is 0x0041 = "A": lower-casing it would collide with TYPE 97.
    assert wire.parse_query(query(rdtype="HTTPS")).key[-5:-1] == b"\x00\x41\x00\x01"


@pytest.mark.parametrize("packet,error", [
    (b"\x00" * 11, wire.ShortMessage),
    (b"\x12\x34\x01\x00" + b"\x00\x02" + b"\x00" * 6 + b"\x01a\x00\x00\x01\x00\x01", wire.WireError),
    (b"\x12\x34\x01\x00\x00\x01" + b"\x00" * 6 + b"\xc0\x0c\x00\x01\x00\x01", wire.BadName),
    (b"\x12\x34\x01\x00\x00\x01" + b"\x00" * 6 + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", wire.BadName),
    (b"\x12\x34\x01\x00\x00\x01" + b"\x00" * 6 + b"\x05ab", wire.ShortMessage),
    (b"\x12\x34\x29\x00\x00\x01" + b"\x00" * 6 + b"\x01a\x00\x00\x01\x00\x01", wire.BadQuery),
])
def test_bad_queries(packet, error):
    with pytest.raises(error):
        wire.parse_query(packet)


def test_name_longer_than_255_rejected():
    name = b"".join(b"\x3f" + b"a" * 63 for _ in range(4)) + b"\x00"
    packet = b"\x12\x34\x01\x00\x00\x01" + b"\x00" * 6 + name + b"\x00\x01\x00\x01"
    with pytest.raises(wire.BadName):
        wire.parse_query(packet)


def test_skip_name_takes_only_backward_pointers():
    data = b"\x00" * 12 + b"\x01a\x04test\x00" + b"\x01b\xc0\x0c"
    assert wire.skip_name(data, 20) == 24
    loop = b"\x00" * 12 + b"\xc0\x0c"
    with pytest.raises(wire.BadName):
        wire.skip_name(loop, 12)
    forward = b"\x00" * 12 + b"\xc0\x0e\x00"
    with pytest.raises(wire.BadName):
        wire.skip_name(forward, 12)
    with pytest.raises(wire.BadName):
        wire.skip_name(data, 20, pointers=False)


def test_response_with_a_compressed_question_name_is_refused():
    data = b"\x00\x00\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00" + b"\xc0\x04" + b"\x00\x01\x00\x01"
    with pytest.raises(wire.WireError):
        wire.parse_response(data)


def test_error_reply_keeps_id_and_rd():
    data = query()
    reply = wire.error_reply(data, wire.RCODE_FORMERR)
    assert reply[:2] == data[:2] and reply[2] & 0x80 and reply[2] & 0x01 and reply[3] & 0x0F == 1
    assert wire.error_reply(b"\x01", wire.RCODE_FORMERR) is None


def test_parse_response_finds_every_ttl():
    q = dns.message.make_query("a.test", "A", use_edns=0)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("a.test.", 300, "IN", "A", "192.0.2.1", "192.0.2.2"))
    r.authority.append(dns.rrset.from_text("test.", 3600, "IN", "NS", "ns.test."))
    data = r.to_wire()
    resp = wire.parse_response(data)
    assert [(rec.section, rec.rtype, rec.ttl) for rec in resp.records] == [
        (0, 1, 300), (0, 1, 300), (1, 2, 3600), (2, 41, 0)]
    for rec in resp.records[:3]:
        assert wire.U32.unpack_from(data, rec.ttl_offset)[0] == rec.ttl


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=300))
def test_parsers_raise_only_wire_errors(data):
    for parse in (wire.parse_query, wire.parse_response):
        try:
            parse(data)
        except wire.WireError:
            pass


def test_edns_version_above_zero_gets_badvers():
    data = query(use_edns=1)
    with pytest.raises(wire.BadEdnsVersion) as raised:
        wire.parse_query(data)
    reply = dns.message.from_wire(wire.badvers_reply(data, raised.value.question_end))
    assert reply.question[0].name.to_text() == "a.test."
    assert reply.id == dns.message.from_wire(data).id
    assert reply.rcode() == dns.rcode.BADVERS and reply.edns == 0


def test_question_from_key_gives_back_what_the_key_was_made_from():
    for kw in (dict(use_edns=False), dict(use_edns=0, want_dnssec=True),
               dict(use_edns=0, flags=dns.flags.RD | dns.flags.CD)):
        q = wire.parse_query(dns.message.make_query("MiXeD.example.test", "AAAA", **kw).to_wire())
        back = wire.question_from_key(q.key)
        assert (back.key, back.qname_end, back.qtype, back.qclass, back.do, back.cd) == \
               (q.key, q.qname_end, q.qtype, q.qclass, q.do, q.cd)


def test_key_helpers_take_apart_what_parse_query_builds():
    import dns.message
    q = wire.parse_query(dns.message.make_query("WwW.Example.", "AAAA", want_dnssec=True).to_wire())
    qname = b"\x03www\x07example\x00"
    assert wire.key_qname(q.key) == qname
    assert wire.key_question(q.key) == qname + b"\x00\x1c\x00\x01"
    assert q.key == wire.make_key(b"\x03WWW\x07example\x00", b"\x00\x1c\x00\x01", do=True, cd=False)
    back = wire.question_from_key(q.key)
    assert (back.key, back.qtype, back.qclass, back.do, back.cd, back.qname_end) == \
        (q.key, 28, 1, True, False, q.qname_end)


def test_tcp_keepalive_is_found_and_the_close_signal_added_to_our_opt():
    asked = dns.message.make_query("a.test", "A", use_edns=0, options=[dns.edns.GenericOption(11, b"")]).to_wire()
    plain = dns.message.make_query("a.test", "A", use_edns=0).to_wire()
    assert wire.asks_tcp_keepalive(asked) and not wire.asks_tcp_keepalive(plain)
    assert not wire.asks_tcp_keepalive(asked[:-3]) and not wire.asks_tcp_keepalive(b"\x00" * 5)
    reply = wire.error_reply(plain, wire.RCODE_SERVFAIL, 12 + len(b"\x01a\x04test\x00"), False)
    signalled = dns.message.from_wire(wire.with_keepalive_close(reply))
    assert [(o.otype, o.to_wire()) for o in signalled.options] == [(11, b"\x00\x00")]
    no_opt = wire.error_reply(plain, wire.RCODE_SERVFAIL)
    assert wire.with_keepalive_close(no_opt) == no_opt
