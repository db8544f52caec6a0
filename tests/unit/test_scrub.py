"""Scrubbing an upstream answer to its zone (worker/scrub.py)."""
from __future__ import annotations

import dns.message
import dns.name
import dns.rrset

from worker import scrub, wire


def zone(text: str) -> bytes:
    return dns.name.from_text(text).to_wire().lower()


def reply(name: str, answer=(), authority=(), additional=()) -> bytes:
    msg = dns.message.make_response(dns.message.make_query(name, "A", use_edns=0))
    for section, texts in ((msg.answer, answer), (msg.authority, authority), (msg.additional, additional)):
        for text in texts:
            section.append(dns.rrset.from_text(*text.split()[:1], *text.split()[1:]))
    return msg.to_wire()


def test_zone_membership_is_by_whole_labels():
    assert scrub.in_zone(zone("a.inner.test"), zone("inner.test"))
    assert scrub.in_zone(zone("inner.test"), zone("inner.test"))
    assert not scrub.in_zone(zone("xinner.test"), zone("inner.test"))
    assert not scrub.in_zone(zone("test"), zone("inner.test"))


def test_in_zone_answers_are_left_as_they_are_and_root_is_never_scrubbed():
    data = reply("a.inner.test", answer=["a.inner.test. 60 IN A 192.0.2.1"])
    kept = scrub.scrub(data, zone("inner.test"))
    assert kept[:2] == (data, None)
    assert kept.parsed == wire.parse_response(data)     # handed on: storing it does not parse again
    bad = reply("a.inner.test", additional=["evil.example. 60 IN A 198.51.100.1"])
    assert scrub.scrub(bad, b"\x00")[:2] == (bad, None)


def test_out_of_zone_records_go_and_a_leaving_chain_is_reported():
    data = reply("c.inner.test", answer=["c.inner.test. 60 IN CNAME a.test.", "a.test. 60 IN A 198.51.100.1"],
                 authority=["test. 60 IN NS ns.evil."], additional=["ns.evil. 60 IN A 198.51.100.2"])
    out, follow, parsed = scrub.scrub(data, zone("inner.test"))
    assert parsed is None               # rebuilt: the parse of the original no longer fits
    msg = dns.message.from_wire(out)
    assert [r.name.to_text() for r in msg.answer] == ["c.inner.test."]
    assert not msg.authority and not msg.additional and msg.edns == 0
    assert follow == zone("a.test")
    joined = dns.message.from_wire(scrub.with_target(out, reply("a.test", answer=["a.test. 30 IN A 192.0.2.10"])))
    assert [(r.name.to_text(), r.ttl) for r in joined.answer] == [("c.inner.test.", 60), ("a.test.", 30)]
