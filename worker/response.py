"""From an upstream response to a cache entry: what kind of answer it is
(ResponseType, as CoreDNS's response.Typify), how long it may be kept and
with which TTLs (lifetime_and_ttls), and the Entry the cache stores
(entry_from_response), with the zone's [[header]] rule applied."""
from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from types import MappingProxyType

from worker import wire
from worker.cache import Entry
from worker.config import CacheConfig, HeaderRule

# [[header]] flag name -> (header byte, bit); read-only.
_FLAG_BITS = MappingProxyType({"aa": (2, wire.FLAG_AA), "rd": (2, wire.FLAG_RD), "ra": (3, wire.FLAG_RA)})


class ResponseType(Enum):
    POSITIVE = "positive"   # NOERROR with records of the asked type (or a CNAME/ANY question answered)
    NXDOMAIN = "nxdomain"   # the name does not exist (RFC 2308)
    NODATA = "nodata"       # NOERROR, nothing of the asked type: no answer, or a CNAME chain ending elsewhere
    REFERRAL = "referral"   # NOERROR, no answer, NS records and no SOA in authority: a delegation
    SERVFAIL = "servfail"   # SERVFAIL or REFUSED: the server could not or would not answer
    OTHER = "other"         # any other rcode, or truncated: never cached


_POSITIVE = ResponseType.POSITIVE     # an alias: Enum member lookups cost ~0.1 us in 3.11


def classify(resp: wire.Response, records: Sequence[wire.Record]) -> ResponseType:
    """The type of `resp`, whose records without its OPT are `records`."""
    rcode = resp.rcode
    if rcode == wire.RCODE_SERVFAIL or rcode == wire.RCODE_REFUSED:
        return ResponseType.SERVFAIL
    if (rcode != wire.RCODE_NOERROR and rcode != wire.RCODE_NXDOMAIN) or resp.flags & (wire.FLAG_TC << 8):
        return ResponseType.OTHER
    if rcode == wire.RCODE_NXDOMAIN:
        return ResponseType.NXDOMAIN
    # One pass, in section order (answers first): a miss classifies every response.
    qtype = resp.qtype
    any_type = qtype == wire.TYPE_CNAME or qtype == wire.TYPE_ANY
    answered = has_ns = has_soa = False
    for record in records:
        section = record.section
        if section == 0:
            if any_type or record.rtype == qtype:
                return _POSITIVE
            answered = True
        elif section == 1:
            rtype = record.rtype
            if rtype == wire.TYPE_NS:
                has_ns = True
            elif rtype == wire.TYPE_SOA:
                has_soa = True
    # NODATA includes a CNAME chain that ends without a record of the asked
    # type (an AAAA query for a CDN name, say): RFC 2308 negative caching.
    if not answered and has_ns and not has_soa:
        return ResponseType.REFERRAL
    return ResponseType.NODATA


def _flags(template: bytearray, rule: HeaderRule | None) -> bool:
    """Apply the zone's [[header]] rule; answers from a cache are not
    authoritative unless a rule says so. Returns whether RD mirrors the client."""
    template[2] &= ~wire.FLAG_AA & 0xFF
    if rule is None:
        return True
    for name in rule.set:
        byte, bit = _FLAG_BITS[name]
        template[byte] |= bit
    for name in rule.clear:
        byte, bit = _FLAG_BITS[name]
        template[byte] &= ~bit & 0xFF
    return _mirrors_rd(rule)


def _mirrors_rd(rule: HeaderRule | None) -> bool:
    """Whether answers show the client's RD bit: unless the rule sets or clears it."""
    return rule is None or ("rd" not in rule.set and "rd" not in rule.clear)


def _clamped(ttls: list[int], low: int, high: int) -> list[int]:
    """Every TTL within [min_ttl, max_ttl]."""
    return [low if t < low else high if t > high else t for t in ttls]


