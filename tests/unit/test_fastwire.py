"""The C accelerator (worker/_fastwire.c) against the Python reference it
speeds up: on every message hypothesis makes, well formed or broken, it
gives the reference's result or declines (None), and it declines exactly
where the reference raises."""
from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from worker import wire
from worker.config import CacheConfig, HeaderRule
from worker.response import _rule_bits, entry_from_response, entry_from_response_reference

fast = wire.ACCEL


def test_the_accelerator_is_built_and_used():
    """pip install builds it where a C compiler is (CI installs one); a
    checkout that silently fell back to Python would be 8x slower per miss."""
    if os.environ.get("TWINDNS_PURE_PYTHON"):
        pytest.skip("TWINDNS_PURE_PYTHON is set: the reference runs on purpose")
    assert fast is not None, "worker._fastwire is not built (pip install -e . with gcc and Python headers)"
    assert wire.parse_query.__defaults__[0] is fast.parse_query


needs_fast = pytest.mark.skipif(fast is None, reason="worker._fastwire is not built")

TYPES = [1, 2, 5, 6, 28, 41, 255]


def _name(labels: list[bytes], upper: list[bool]) -> bytes:
    out = b""
    for label, up in zip(labels, upper):
        out += bytes((len(label),)) + (label.upper() if up else label)
    return out + b"\x00"


label = st.binary(min_size=1, max_size=12).map(lambda b: bytes(97 + c % 26 for c in b))
names = st.builds(_name, st.lists(label, max_size=4), st.lists(st.booleans(), min_size=4, max_size=4))


@st.composite
def records(draw, section_owner_pointer: bool = True) -> bytes:
    owner = draw(st.sampled_from([b"\xc0\x0c", b"\x00"]) if section_owner_pointer else st.just(b"\x00"))
    owner = draw(st.one_of(st.just(owner), names))
    rtype = draw(st.sampled_from(TYPES))
    rclass = draw(st.sampled_from([1, 512, 1232, 4096]))
    ttl = draw(st.one_of(st.integers(0, 7200), st.integers(0, 2**32 - 1)))
    if rtype == wire.TYPE_SOA:
        rdata = b"\x00\x00" + struct.pack(">IIIII", 1, 2, 3, 4, draw(st.integers(0, 2**32 - 1)))
        rdata = rdata[:draw(st.integers(0, len(rdata)))] if draw(st.booleans()) and draw(st.booleans()) else rdata
    else:
        rdata = draw(st.binary(max_size=8))
    return owner + struct.pack(">HHIH", rtype, rclass, ttl, len(rdata)) + rdata


@st.composite
def messages(draw, query: bool) -> bytes:
    """Messages near the valid ones: the shapes upstreams send (an answer,
    a CNAME chain, NXDOMAIN or NODATA with an SOA, a referral, an OPT
    last), then counts, flags, lengths and bytes disturbed now and then."""
    qtype = draw(st.sampled_from(TYPES))
    shape = draw(st.sampled_from(["any", "answer", "chain", "negative", "referral"]))
    if shape == "any":
        secs = [draw(st.lists(records(), max_size=3)) for _ in range(3)]
    else:
        answer = [_rr(draw, qtype)] if shape == "answer" else []
        if shape in ("answer", "chain"):
            answer = [_rr(draw, wire.TYPE_CNAME) for _ in range(draw(st.integers(0, 2)))] + answer
        authority = []
        if shape == "negative" or shape == "chain" and draw(st.booleans()):
            authority = [_rr(draw, wire.TYPE_SOA)] + ([_rr(draw, wire.TYPE_NS)] if draw(st.booleans()) else [])
        elif shape == "referral":
            authority = [_rr(draw, wire.TYPE_NS) for _ in range(draw(st.integers(1, 2)))]
        secs = [answer, authority, draw(st.lists(records(), max_size=2))]
    if draw(st.booleans()):
        secs[2].append(b"\x00" + struct.pack(">HHIH", wire.TYPE_OPT, 1232, draw(st.sampled_from([0, 0x8000])), 0))
    counts = [len(s) for s in secs]
    if draw(st.integers(0, 5)) == 0:
        counts = [draw(st.integers(0, 5)) for _ in range(3)]
    b2 = draw(st.sampled_from([0x01, 0x81, 0x85, 0x83, 0x09, 0x79])) if not query else \
        draw(st.sampled_from([0x01, 0x00, 0x03, 0x09, 0x81]))
    b3 = draw(st.sampled_from([0x80, 0x83, 0x82, 0x85, 0x81, 0x90])) if draw(st.booleans()) else draw(st.integers(0, 255))
    qd = 1 if draw(st.integers(0, 9)) else draw(st.integers(0, 3))
    head = struct.pack(">HBBHHHH", 0x1234, b2, b3, qd, *counts)
    body = draw(names) + struct.pack(">HH", qtype, 1) + b"".join(b"".join(s) for s in secs)
    data = bytearray(head + body)
    for _ in range(draw(st.integers(0, 2)) if draw(st.integers(0, 3)) == 0 else 0):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    if draw(st.integers(0, 7)) == 0:
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)


