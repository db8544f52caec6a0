"""One query on its way upstream, and the test an answer must pass to be
taken as the reply to it (same ID, a response, opcode QUERY, one question
equal to ours).

Both are done on wire bytes: the query is built from the client's parsed
question (worker/wire.py) and checked answers are handed on as bytes, so a
cache miss never builds a dnspython message (that cost more than the rest
of the miss path together). The caller checks the source address; this
module checks the content.
"""
from __future__ import annotations

import os

from worker import wire

# Header bytes 2..12 of every query we send: RD=1 (CD=0), one question, one
# additional record (our OPT).
_HEADER_TAIL = b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01"
_HEADER_TAIL_CD = b"\x01\x10\x00\x01\x00\x00\x00\x00\x00\x01"


class Rejected(Exception):
    """A message that is not the answer to the query we sent."""


class RandomIds:
    """Unpredictable 16-bit message IDs (RFC 5452: IDs must not be guessable),
    from the operating system's CSPRNG. Drawn ID_BATCH at a time: one
    os.urandom() per query would be one system call more per cache miss."""

    ID_BATCH = 2048

    def __init__(self) -> None:
        self._ids: list[int] = []

    def next(self) -> int:
        ids = self._ids
        if not ids:
            ids.extend(memoryview(os.urandom(2 * self.ID_BATCH)).cast("H"))
        return ids.pop()


class UpstreamQuery:
    """The question we ask upstream, in wire form, and the test for its answer."""

    __slots__ = ("qname", "type_class", "tail")

    def __init__(self, qname: bytes, qtype: int, qclass: int, do: bool, cd: bool) -> None:
        """`qname`: an uncompressed, valid name wire, in any case (it is asked in lower case)."""
        self.qname = qname.lower()
        self.type_class = wire.U16.pack(qtype) + wire.U16.pack(qclass)
        self.tail = (_HEADER_TAIL_CD if cd else _HEADER_TAIL) + self.qname + self.type_class + wire.opt_record(do)

    @classmethod
    def from_question(cls, q: wire.Question) -> UpstreamQuery:
        """The upstream query for a client's question: its lower-cased name,
        type and class, its CD bit, our payload size and its DO bit."""
        return cls(wire.key_qname(q.key), q.qtype, q.qclass, q.do, q.cd)

    @property
    def name_text(self) -> str:
        """The name in presentation form, for messages."""
        return ".".join(label.decode("ascii", "backslashreplace") for label in wire.labels(self.qname)) or "."

    def wire(self, query_id: int) -> bytes:
        return wire.U16.pack(query_id) + self.tail

    def check(self, data: bytes, query_id: int) -> None:
        """Raise Rejected unless `data` answers this query sent with
        `query_id`: same ID, QR=1, opcode QUERY, exactly one question, equal
        to ours (the name in any case). Only the header and question are
        read; the caller parses the rest (wire.parse_response)."""
        if len(data) < 12:
            raise Rejected("shorter than a header")
        if data[0] << 8 | data[1] != query_id:
            raise Rejected("wrong ID")
        if not data[2] & wire.FLAG_QR or data[2] & 0x78:
            raise Rejected("not a response to our opcode")
        if data[4:6] != b"\x00\x01":
            raise Rejected("question count is not 1")
        name_end = 12 + len(self.qname)
        if len(data) < name_end + 4:
            raise Rejected("shorter than our question")
        # Case-insensitive, so answers to a 0x20-randomised query (or from
        # servers that lower-case names) still match. The question name sits
        # at offset 12, where no compression pointer can point backwards, and
        # ours is a self-delimiting name wire: equal bytes are the same name.
        # (Length bytes are below 64, so lower() leaves them alone; type and
        # class are compared as they are: type 65 is 0x0041, an "A".)
        if data[12:name_end].lower() != self.qname or data[name_end:name_end + 4] != self.type_class:
            raise Rejected("wrong question")
