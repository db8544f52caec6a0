"""DNS wire format by hand, for the hit path, the miss path and for storing answers.

Bounded: names walked label by label with the RFC 1035 limits (63-byte
labels, 255-byte names), compression pointers only backwards (no loops),
every read checked against the length. dnspython only for rare messages
(local CH answers). worker/_fastwire.c does parse_query in C when built;
this Python is its reference.
"""
from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import NamedTuple, TypeVar

from worker import accel

T = TypeVar("T")
ACCEL, MISS_PATH = accel.find()     # the C accelerator or None, and what runs (logged at start)
# Builds the NamedTuples a query or a miss makes (Question, Record,
# Response) from a tuple: their generated __new__ is a Python-level
# function, 4x the cost per record of calling tuple.__new__ directly.
_new = tuple.__new__

HEADER = struct.Struct(">HBBHHHH")
U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
RR_FIXED = struct.Struct(">HHIH")      # type, class, ttl, rdlength
QUESTION_FIXED = struct.Struct(">HH")   # type, class

TYPE_NS = 2
TYPE_CNAME = 5
TYPE_SOA = 6
TYPE_OPT = 41
OPTION_TCP_KEEPALIVE = 11      # RFC 7828
TYPE_ANY = 255
CLASS_CH = 3

RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5

FLAG_QR = 0x80       # in header byte 2
FLAG_AA = 0x04
FLAG_TC = 0x02
FLAG_RD = 0x01
FLAG_RA = 0x80       # in header byte 3
FLAG_CD = 0x10
EDNS_DO = 0x8000

# A cache key: lower-cased qname wire + qtype + qclass + one byte (DO << 1 | CD).
# The hit path (worker/answer.py) builds it inline; everything else uses the
# helpers below.
KEY_FLAGS = (b"\x00", b"\x01", b"\x02", b"\x03")   # indexed by DO << 1 | CD

MAX_NAME = 255
MAX_LABEL = 63
CLASSIC_UDP_PAYLOAD = 512
OUR_UDP_PAYLOAD = 1232   # the DNS flag day 2020 value, also what we ask upstreams for


class WireError(ValueError):
    """A DNS message could not be parsed."""


class ShortMessage(WireError):
    """The message ends before a field it announces."""


class BadName(WireError):
    """A domain name breaks the label, length or compression rules."""


class BadQuery(WireError):
    """A query is well formed DNS but not a query we can answer."""


class BadEdnsVersion(WireError):
    """The query's OPT record asks for an EDNS version above 0 (RFC 6891: BADVERS)."""

    question_end = 0    # set by parse_query: where the question ends, to echo it
    do = False          # the query's DO bit, echoed in the reply's OPT


def skip_name(data: bytes, off: int, pointers: bool = True) -> int:
    """Offset just past the name at `off`; a compression pointer ends the
    name and must point before the name's start (`pointers` False: none allowed)."""
    start, total, end = off, 0, len(data)
    while True:
        if off >= end:
            raise ShortMessage("name runs past the end")
        length = data[off]
        if length == 0:
            return off + 1
        if length >= 0xC0 and pointers:
            if off + 1 >= end:
                raise ShortMessage("pointer runs past the end")
            if ((length & 0x3F) << 8 | data[off + 1]) >= start:
                raise BadName("compression pointer does not point backwards")
            return off + 2
        if length > MAX_LABEL:
            raise BadName(f"label type 0x{length:02x} unsupported")
        total += length + 1
        if total >= MAX_NAME:
            raise BadName("name longer than 255 bytes")
        off += length + 1


def labels(name: bytes) -> list[bytes]:
    """The labels of an uncompressed, already validated name wire (root included)."""
    out, i = [], 0
    while name[i]:
        out.append(name[i + 1:i + 1 + name[i]])
        i += name[i] + 1
    out.append(b"")
    return out


ROOT_ZONE: tuple[bytes, ...] = (b"",)