def _rr(draw, rtype: int) -> bytes:
    """A record of `rtype` owned by the question's name (a pointer to it)."""
    ttl = draw(st.one_of(st.integers(0, 7200), st.integers(0, 2**32 - 1)))
    if rtype == wire.TYPE_SOA:
        rdata = b"\x00\x00" + struct.pack(">IIIII", 1, 2, 3, 4, draw(st.integers(0, 7200)))
    else:
        rdata = draw(st.binary(min_size=4, max_size=4))
    return b"\xc0\x0c" + struct.pack(">HHIH", rtype, 1, ttl, len(rdata)) + rdata


def _query(opt_ttl: int = 0, payload: int = 1232) -> bytes:
    return (b"\x00\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01\x01A\x04TeSt\x00\x00\x01\x00\x01"
            + b"\x00" + struct.pack(">HHIH", 41, payload, opt_ttl, 0))


@needs_fast
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages(query=True))
@example(_query())
@example(_query(opt_ttl=0x8000, payload=100))
@example(_query(opt_ttl=0x00010000))                 # EDNS version 1: BADVERS from the reference
@example(_query()[:-3])
@example(_query().replace(b"\x01A", b"\xc0\x0c"))    # a pointer in a question
def test_parse_query_agrees_with_the_reference(data):
    got = fast.parse_query(wire.Question, data)
    try:
        want = wire.parse_query_reference(data)
    except wire.WireError:
        assert got is None
        return
    assert got is not None, "a query the reference accepts is declined"
    assert type(got) is wire.Question
    assert tuple(got) == tuple(want)
    assert [type(x) for x in got] == [type(x) for x in want]


def test_parse_query_keys_are_lower_case_with_flags():
    if fast is None:
        pytest.skip("worker._fastwire is not built")
    q = fast.parse_query(wire.Question, _query(opt_ttl=0x8000))
    assert q.key == b"\x01a\x04test\x00\x00\x01\x00\x01\x02"
    assert (q.has_opt, q.payload, q.do, q.cd) == (True, 1232, True, False)


POLICIES = st.builds(CacheConfig, min_ttl=st.integers(0, 600), max_ttl=st.integers(600, 2**31),
                     negative_max_ttl=st.integers(0, 7200), servfail_ttl=st.integers(0, 60))
RULES = st.one_of(st.none(), st.builds(HeaderRule, zone=st.just("."),
                                       set=st.frozensets(st.sampled_from(["aa", "ra", "rd"])),
                                       clear=st.frozensets(st.sampled_from(["aa", "ra", "rd"]))))


def _parts(data: bytes, policy: CacheConfig, rule: HeaderRule | None):
    """What entry_from_response() asks of the C."""
    return fast.entry_parts(data, policy.min_ttl, policy.max_ttl, policy.negative_max_ttl, policy.servfail_ttl,
                            *(_rule_bits(rule) if rule else (0, 0, 0, 0)))


def _fields(entry) -> tuple:
    return (entry.plain, entry.qname_end, entry.ttl_offsets, entry.ttls, entry.stored_at, entry.expires,
            entry.rcode, entry.mirror_rd, entry.do, entry.qtype)


@needs_fast
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages(query=False), POLICIES, RULES, st.booleans())
def test_entries_agree_with_the_reference(data, policy, rule, do):
    try:
        want = entry_from_response_reference(data, 100.0, policy, rule, do)
    except Exception:  # noqa: BLE001 - whatever the reference raises, the C must decline
        assert _parts(data, policy, rule) is None
        return
    got = entry_from_response(data, 100.0, policy, rule, do)
    assert _fields(got) == _fields(want)
    assert type(got.expires) is type(want.expires)


