"""The upstream query built by hand and the wire-level test of its answer
(worker/upstream_query.py), and the SERVFAIL the resolver makes itself."""
from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker import wire
from worker.resolver import servfail_response
from worker.upstream_query import Rejected, UpstreamQuery


def client_question(name: str, rdtype: str = "A", do: bool = False, cd: bool = False,
                    rdclass: str = "IN") -> wire.Question:
    query = dns.message.make_query(name, rdtype, rdclass, use_edns=0, want_dnssec=do)
    if cd:
        query.flags |= dns.flags.CD
    return wire.parse_query(query.to_wire())


def response_to(sent: bytes, name: str | None = None, rdtype: str | None = None) -> dns.message.Message:
    """What an upstream would answer to `sent` (optionally for another question)."""
    query = dns.message.from_wire(sent)
    reply = dns.message.make_response(query)
    q = query.question[0]
    if name is not None or rdtype is not None:
        reply.question = [dns.rrset.RRset(dns.name.from_text(name) if name else q.name, q.rdclass,
                                          dns.rdatatype.from_text(rdtype) if rdtype else q.rdtype)]
    if q.rdtype == dns.rdatatype.A and q.rdclass == dns.rdataclass.IN:
        reply.answer.append(dns.rrset.from_text(reply.question[0].name, 60, "IN", "A", "192.0.2.1"))
    return reply


@pytest.mark.parametrize("do", [False, True])
@pytest.mark.parametrize("cd", [False, True])
@pytest.mark.parametrize("rdtype", ["A", "AAAA", "HTTPS", "TXT"])
def test_query_decodes_to_the_clients_question_with_our_flags_and_edns(do, cd, rdtype):
    q = client_question("Www.Example.TEST.", rdtype, do=do, cd=cd)
    sent = dns.message.from_wire(UpstreamQuery.from_question(q).wire(0xBEEF))
    assert sent.id == 0xBEEF
    assert sent.opcode() == dns.opcode.QUERY and not sent.flags & dns.flags.QR
    assert sent.flags & dns.flags.RD
    assert bool(sent.flags & dns.flags.CD) == cd
    assert not sent.flags & (dns.flags.AA | dns.flags.TC | dns.flags.RA | dns.flags.AD)
    assert len(sent.question) == 1 and not sent.answer and not sent.authority and not sent.additional
    question = sent.question[0]
    # Lower-cased: answers are matched in any case, and one query serves every spelling.
    assert question.name.to_text() == "www.example.test."
    assert question.rdtype == dns.rdatatype.from_text(rdtype) and question.rdclass == dns.rdataclass.IN
    assert sent.edns == 0 and sent.payload == wire.OUR_UDP_PAYLOAD and not sent.options
    assert bool(sent.ednsflags & dns.flags.DO) == do


def test_query_for_the_root_and_other_classes():
    q = client_question(".", "NS", rdclass="CH")
    up = UpstreamQuery.from_question(q)
    sent = dns.message.from_wire(up.wire(1))
    assert sent.question[0].name == dns.name.root and sent.question[0].rdclass == dns.rdataclass.CH
    assert up.name_text == "." and sent.question[0].rdtype == dns.rdatatype.NS
    assert UpstreamQuery.from_question(client_question("A.b.", "TXT")).name_text == "a.b."


def test_each_id_goes_only_into_the_first_two_bytes():
    up = UpstreamQuery.from_question(client_question("a.test."))
    assert up.wire(0x0102)[:2] == b"\x01\x02" and up.wire(0xFFFF)[2:] == up.wire(0)[2:]


def test_answer_accepted_with_matching_id_and_question_in_any_case():
    up = UpstreamQuery.from_question(client_question("MiXeD.test."))
    sent = up.wire(7)
    up.check(response_to(sent, name="mixed.TEST.").to_wire(), 7)
    up.check(response_to(sent).to_wire(), 7)


def test_answer_for_a_type_whose_code_is_a_capital_letter_is_accepted():
    """Type 65 (HTTPS) is 0x0041, "A": the type must not be compared case-insensitively."""
    up = UpstreamQuery.from_question(client_question("a.test.", "HTTPS"))
    up.check(response_to(up.wire(9)).to_wire(), 9)
    with pytest.raises(Rejected, match="wrong question"):
        # 0x0061 is type 97, not HTTPS.
        up.check(response_to(up.wire(9), rdtype="TYPE97").to_wire(), 9)


