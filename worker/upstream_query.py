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


class CaseMismatch(Rejected):
    """The answer's question matches ours except for the 0x20 letter case."""


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

    __slots__ = ("qname", "type_class", "head", "opt")

    def __init__(self, qname: bytes, qtype: int, qclass: int, do: bool, cd: bool) -> None:
        """`qname`: an uncompressed, valid name wire, in any case (it is asked in lower case)."""
        self._set(qname.lower(), wire.QUESTION_FIXED.pack(qtype, qclass), do, cd)

    def _set(self, qname: bytes, type_class: bytes, do: bool, cd: bool) -> None:
        self.qname, self.type_class = qname, type_class
        self.head, self.opt = (_HEADER_TAIL_CD if cd else _HEADER_TAIL), wire.OPT_RECORDS[do]

    @classmethod
    def from_question(cls, q: wire.Question) -> UpstreamQuery:
        """The upstream query for a client's question: its lower-cased name,
        type and class, its CD bit, our payload size and its DO bit. Every
        miss makes one: the cache key already holds the name in lower case
        and type and class in wire form."""
        query = cls.__new__(cls)
        query._set(wire.key_qname(q.key), wire.key_question(q.key)[-4:], q.do, q.cd)
        return query

    @property
    def name_text(self) -> str:
        """The name in presentation form, for messages."""
        return ".".join(label.decode("ascii", "backslashreplace") for label in wire.labels(self.qname)) or "."

    def wire(self, query_id: int, name: bytes | None = None) -> bytes:
        """The query with `query_id`, asking `name` (the same name in other
        letter case: 0x20) instead of our lower-case one when given."""
        if name is None:
            name = self.qname
        if _query_wire is not None:
            query = _query_wire(query_id, self.head, name, self.type_class, self.opt)
            if query is not None:
                return query
        return wire.U16.pack(query_id) + self.head + name + self.type_class + self.opt

    def check(self, data: bytes, query_id: int, sent_name: bytes | None = None) -> None:
        """Raise Rejected unless `data` answers this query sent with
        `query_id`: same ID, QR=1, opcode QUERY, exactly one question, equal
        to ours (the name in any case; in exactly the case of `sent_name`,
        the 0x20-randomised name, when given: CaseMismatch otherwise). Only
        the header and question are read; the caller parses the rest
        (wire.parse_response)."""
        if _answers is not None and _answers(data, query_id, self.qname, self.type_class, sent_name):
            return      # the C accelerator's verdict; otherwise the reference below says why not
        self.check_reference(data, query_id, sent_name)

    def check_reference(self, data: bytes, query_id: int, sent_name: bytes | None = None) -> None:
        """check() in Python: the reference the C accelerator follows."""
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
        if sent_name is not None and data[12:name_end] != sent_name:
            raise CaseMismatch("question in other letter case than asked (0x20)")


# The C accelerator's versions of check(), wire() and mix() (worker/_fastwire.c), or None.
_answers = wire.ACCEL.answers if wire.ACCEL is not None else None
_query_wire = wire.ACCEL.query_wire if wire.ACCEL is not None else None
_mix_case = wire.ACCEL.mix_case if wire.ACCEL is not None else None
LETTER_BITS = bytes(0x20 if 97 <= c <= 122 else 0 for c in range(256))


class RandomCase:
    """DNS 0x20 (draft-vixie-dnsext-dns0x20): each letter of an upstream
    query's name in random case, from the CSPRNG, so a forged answer must
    also guess the case. Noise is drawn NOISE_BATCH bytes at a time."""

    NOISE_BATCH = 4096

    def __init__(self) -> None:
        self._noise = b""
        self._at = 0

    def mix(self, name: bytes) -> bytes:
        """`name` (a lower-case name wire) with every letter's case flipped at random."""
        n = len(name)
        if self._at + n > len(self._noise):
            self._noise, self._at = os.urandom(self.NOISE_BATCH), 0
        if _mix_case is not None:
            mixed = _mix_case(name, self._noise, self._at)
            self._at += n
            return mixed
        noise = int.from_bytes(self._noise[self._at:self._at + n])
        self._at += n
        # In C, not per byte in Python: the 0x20 bit of each letter (LETTER_BITS
        # maps a-z to 0x20, every other byte, length bytes included, to 0)
        # taken from the noise and flipped in the name.
        flips = int.from_bytes(name.translate(LETTER_BITS)) & noise
        return (int.from_bytes(name) ^ flips).to_bytes(n)