@needs_fast
def test_entry_parts_accepts_the_common_answers():
    """The shapes every miss has (a positive answer with OPT, a negative one
    with SOA) are done in C, not declined to the Python."""
    from test_cache import SOA, response
    import dns.rcode
    policy = CacheConfig()
    for data in (response(answers=["a.test. 300 IN A 192.0.2.1"]),
                 response(rcode=dns.rcode.NXDOMAIN, authority=[SOA])):
        assert _parts(data, policy, None) is not None


@needs_fast
@settings(max_examples=1500, deadline=None)
@given(names, st.binary(min_size=0, max_size=300), st.integers(0, 300))
def test_mix_case_agrees_with_the_reference(name, noise, at):
    from worker.upstream_query import LETTER_BITS
    got = fast.mix_case(name.lower(), noise, at)
    if at + len(name) > len(noise):
        assert got is None
        return
    lowered = name.lower()
    flips = int.from_bytes(lowered.translate(LETTER_BITS)) & int.from_bytes(noise[at:at + len(name)])
    assert got == (int.from_bytes(lowered) ^ flips).to_bytes(len(name))


@needs_fast
@settings(max_examples=2000, deadline=None)
@given(names, st.sampled_from([1, 28]), st.booleans(), messages(query=False), st.integers(0, 5), st.data())
def test_the_answer_check_agrees_with_the_reference(name, qtype, case, other, how, data):
    from worker.upstream_query import RandomCase, Rejected, UpstreamQuery
    query = UpstreamQuery(name, qtype, 1, False, False)
    sent = RandomCase().mix(query.qname) if case else None
    reply = bytearray(b"\x12\x34\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00" + (sent or query.qname)
                      + struct.pack(">HH", qtype, 1))
    if how == 1:                                    # one byte of it changed
        at = data.draw(st.integers(0, len(reply) - 1))
        reply[at] = data.draw(st.integers(0, 255))
    elif how == 2:                                  # cut short
        reply = reply[:data.draw(st.integers(0, len(reply)))]
    elif how == 3:
        reply = bytearray(other)
    elif how == 4:                                  # the name in other letter case
        reply[12:12 + len(query.qname)] = query.qname.upper()
    try:
        query.check_reference(bytes(reply), 0x1234, sent)
        want = True
    except Rejected:
        want = False
    assert fast.answers(bytes(reply), 0x1234, query.qname, query.type_class, sent) is want


@needs_fast
@settings(max_examples=1500, deadline=None)
@given(names, st.sampled_from(TYPES), st.booleans(), st.booleans(), st.integers(-2, 0x10001), st.booleans())
def test_the_upstream_query_agrees_with_the_reference(name, qtype, do, cd, query_id, mixed):
    """UpstreamQuery.wire() built in C is the reference's bytes, and a query
    dnspython reads back as our question, ID, CD and DO."""
    import dns.flags
    import dns.message
    from worker import upstream_query
    query = upstream_query.UpstreamQuery(name, qtype, 1, do, cd)
    sent = upstream_query.RandomCase().mix(query.qname) if mixed else None
    got = fast.query_wire(query_id, query.head, sent or query.qname, query.type_class, query.opt)
    if not 0 <= query_id <= 0xFFFF:
        assert got is None
        return
    assert got == struct.pack(">H", query_id) + query.head + (sent or query.qname) + query.type_class + query.opt
    assert query.wire(query_id, sent) == got
    parsed = dns.message.from_wire(got)
    assert parsed.id == query_id and parsed.question[0].rdtype == qtype
    assert parsed.question[0].name.to_wire() == (sent or query.qname)
    assert bool(parsed.flags & dns.flags.CD) is cd and bool(parsed.ednsflags & dns.flags.DO) is do


@needs_fast
@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=80), st.binary(max_size=120), st.integers(-3, 130))
@example(bytes(range(40)), bytes(range(100, 160)), 20)      # every byte says where it came from
@example(bytes(range(40)), bytes(range(100, 160)), 40)
@example(bytes(range(40)), bytes(range(100, 160)), 12)
def test_the_reply_splice_agrees_with_the_reference(data, body, qname_end):
    got = fast.splice(data, body, qname_end)
    if not (12 <= qname_end <= len(data) and qname_end <= len(body)):
        assert got is None
        return
    assert got == data[:2] + body[2:12] + data[12:qname_end] + body[qname_end:]