def lifetime_and_ttls(resp: wire.Response, records: Sequence[wire.Record], data: bytes,
                      policy: CacheConfig) -> tuple[float, list[int]]:
    """How long to cache this response and the TTL to show for each of
    `records` (the response's records without its OPT).

    Positive answers: every TTL clamped to [min_ttl, max_ttl], lifetime the
    smallest. Negative answers (RFC 2308): min(SOA TTL, SOA MINIMUM,
    negative_max_ttl), shown as the SOA's TTL. SERVFAIL/REFUSED: servfail_ttl.
    Anything else, or a negative answer without SOA: not cached (lifetime 0).
    """
    kind = classify(resp, records)
    if kind is _POSITIVE:          # every miss that resolves: no Enum lookups on the way
        low, high = policy.min_ttl, policy.max_ttl
        ttls = [r.ttl for r in records]
        lowest = min(ttls)          # a positive answer has a record
        if lowest < low or max(ttls) > high:        # rare: most TTLs need no clamp
            ttls = _clamped(ttls, low, high)
            lowest = min(ttls)
        return float(lowest), ttls
    if kind is ResponseType.SERVFAIL:
        return float(policy.servfail_ttl), [min(r.ttl, policy.servfail_ttl) for r in records]
    if kind is ResponseType.OTHER:
        return 0.0, [r.ttl for r in records]
    # NXDOMAIN, NODATA, REFERRAL
    answers = [r for r in records if r.section == 0]
    soa = next((r for r in records if r.section == 1 and r.rtype == wire.TYPE_SOA), None)
    if soa is None:
        if kind is ResponseType.NODATA and answers and all(r.rtype == wire.TYPE_CNAME for r in answers):
            # A CNAME chain alone (a forwarder that does not chase it out
            # of its zone): cached for the chain's TTLs, as unbound does.
            ttls = _clamped([r.ttl for r in records], policy.min_ttl, policy.max_ttl)
            return float(min(ttls[i] for i, r in enumerate(records) if r.section == 0)), ttls
        return 0.0, [r.ttl for r in records]
    # A chain's records must not outlive their own TTLs either.
    lifetime = min(soa.ttl, wire.soa_minimum(data, soa), policy.negative_max_ttl,
                   *(r.ttl for r in answers))
    return float(lifetime), [min(r.ttl, lifetime) for r in records]


def entry_from_response(data: bytes, now: float, policy: CacheConfig,
                        rule: HeaderRule | None, do: bool, parsed: wire.Response | None = None) -> Entry:
    """An Entry for upstream response `data` (raises wire.WireError), or
    for its `parsed` form when the caller has it. Its lifetime is 0 when it
    must not be cached; the caller checks `expires`."""
    if _entry_parts is not None:
        # In C (worker/_fastwire.c) where it can; `parsed` is only a shortcut
        # for the Python, which a C walk of `data` outruns.
        bits = _NO_RULE if rule is None else _rule_bits(rule)
        parts = _entry_parts(data, policy.min_ttl, policy.max_ttl, policy.negative_max_ttl,
                             policy.servfail_ttl, *bits)
        if parts is not None:
            template, name_end, offsets, ttls, lifetime, rcode = parts
            return Entry(template, name_end, offsets, ttls, now, lifetime, rcode, _mirrors_rd(rule), do,
                         rendered=True)
    return entry_from_response_reference(data, now, policy, rule, do, parsed)


# The C accelerator's entry_parts(), or None: then the reference below does it all.
_entry_parts = wire.ACCEL.entry_parts if wire.ACCEL is not None else None
_NO_RULE = (0, 0, 0, 0)


def _rule_bits(rule: HeaderRule) -> tuple[int, int, int, int]:
    """A [[header]] rule as the bits it sets and clears in header bytes 2
    and 3: (byte 2 set, byte 2 clear, byte 3 set, byte 3 clear)."""
    bits = [0, 0, 0, 0]
    for names, at in ((rule.set, 0), (rule.clear, 1)):
        for name in names:
            byte, bit = _FLAG_BITS[name]
            bits[(byte - 2) * 2 + at] |= bit
    return bits[0], bits[1], bits[2], bits[3]


def entry_from_response_reference(data: bytes, now: float, policy: CacheConfig,
                                  rule: HeaderRule | None, do: bool, parsed: wire.Response | None = None) -> Entry:
    """entry_from_response() in Python: the reference the C accelerator
    follows, and what runs where it is not built or refuses `data`."""
    resp = wire.parse_response(data) if parsed is None else parsed
    records = resp.records
    template = bytearray(data)
    if records and records[-1].rtype == wire.TYPE_OPT:
        # Replies get our own OPT per client; the upstream's is dropped. It is
        # the last record in practice; only then can it be cut without
        # breaking a compression pointer that might point into it.
        del template[records[-1].start:]
        wire.U16.pack_into(template, 10, wire.U16.unpack_from(template, 10)[0] - 1)
        records = records[:-1]
    lifetime, ttls = lifetime_and_ttls(resp, records, data, policy)
    mirror_rd = _flags(template, rule)
    # The question as we asked it: lower case (parse_response() saw it uncompressed).
    name_end = resp.question_end - 4
    template[12:name_end] = resp.qname
    pack = wire.U32.pack_into
    offsets = []                        # one pass: every miss stores its answer
    for record, ttl in zip(records, ttls):
        if record.rtype == wire.TYPE_OPT:
            raise wire.WireError("OPT record is not the last record")
        offsets.append(record.ttl_offset)
        if ttl != record.ttl:           # clamped: the stored form shows what clients are told
            pack(template, record.ttl_offset, ttl)
    return Entry(bytes(template), name_end, tuple(offsets), tuple(ttls),
                 now, lifetime, resp.rcode, mirror_rd, do, rendered=True)
