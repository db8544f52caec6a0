"""Scrubbing an upstream's answer to what that upstream may speak for, as
unbound's scrubber does for a forward zone: records whose owner lies outside
the zone the servers were asked for are removed (authority and additional
records about other zones; a CNAME target's records from a server that is
not the target's), and a CNAME chain that leaves the zone is reported, so
the resolver asks the target's own upstream.

Answers of zone "." are never touched (everything is in it; the resolver
does not even call scrub() for them), and the check itself reads names by
hand: dnspython rebuilds a message only when a record must go, which a
well-behaved upstream never causes.
"""
from __future__ import annotations

from typing import NamedTuple

import dns.message
import dns.name
import dns.rdatatype

from worker import wire

MAX_POINTERS = 64


class Scrubbed(NamedTuple):
    data: bytes                 # the answer, with out-of-zone records removed
    follow: bytes | None        # a CNAME target outside the zone to ask its own upstream for (name wire)
    # The parse of `data` when the check made it (nothing removed, zone not
    # "."), so that storing the answer does not parse it a second time.
    parsed: wire.Response | None = None


def name_at(data: bytes, off: int) -> bytes:
    """The lower-case, uncompressed wire of the name at `off` (pointers
    followed, at most MAX_POINTERS); raises wire.WireError."""
    out = bytearray()
    for _ in range(MAX_POINTERS):
        while True:
            if off >= len(data):
                raise wire.ShortMessage("name runs past the end")
            length = data[off]
            if length >= 0xC0:
                if off + 1 >= len(data):
                    raise wire.ShortMessage("pointer runs past the end")
                off = (length & 0x3F) << 8 | data[off + 1]
                break
            if length > wire.MAX_LABEL:
                raise wire.BadName("bad label")
            out += data[off:off + length + 1]
            if len(out) > wire.MAX_NAME:
                raise wire.BadName("name longer than 255 bytes")
            if length == 0:
                return bytes(out).lower()
            off += length + 1
    raise wire.BadName("too many compression pointers")


def in_zone(name: bytes, zone: bytes) -> bool:
    """Whether name wire `name` is `zone` or below it (both lower case, uncompressed)."""
    if not name.endswith(zone):
        return False
    cut = len(name) - len(zone)
    if cut == 0:
        return True
    # `zone` must start at a label boundary of `name`.
    i = 0
    while i < cut:
        i += name[i] + 1
    return i == cut


def scrub(data: bytes, zone: bytes) -> Scrubbed:
    """`data` (an upstream response to a query of zone `zone`, a lower-case
    name wire) with every record outside the zone removed, and the chain's
    target when it leaves the zone (its records were among those removed);
    raises wire.WireError."""
    resp = wire.parse_response(data)
    chain = resp.qname
    follow = None
    drop = []
    for rec in resp.records:
        if rec.rtype == wire.TYPE_OPT:
            continue
        owner = name_at(data, rec.start)
        if not in_zone(owner, zone):
            drop.append(rec)
        elif rec.section == 0 and rec.rtype == wire.TYPE_CNAME and owner == chain:
            chain = name_at(data, rec.ttl_offset + 6)
            if not in_zone(chain, zone):
                follow = chain
    if not drop:
        return Scrubbed(data, follow, resp)
    return Scrubbed(_rebuilt(data, zone), follow)


def _rebuilt(data: bytes, zone: bytes) -> bytes:
    """The message again without the out-of-zone rrsets (the rare case: dnspython)."""
    try:
        msg = dns.message.from_wire(data)
    except Exception as e:  # noqa: BLE001 - dnspython raises many kinds for bad input
        raise wire.WireError(f"cannot rebuild a scrubbed answer: {e}") from None
    origin = dns.name.from_wire(zone, 0)[0]
    for section in (msg.answer, msg.authority, msg.additional):
        section[:] = [rrset for rrset in section if rrset.name.is_subdomain(origin)]
    return msg.to_wire()


def with_target(chain: bytes, target: bytes) -> bytes:
    """The CNAME chain answer `chain` completed with the answer `target`
    (from the target's own upstream, already scrubbed): the target's answer
    records and rcode, and its authority (an SOA for a negative answer)."""
    try:
        first = dns.message.from_wire(chain)
        second = dns.message.from_wire(target)
    except Exception as e:  # noqa: BLE001 - dnspython raises many kinds for bad input
        raise wire.WireError(f"cannot join a CNAME chain: {e}") from None
    first.answer += [r for r in second.answer if r not in first.answer]
    first.authority = second.authority
    first.additional = []
    first.set_rcode(second.rcode())
    return first.to_wire()


def target_type(qtype: int) -> bool:
    """Whether a chain for this qtype is followed (a CNAME query wants the CNAME itself)."""
    return qtype not in (wire.TYPE_CNAME, dns.rdatatype.ANY)