def header_changed(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + bytes((value,)) + data[offset + 1:]


@pytest.mark.parametrize("make, why", [
    (lambda sent: response_to(sent).to_wire()[:1] + b"\x08" + response_to(sent).to_wire()[2:], "wrong ID"),
    (lambda sent: response_to(sent, name="other.test.").to_wire(), "wrong question"),
    (lambda sent: response_to(sent, name="a.test.x.").to_wire(), "wrong question"),
    (lambda sent: response_to(sent, name="test.").to_wire(), "wrong question"),
    (lambda sent: response_to(sent, name="b.a.test.").to_wire(), "wrong question"),
    (lambda sent: response_to(sent, rdtype="AAAA").to_wire(), "wrong question"),
    (lambda sent: sent, "not a response"),                                              # QR=0
    (lambda sent: header_changed(response_to(sent).to_wire(), 2, 0x80 | 4 << 3), "opcode"),   # NOTIFY
    (lambda sent: header_changed(response_to(sent).to_wire(), 2, 0x80 | 5 << 3), "opcode"),   # UPDATE
    (lambda sent: header_changed(response_to(sent).to_wire(), 5, 0), "question count"),
    (lambda sent: header_changed(response_to(sent).to_wire(), 5, 2), "question count"),
    (lambda sent: header_changed(response_to(sent).to_wire(), 4, 1), "question count"),      # 257
    (lambda sent: response_to(sent).to_wire()[:11], "shorter"),
    (lambda sent: response_to(sent).to_wire()[:12 + 8 + 3], "shorter"),         # question cut in its type
    (lambda sent: b"", "shorter"),
])
def test_answer_rejected(make, why):
    up = UpstreamQuery.from_question(client_question("a.test."))
    sent = up.wire(7)
    with pytest.raises(Rejected, match=why):
        up.check(make(sent), 7)


def test_answer_of_another_class_is_rejected():
    up = UpstreamQuery.from_question(client_question("a.test."))
    data = bytearray(response_to(up.wire(7)).to_wire())
    data[12 + 8 + 2:12 + 8 + 4] = b"\x00\x03"     # class CH
    with pytest.raises(Rejected, match="wrong question"):
        up.check(bytes(data), 7)


def test_answer_with_no_question_is_rejected_even_for_servfail():
    up = UpstreamQuery.from_question(client_question("a.test."))
    reply = response_to(up.wire(7))
    reply.set_rcode(dns.rcode.SERVFAIL)
    reply.question, reply.answer = [], []
    with pytest.raises(Rejected, match="question count"):
        up.check(reply.to_wire(), 7)


def test_a_compressed_question_name_is_rejected():
    """A question name at offset 12 cannot point backwards: a pointer there is not our name."""
    up = UpstreamQuery.from_question(client_question("a.test."))
    data = response_to(up.wire(7)).to_wire()
    forged = data[:12] + b"\xc0\x0c" + data[12 + 8:]
    with pytest.raises(Rejected):
        up.check(forged, 7)


@settings(max_examples=300)
@given(st.binary(max_size=80))
def test_garbage_is_rejected(data):
    up = UpstreamQuery.from_question(client_question("a.test."))
    with pytest.raises(Rejected):
        up.check(data, int.from_bytes(data[:2], "big") if len(data) >= 2 else 0)


# Bytes of header and question whose change leaves it the answer to our
# query: flags other than QR and opcode, the AN/NS/AR counts, and the case
# of a letter in the name. Anything else must be rejected.
@settings(max_examples=300)
@given(offset=st.integers(min_value=0, max_value=12 + 8 + 4 - 1), value=st.integers(0, 255))
def test_one_changed_byte_of_header_or_question(offset, value):
    up = UpstreamQuery.from_question(client_question("a.test."))
    good = response_to(up.wire(0x1234)).to_wire()
    changed = header_changed(good, offset, value)
    harmless = (
        changed == good
        or (offset == 2 and value & 0x80 and not value & 0x78)
        or offset == 3
        or 6 <= offset < 12
        or (12 <= offset < 12 + 8 and good[offset:offset + 1].isalpha()
            and bytes((value,)).lower() == good[offset:offset + 1].lower()))
    if harmless:
        up.check(changed, 0x1234)
    else:
        with pytest.raises(Rejected):
            up.check(changed, 0x1234)


@pytest.mark.parametrize("cd", [False, True])
def test_servfail_response_is_a_servfail_to_our_query(cd):
    q = client_question("Some.Name.test.", "AAAA", cd=cd)
    reply = dns.message.from_wire(servfail_response(q))
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert reply.flags & dns.flags.QR and reply.flags & dns.flags.RA and reply.flags & dns.flags.RD
    assert bool(reply.flags & dns.flags.CD) == cd
    assert reply.question[0].name.to_text() == "some.name.test." and reply.question[0].rdtype == 28
    assert not reply.answer and not reply.authority and not reply.additional
    UpstreamQuery.from_question(q).check(servfail_response(q), 0)


def test_longest_zone():
    zones = {(b"",): "root", (b"cluster", b"local", b""): "cluster", (b"svc", b"cluster", b"local", b""): "svc"}
    def zone(name):
        return wire.longest_zone(zones, dns.name.from_text(name).to_wire().lower())
    assert zone("a.svc.cluster.local.") == "svc"
    assert zone("svc.cluster.local.") == "svc"
    assert zone("pod.cluster.local.") == "cluster"
    assert zone("xcluster.local.") == "root"
    assert zone(".") == "root"
    assert wire.longest_zone({(b"local", b""): 1}, b"\x03com\x00") is None
    # Told the most labels a zone has (4, root included) it finds the same; told 3, not the deepest.
    assert wire.longest_zone(zones, dns.name.from_text("a.b.svc.cluster.local.").to_wire(), 4) == "svc"
    assert wire.longest_zone(zones, dns.name.from_text("a.b.svc.cluster.local.").to_wire(), 3) == "cluster"


def test_longest_zone_with_only_the_root_configured():
    root_only = {(b"",): "root"}
    for name in ("a.b.example.", "example.", "."):
        assert wire.longest_zone(root_only, dns.name.from_text(name).to_wire(), 1) == "root"
    assert wire.longest_zone({}, b"\x03com\x00", 1) is None