def longest_zone(zones: Mapping[tuple[bytes, ...], T], name: bytes, depth: int = MAX_NAME) -> T | None:
    """The value of the longest zone in `zones` that holds `name` (a
    lower-case, uncompressed, valid name wire); zones are keyed by their
    lower-case labels, root label (b"") last, and have at most `depth`
    labels (so longer suffixes are not looked up). None when no zone holds it."""
    if depth == 1:              # only the root can match (the usual one-zone config): no labels to split
        return zones.get(ROOT_ZONE)
    found = labels(name)
    for i in range(max(0, len(found) - depth), len(found)):
        value = zones.get(tuple(found[i:]))
        if value is not None:
            return value
    return None


class Question(NamedTuple):
    """What the hit path needs from a query: the cache key and how to answer.
    (A NamedTuple: it is built once per query, and that is the cheapest.)"""
    key: bytes          # lower-cased qname wire + qtype + qclass + (DO<<1 | CD)
    qname_end: int      # offset just past the question's name
    qtype: int
    qclass: int
    has_opt: bool
    payload: int        # the client's UDP payload size (512 without OPT)
    do: bool
    cd: bool


def parse_query(data: bytes) -> Question:
    """Header and question of a query; raises WireError (FORMERR) or BadQuery."""
    if len(data) < 12:
        raise ShortMessage("shorter than a DNS header")
    _id, b2, b3, qd, an, ns, ar = HEADER.unpack_from(data)
    if b2 & 0x78:
        raise BadQuery("opcode is not QUERY")
    if qd != 1:
        raise WireError(f"qdcount is {qd}, expected 1")
    if b2 & FLAG_TC:
        raise WireError("TC set in a query")
    if an or ns:
        raise WireError("answer or authority records in a query")
    qend = skip_name(data, 12, pointers=False)
    end = len(data)
    if qend + 4 > end:
        raise ShortMessage("question runs past the end")
    qtype, qclass = QUESTION_FIXED.unpack_from(data, qend)
    cd = (b3 & FLAG_CD) != 0
    has_opt, payload, do = False, CLASSIC_UDP_PAYLOAD, False
    if ar or an or ns:
        try:
            has_opt, payload, do = _find_opt(data, qend + 4, an + ns, ar)
        except BadEdnsVersion as e:
            e.question_end = qend + 4
            raise
    key = make_key(data[12:qend], data[qend:qend + 4], do, cd)
    return _new(Question, (key, qend, qtype, qclass, has_opt, payload, do, cd))


parse_query_reference = parse_query
if ACCEL is not None:       # in C; what C refuses, the reference parses again, to raise the right error
    def parse_query(data: bytes, _c=ACCEL.parse_query, _q=Question, _py=parse_query_reference) -> Question:
        return _c(_q, data) or _py(data)


def make_key(qname: bytes, type_class: bytes, do: bool, cd: bool) -> bytes:
    """The cache key of a question: `qname` wire (any case), the 4 bytes of qtype and qclass."""
    return qname.lower() + type_class + KEY_FLAGS[do << 1 | cd]


def key_qname(key: bytes) -> bytes:
    """The lower-cased qname wire of a cache key."""
    return key[:-5]


def key_question(key: bytes) -> bytes:
    """The question section (qname, qtype, qclass) a cache key was made from."""
    return key[:-1]


def question_from_key(key: bytes) -> Question:
    """The Question a cache key was made from, as a query of ours with EDNS
    would carry it (for asking upstream without a client: prefetch)."""
    do, cd = bool(key[-1] & 2), bool(key[-1] & 1)
    qname = key_qname(key)
    qtype, qclass = QUESTION_FIXED.unpack_from(key, len(qname))
    return Question(key, 12 + len(qname), qtype, qclass, do, OUR_UDP_PAYLOAD, do, cd)


