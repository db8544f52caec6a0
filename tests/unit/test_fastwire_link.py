"""The C accelerator's peer-link pieces (worker/_fastwire.c record() and
told_frames()) against the Python they replace: on every input hypothesis
makes they give the reference's bytes or frames, or decline (None) exactly
where the reference raises or would look at the datagram frame by frame."""
from __future__ import annotations

import struct
import types

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from worker import handoff, wire
from worker.handoff import _FIXED, CacheStreamError, encode_entry, record_key
from worker.peer import TOLD, valid_key_reference

FIXED_SIZE = _FIXED.size
fast = wire.ACCEL
pytestmark = pytest.mark.skipif(fast is None, reason="worker._fastwire is not built")

u16ish = st.integers(-2, 0x10001)
entries = st.builds(
    types.SimpleNamespace,
    template=st.binary(max_size=120), qname_end=u16ish, rcode=st.integers(-1, 0x101),
    mirror_rd=st.booleans(), do=st.booleans(),
    stored_at=st.one_of(st.floats(), st.integers(-10, 10**6).map(float)),
    expires=st.one_of(st.floats(), st.integers(-10, 10**6).map(float)),
    ttl_pairs=st.lists(st.tuples(u16ish, st.integers(-1, 2**32 + 1)), max_size=5))


def reference(key: bytes, entry, prefix: bytes, monkeypatch) -> bytes | None:
    monkeypatch.setattr(handoff, "_record", None)
    try:
        return encode_entry(key, entry, prefix)
    except struct.error:
        return None
    finally:
        monkeypatch.undo()


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=80), entries, st.sampled_from([b"", TOLD]))
def test_record_agrees_with_encode_entry(monkeypatch, key, entry, prefix):
    entry.ttl_offsets = tuple(o for o, _ in entry.ttl_pairs)
    entry.ttls = tuple(t for _, t in entry.ttl_pairs)
    expected = reference(key, entry, prefix, monkeypatch)
    flags = (1 if entry.mirror_rd else 0) | (2 if entry.do else 0)
    direct = fast.record(prefix, key, entry.template, entry.qname_end, entry.rcode, flags, entry.stored_at,
                         entry.expires, entry.ttl_offsets, entry.ttls)
    assert direct == expected, "the same bytes, or None exactly where struct refuses"
    if expected is not None:
        assert encode_entry(key, entry, prefix) == expected      # through the C
    else:
        with pytest.raises(struct.error):
            encode_entry(key, entry, prefix)                    # the C declines, the reference says why


def told_frames_reference(data: bytes) -> list[tuple[bytes, bytes]] | None:
    """What worker/peer.py's frame loop hands to on_told for a datagram of
    told answers only; None for any other datagram."""
    frames, at = [], 0
    while at < len(data):
        if len(data) - at < 5 or data[at:at + 1] != TOLD:
            return None
        length = int.from_bytes(data[at + 1:at + 5], "big")
        body = data[at + 5:at + 5 + length]
        if len(body) != length:
            return None
        try:
            key = record_key(body)
        except CacheStreamError:
            return None
        if not valid_key_reference(key):
            return None
        frames.append((key, body))
        at += 5 + length
    return frames or None


keys = st.one_of(
    st.lists(st.binary(min_size=1, max_size=8).map(lambda b: bytes(97 + c % 26 for c in b)), max_size=3)
    .map(lambda labels: b"".join(bytes((len(x),)) + x for x in labels) + b"\x00\x00\x01\x00\x01\x00"),
    st.binary(max_size=12))


@st.composite
def frames(draw) -> bytes:
    kind = draw(st.sampled_from([TOLD, TOLD, TOLD, b"?", b"R", b"H"]))
    if draw(st.booleans()):
        key = draw(keys)
        body = struct.pack("!H", len(key)) + draw(st.binary(min_size=FIXED_SIZE - 2, max_size=FIXED_SIZE - 2)) \
            + key + draw(st.binary(max_size=20))
        if draw(st.integers(0, 9)) == 0:
            body = struct.pack("!H", draw(st.integers(0, 0xFFFF))) + body[2:]     # a key length that lies
    else:
        body = draw(st.binary(max_size=40))
    length = len(body) if draw(st.integers(0, 9)) else draw(st.integers(0, 2**32 - 1))
    return kind + struct.pack("!I", length) + body


@settings(max_examples=3000, deadline=None)
@given(st.lists(frames(), max_size=5), st.integers(0, 3))
def test_told_frames_agree_with_the_frame_loop(parts, cut):
    data = b"".join(parts)
    data = data[:len(data) - cut] if cut and data else data
    assert fast.told_frames(data) == told_frames_reference(data)


def test_told_frames_takes_what_a_link_sends():
    """The frames PeerLink.tell() builds, several to a datagram, come back as (key, record)."""
    q = wire.parse_query(b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x04test\x00\x00\x01\x00\x01")
    entry = types.SimpleNamespace(template=b"T" * 40, qname_end=20, rcode=0, mirror_rd=False, do=False,
                                  stored_at=1.5, expires=61.5, ttl_offsets=(24,), ttls=(60,))
    told = [encode_entry(q.key, entry, TOLD) for _ in range(3)]
    got = fast.told_frames(b"".join(told))
    assert got == [(q.key, frame[5:]) for frame in told]
    assert fast.told_frames(b"".join(told) + b"?" + struct.pack("!I", len(q.key)) + q.key) is None


@pytest.mark.parametrize("field", ["qname_end", "offset", "ttl"])
def test_record_declines_numbers_past_a_machine_word_as_struct_refuses_them(field):
    entry = types.SimpleNamespace(template=b"T" * 20, qname_end=15, rcode=0, mirror_rd=False, do=False,
                                  stored_at=1.0, expires=2.0, ttl_offsets=(16,), ttls=(1,))
    huge = 2**70
    if field == "qname_end":
        entry.qname_end = huge
    elif field == "offset":
        entry.ttl_offsets = (huge,)
    else:
        entry.ttls = (huge,)
    assert fast.record(b"", b"k", entry.template, entry.qname_end, 0, 0, 1.0, 2.0, entry.ttl_offsets,
                       entry.ttls) is None
    with pytest.raises(struct.error):
        encode_entry(b"k", entry)


def test_the_c_knows_the_record_layout_handoff_writes():
    """handoff.py uses record() and told_frames() only when the C's fixed part
    is its own: a layout changed on one side alone would silently fall back
    to the Python, so it fails here instead."""
    from worker import handoff
    assert fast.RECORD_FIXED == _FIXED.size
    assert handoff._record is fast.record and handoff.told_frames is fast.told_frames
