"""Bad input never kills a worker: each kind of malformed packet gets FORMERR
(or NOTIMP) when a header can be read, is dropped otherwise, and is counted;
then a fuzz run of random and mutated packets, after which the worker still
answers correctly."""
from __future__ import annotations

import random
import socket
import struct
import time

import dns.message
import dns.rcode
import pytest

from helpers.worker import SupervisedWorker, listen_sockets, ns_socket

pytestmark = pytest.mark.netns

CONFIG = '[[upstream]]\nzone = "."\nservers = ["127.0.0.2"]\n'
SERVER = ("127.0.0.1", 53)


def header(qid: int = 0x1234, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack(">HHHHHH", qid, flags, qd, an, ns, ar)


A_QUESTION = b"\x01a\x04test\x00\x00\x01\x00\x01"

# (what, packet, expected reply rcode or None for "dropped", counted as FORMERR)
CASES = [
    ("garbage shorter than a header", b"\xde\xad\xbe\xef\x00", None, False),
    ("truncated header", header()[:11], None, False),
    ("header only, qdcount 1", header(), dns.rcode.FORMERR, True),
    ("qdcount 0", header(qd=0) + A_QUESTION, dns.rcode.FORMERR, True),
    ("qdcount 2", header(qd=2) + A_QUESTION * 2, dns.rcode.FORMERR, True),
    ("compression loop in the question", header() + b"\xc0\x0c\x00\x01\x00\x01", dns.rcode.FORMERR, True),
    ("label longer than 63", header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", dns.rcode.FORMERR, True),
    ("name past the end", header() + b"\x05ab", dns.rcode.FORMERR, True),
    ("question without type/class", header() + b"\x01a\x04test\x00\x00", dns.rcode.FORMERR, True),
    ("additional record past the end", header(ar=1) + A_QUESTION + b"\x00\x00\x29\x04", dns.rcode.FORMERR, True),
    ("two OPT records", header(ar=2) + A_QUESTION + (b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00") * 2,
     dns.rcode.FORMERR, True),
    ("a response (QR=1)", header(flags=0x8100) + A_QUESTION, None, False),
    ("opcode UPDATE", header(flags=0x2800) + A_QUESTION, dns.rcode.NOTIMP, False),
]


@pytest.fixture
def worker(netns, upstream, tmp_path):
    udp, tcp = listen_sockets(netns)
    w = SupervisedWorker(netns, tmp_path, CONFIG, [udp], [tcp])
    try:
        w.wait_ready()
        yield w
    finally:
        w.close()
        udp.close()
        tcp.close()


def exchange(client: socket.socket, packet: bytes, timeout: float = 0.3) -> bytes | None:
    client.sendto(packet, SERVER)
    client.settimeout(timeout)
    try:
        return client.recv(65535)
    except socket.timeout:
        return None


def answers_a_test(client: socket.socket) -> bool:
    q = dns.message.make_query("a.test", "A")
    client.settimeout(3)
    client.sendto(q.to_wire(), SERVER)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        reply = dns.message.from_wire(client.recv(65535))
        if reply.id == q.id:
            return reply.answer[0][0].address == "192.0.2.10"
    return False


def test_each_malformed_kind_answered_or_dropped_and_counted(worker, netns):
    with ns_socket(netns) as client:
        for what, packet, rcode, formerr in CASES:
            reply = exchange(client, packet)
            if rcode is None:
                assert reply is None, f"{what}: expected no reply"
                continue
            assert reply is not None, f"{what}: expected {dns.rcode.to_text(rcode)}"
            assert reply[:2] == packet[:2], f"{what}: reply carries the query's ID"
            assert reply[2] & 0x80, f"{what}: reply has QR=1"
            assert reply[3] & 0x0F == rcode, f"{what}: rcode {reply[3] & 0x0F}"
        assert answers_a_test(client)
    stats = worker.request("stats")["stats"]
    assert stats["malformed"] == len(CASES)
    assert stats["formerr"] == sum(1 for c in CASES if c[3])
    assert worker.proc.poll() is None


def mutations(rng: random.Random, valid: list[bytes], n: int):
    """Random packets and valid queries with bit flips, cuts, splices and
    count fields rewritten."""
    for i in range(n):
        kind = i % 5
        base = bytearray(rng.choice(valid))
        if kind == 0:
            yield rng.randbytes(rng.randrange(0, 600))
        elif kind == 1:
            for _ in range(rng.randrange(1, 6)):
                base[rng.randrange(len(base))] ^= 1 << rng.randrange(8)
            yield bytes(base)
        elif kind == 2:
            yield bytes(base[:rng.randrange(len(base))])
        elif kind == 3:
            at = rng.randrange(12, len(base))
            yield bytes(base[:at] + rng.randbytes(rng.randrange(1, 40)) + base[at:])
        else:
            base[4:12] = rng.randbytes(8)
            yield bytes(base)


def test_fuzz_then_still_answers(worker, netns):
    rng = random.Random(20261123)
    valid = [dns.message.make_query(name, rdtype, use_edns=edns, want_dnssec=dnssec).to_wire()
             for name in ("a.test", "x.hit.test", "nothere.test", "big.test")
             for rdtype in ("A", "TXT") for edns, dnssec in ((False, False), (0, False), (0, True))]
    sent = certainly_malformed = 0
    with ns_socket(netns) as client:
        client.setblocking(False)
        for packet in mutations(rng, valid, 12000):
            try:
                client.sendto(packet, SERVER)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            sent += 1
            certainly_malformed += len(packet) < 12 or bool(packet[2] & 0x80)
            if sent % 200 == 0:
                # Keep the worker's queue and our own receive buffer from overflowing.
                time.sleep(0.01)
                while True:
                    try:
                        client.recv(65535)
                    except BlockingIOError:
                        break
        client.setblocking(True)
        time.sleep(0.5)
        assert worker.proc.poll() is None, "the worker survived"
        assert answers_a_test(client)
    assert sent >= 10000
    stats = worker.request("stats")["stats"]
    assert stats["malformed"] >= certainly_malformed > 1000
    assert stats["formerr"] > 1000
    assert worker.ask_probe().answer, "the probe path still answers"