def _find_opt(data: bytes, off: int, skip: int, additional: int) -> tuple[bool, int, bool]:
    for _ in range(skip):
        off = _skip_rr(data, off)
    found = None
    for _ in range(additional):
        start = skip_name(data, off)
        if start + 10 > len(data):
            raise ShortMessage("record runs past the end")
        rtype, rclass, ttl, rdlen = RR_FIXED.unpack_from(data, start)
        if rtype == TYPE_OPT:
            if found is not None:
                raise WireError("more than one OPT record")
            if data[off] != 0:
                raise WireError("OPT owner is not the root")
            if ttl >> 16 & 0xFF:
                e = BadEdnsVersion(f"EDNS version {ttl >> 16 & 0xFF}")
                e.do = bool(ttl & EDNS_DO)
                raise e
            found = (rclass if rclass > CLASSIC_UDP_PAYLOAD else CLASSIC_UDP_PAYLOAD, (ttl & EDNS_DO) != 0)
        off = start + 10 + rdlen
        if off > len(data):
            raise ShortMessage("rdata runs past the end")
    if found is None:
        return False, CLASSIC_UDP_PAYLOAD, False
    return True, found[0], found[1]


def _skip_rr(data: bytes, off: int) -> int:
    off = skip_name(data, off)
    if off + 10 > len(data):
        raise ShortMessage("record runs past the end")
    off += 10 + U16.unpack_from(data, off + 8)[0]
    if off > len(data):
        raise ShortMessage("rdata runs past the end")
    return off


def error_reply(data: bytes, rcode: int, qname_end: int = 0, do: bool | None = None) -> bytes | None:
    """A reply carrying only the header (and the question, when `qname_end`
    says where its name ends, and our OPT echoing `do` unless it is None)
    with `rcode`; None when not even the ID is readable."""
    if len(data) < 12:
        return None
    flags = bytes((FLAG_QR | (data[2] & 0x79), FLAG_RA | (data[3] & FLAG_CD) | rcode))
    ar, opt = (b"\x00\x00", b"") if do is None else (b"\x00\x01", OPT_RECORDS[do])
    if qname_end:
        return data[:2] + flags + b"\x00\x01\x00\x00\x00\x00" + ar + data[12:qname_end + 4] + opt
    return data[:2] + flags + b"\x00" * 6 + ar + opt


def query_error_reply(data: bytes, rcode: int) -> bytes | None:
    """error_reply() for a query that parse_query() refused: the question
    and an OPT echoed as far as they can be read (RFC 6891 wants an OPT in
    the reply to a query with one, whatever the rcode)."""
    try:
        if len(data) < 12 or U16.unpack_from(data, 4)[0] != 1:
            return error_reply(data, rcode)
        name_end = skip_name(data, 12, pointers=False)
        if name_end + 4 > len(data):
            return error_reply(data, rcode)
    except WireError:
        return error_reply(data, rcode)
    _qd, an, ns, ar = struct.unpack_from(">HHHH", data, 4)
    try:
        has_opt, _payload, do = _find_opt(data, name_end + 4, an + ns, ar)
    except WireError:
        return error_reply(data, rcode, name_end)
    return error_reply(data, rcode, name_end, do if has_opt else None)


def badvers_reply(data: bytes, question_end: int, do: bool = False) -> bytes:
    """BADVERS (extended RCODE 16) with the question echoed and our OPT with
    version 0, the highest we speak, and the query's DO bit."""
    flags = bytes((FLAG_QR | (data[2] & 0x79), FLAG_RA | (data[3] & FLAG_CD)))
    opt = b"\x00" + RR_FIXED.pack(TYPE_OPT, OUR_UDP_PAYLOAD, 16 >> 4 << 24 | (EDNS_DO if do else 0), 0)
    return data[:2] + flags + b"\x00\x01\x00\x00\x00\x00\x00\x01" + data[12:question_end] + opt


class Record(NamedTuple):
    """Where one resource record sits in a message (for TTL patching).
    (A NamedTuple: a miss builds one per record, and that is the cheapest.)"""
    section: int         # 0 answer, 1 authority, 2 additional
    rtype: int
    start: int           # offset of the owner name
    ttl_offset: int
    ttl: int
    end: int             # offset past the rdata


