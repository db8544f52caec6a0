"""One query on its way upstream, and the test an answer must pass to be
taken as the reply to it (same ID, a response, same opcode, same question).

The caller checks the source address; this module checks the content.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode


class Rejected(Exception):
    """A message that is not the answer to the query we sent."""


def random_id() -> int:
    """An unpredictable 16-bit message ID (RFC 5452: IDs must not be guessable)."""
    return secrets.randbits(16)


@dataclass(frozen=True)
class UpstreamQuery:
    name: dns.name.Name
    rdtype: int
    rdclass: int
    opcode: int
    tail: bytes               # the query's wire format after its 2-byte ID

    @classmethod
    def from_message(cls, query: dns.message.Message) -> "UpstreamQuery":
        if len(query.question) != 1:
            raise ValueError("an upstream query has exactly one question")
        q = query.question[0]
        return cls(name=q.name, rdtype=q.rdtype, rdclass=q.rdclass,
                   opcode=query.opcode(), tail=query.to_wire()[2:])

    def wire(self, query_id: int) -> bytes:
        return query_id.to_bytes(2, "big") + self.tail

    def answer(self, wire: bytes, query_id: int) -> dns.message.Message:
        """`wire` parsed as far as its question, if it answers this query
        sent with `query_id`; Rejected otherwise."""
        if len(wire) < 12 or int.from_bytes(wire[:2], "big") != query_id:
            raise Rejected("wrong ID")
        try:
            reply = dns.message.from_wire(wire, question_only=True)
        except dns.exception.DNSException as e:
            raise Rejected(f"malformed: {e}") from None
        if not reply.flags & dns.flags.QR or reply.opcode() != self.opcode:
            raise Rejected("not a response to our opcode")
        if len(reply.question) != 1:
            raise Rejected("question count is not 1")
        # Name comparison is case-insensitive, so answers to a 0x20-randomised
        # query (or from servers that lower-case names) still match.
        q = reply.question[0]
        if q.name != self.name or q.rdtype != self.rdtype or q.rdclass != self.rdclass:
            raise Rejected("wrong question")
        return reply