@needs_fast
@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=60), st.sampled_from([False, True]), st.integers(0, 0xFFFF))
@example(bytes(range(30)), True, 0xFFFE)
@example(bytes(range(30)), False, 0xFFFF)                   # ARCOUNT full: the reference raises
def test_the_opt_form_agrees_with_the_reference(plain, do, arcount):
    if len(plain) >= 12:
        plain = plain[:10] + struct.pack(">H", arcount) + plain[12:]
    opt = wire.OPT_RECORDS[do]
    got = fast.with_opt(plain, opt)
    try:
        want = b"".join((plain[:10], wire.U16.pack(wire.U16.unpack_from(plain, 10)[0] + 1), plain[12:], opt))
    except struct.error:
        want = None
    assert got == want


def _key_like(labels: list[bytes], tail: bytes) -> bytes:
    return b"".join(bytes((len(label) & 0xFF,)) + label for label in labels) + b"\x00" + tail


@needs_fast
@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.builds(_key_like, st.lists(st.binary(min_size=1, max_size=70), max_size=6),
                           st.binary(min_size=3, max_size=6))))
@example(_key_like([b"a" * 63] * 3 + [b"a" * 61], b"\x00\x01\x00\x01\x03"))     # 255 bytes: the longest name
@example(_key_like([b"a" * 63] * 3 + [b"a" * 62], b"\x00\x01\x00\x01\x03"))     # 256 bytes
@example(_key_like([b"a" * 64], b"\x00\x01\x00\x01\x00"))                      # a 64-byte label
@example(_key_like([b"ab"], b"\x00\x01\x00\x01\x04"))                          # flags past 3
@example(b"\x00\x00\x01\x00\x01\x00")                                          # the root
def test_the_key_check_agrees_with_the_reference(key):
    from worker.peer import valid_key_reference
    assert fast.valid_key(key) is valid_key_reference(key)


def test_the_worker_says_which_miss_path_it_runs_and_why(monkeypatch):
    from worker import accel
    monkeypatch.setenv("TWINDNS_PURE_PYTHON", "1")
    assert accel.find() == (None, "pure Python (TWINDNS_PURE_PYTHON is set)")
    monkeypatch.delenv("TWINDNS_PURE_PYTHON")
    if fast is None:
        assert accel.find()[0] is None and "not built" in accel.find()[1]
        return
    assert accel.find() == (fast, "C accelerator")
    # Built from another version of the source than the checkout's: not used.
    monkeypatch.setattr(fast, "SOURCE_SHA256", "0" * 64)
    module, why = accel.find()
    assert module is None and "changed since it was built" in why


@needs_fast
def test_cached_entries_are_out_of_the_cyclic_collector():
    """An Entry is never in a reference cycle, so no collection walks it: a
    collection's cost must not grow with the cache (a young one walked every
    entry cached since the last, ~1-2 ms of the event loop; an older one the
    whole cache dict, ~5 ms per 30,000 entries). Its TTL tuples from the C
    parse are out too, and the entries still serve after a collection."""
    import gc

    import dns.message
    import dns.rrset

    from worker.cache import Cache
    reply = dns.message.make_response(dns.message.make_query("a.test.", "A"))
    reply.answer.append(dns.rrset.from_text("a.test.", 300, "IN", "A", "192.0.2.1"))
    cache = Cache(1000)
    entries = [entry_from_response(reply.to_wire(), 0.0, CacheConfig(), None, False) for _ in range(500)]
    for i, entry in enumerate(entries):
        cache.put(b"k%d" % i, entry)
    assert not any(gc.is_tracked(e) or gc.is_tracked(e.ttls) or gc.is_tracked(e.ttl_offsets) for e in entries)
    # Nor the cache's own containers, which an insertion tracks again.
    assert not gc.is_tracked(cache.entries) and not any(map(gc.is_tracked, cache.expiry.values()))
    tracked = {id(o) for o in gc.get_objects()}
    assert not any(id(e) in tracked for e in entries) and id(cache.entries) not in tracked
    gc.collect()
    assert all(cache.get(b"k%d" % i, 1.0) is entries[i] for i in range(500))