class Response(NamedTuple):
    """A parsed upstream response: its header and where its records are."""
    flags: int
    rcode: int
    qname: bytes         # lower-cased
    qtype: int
    qclass: int
    question_end: int    # offset past qtype/qclass
    records: tuple[Record, ...]


def parse_response(data: bytes) -> Response:
    """Walk a whole response, bounded; raises WireError. The question name
    must be uncompressed: at offset 12 there is nothing for a pointer to
    point back to but the header."""
    size = len(data)
    if size < 12:
        raise ShortMessage("shorter than a DNS header")
    _id, b2, b3, qd, an, ns, ar = HEADER.unpack_from(data)
    if qd != 1:
        raise WireError(f"qdcount is {qd}, expected 1")
    name_end = skip_name(data, 12, pointers=False)
    question_end = name_end + 4
    if question_end > size:
        raise ShortMessage("question runs past the end")
    qtype, qclass = QUESTION_FIXED.unpack_from(data, name_end)
    records = []
    append, unpack = records.append, RR_FIXED.unpack_from
    off = question_end
    for section, count in ((0, an), (1, ns), (2, ar)):
        for _ in range(count):
            start = off
            off = skip_name(data, off)
            if off + 10 > size:
                raise ShortMessage("record runs past the end")
            rtype, _cls, ttl, rdlen = unpack(data, off)
            end = off + 10 + rdlen
            if end > size:
                raise ShortMessage("rdata runs past the end")
            append(_new(Record, (section, rtype, start, off + 4, ttl, end)))
            off = end
    return _new(Response, (b2 << 8 | b3, b3 & 0x0F, data[12:name_end].lower(), qtype, qclass, question_end,
                           tuple(records)))


def soa_minimum(data: bytes, rec: Record) -> int:
    """The MINIMUM field of the SOA record `rec` (the last 4 bytes of its rdata)."""
    if rec.end - 4 < rec.ttl_offset + 6:
        raise ShortMessage("SOA rdata too short")
    return U32.unpack_from(data, rec.end - 4)[0]


def asks_tcp_keepalive(query: bytes) -> bool:
    """Whether a query's OPT carries edns-tcp-keepalive (RFC 7828); False
    for anything that does not parse."""
    try:
        if len(query) < 12 or U16.unpack_from(query, 10)[0] == 0:
            return False
        off = skip_name(query, 12, pointers=False) + 4
        _qd, an, ns, ar = struct.unpack_from(">HHHH", query, 4)
        for _ in range(an + ns):
            off = _skip_rr(query, off)
        for _ in range(ar):
            start = skip_name(query, off)
            if start + 10 > len(query):
                return False
            rtype, _cls, _ttl, rdlen = RR_FIXED.unpack_from(query, start)
            off = start + 10 + rdlen
            if rtype == TYPE_OPT:
                return _has_option(query[start + 10:off], OPTION_TCP_KEEPALIVE)
    except WireError:
        return False
    return False


def _has_option(rdata: bytes, code: int) -> bool:
    i = 0
    while i + 4 <= len(rdata):
        opt, length = struct.unpack_from(">HH", rdata, i)
        if opt == code:
            return True
        i += 4 + length
    return False


def with_keepalive_close(reply: bytes) -> bytes:
    """`reply` with edns-tcp-keepalive timeout 0 added to its OPT, the
    server's "close this connection now" (RFC 7828 section 3.3.2). Our
    replies' OPT is the last record with empty rdata; one without is kept as it is."""
    if len(reply) < 23 or reply[-11] != 0 or reply[-10:-8] != b"\x00\x29" or reply[-2:] != b"\x00\x00":
        return reply
    return reply[:-2] + b"\x00\x06" + struct.pack(">HHH", OPTION_TCP_KEEPALIVE, 2, 0)


OPT_RECORDS = tuple(       # our OPT pseudo-record (root owner, our payload size), indexed by DO
    b"\x00" + RR_FIXED.pack(TYPE_OPT, OUR_UDP_PAYLOAD, EDNS_DO if do else 0, 0) for do in (0, 1))
