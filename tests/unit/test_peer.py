"""The peer link's wire rules over a real socketpair: keys are validated,
links between different configs stay unused, junk is counted and dropped."""
from __future__ import annotations

import asyncio
import socket
import time

from worker import wire
from worker.cache import Entry
from worker.handoff import decode_entry
from worker.peer import FRAME_LEN, HELLO, SHARE_DELAY, PeerLink, owner, valid_key

KEY = wire.make_key(b"\x03www\x07example\x03com\x00", b"\x00\x01\x00\x01", False, False)


def entry() -> Entry:
    template = (b"\x00\x00\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + KEY[:-1]
                + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x01\x2c\x00\x04\xc0\x00\x02\x01")
    qend = 12 + len(KEY) - 5
    return Entry(template, qend, (qend + 4 + 6,), (300,), time.monotonic(), 300.0, 0, True, False)


def test_valid_key():
    assert valid_key(KEY)
    assert not valid_key(b"\x05ab\x00" + KEY[-5:])          # label runs past the name
    assert not valid_key(b"\x40" + b"a" * 64 + b"\x00" + KEY[-5:])
    assert not valid_key(KEY[:-1] + b"\x07")                 # flags 0-3 only
    assert not valid_key(b"\x00\x01")


def test_owner_is_a_stable_half_split():
    keys = [wire.make_key(f"\x05n{i:04d}\x00".encode(), b"\x00\x01\x00\x01", False, False) for i in range(1000)]
    owners = [owner(k) for k in keys]
    assert owners == [owner(k) for k in keys]
    assert 400 < owners.count("A") < 600


def run_pair(print_a: bytes, print_b: bytes, extra=lambda a, b, sa: None):
    got = {"A": [], "B": []}

    async def scenario():
        sa, sb = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        a = PeerLink(sa, "A", print_a, lambda k, r: got["A"].append(("ask", k, r)),
                     lambda k, r: got["A"].append(("told", k, decode_entry(r)[1].ttls)), lambda link: None)
        b = PeerLink(sb, "B", print_b, lambda k, r: got["B"].append(("ask", k, r)),
                     lambda k, r: got["B"].append(("told", k, decode_entry(r)[1].ttls)), lambda link: None)
        a.start()
        b.start()
        await asyncio.sleep(0.05)
        extra(a, b, sa)
        a.ask(KEY)
        a.ask(KEY, refresh=True)
        a.tell(KEY, entry(), reply=False)
        await asyncio.sleep(0.05)
        a.close()
        b.close()
        return a, b
    a, b = asyncio.run(scenario())
    return got, a, b


def test_asks_and_answers_cross_the_link():
    got, a, b = run_pair(b"x" * 32, b"x" * 32)
    assert got["B"] == [("ask", KEY, False), ("ask", KEY, True), ("told", KEY, (300,))]
    assert b.bad == 0


def test_a_link_between_two_configs_carries_nothing():
    got, a, b = run_pair(b"x" * 32, b"y" * 32)
    assert not a.usable and not b.usable
    assert got["B"] == []


def frame(kind: bytes, body: bytes) -> bytes:
    return kind + FRAME_LEN.pack(len(body)) + body


def test_junk_is_counted_and_dropped():
    def junk(a, b, sa):
        sa.send(frame(b"?", b"\x05ab\x00\x00\x01\x00\x01\x00"))      # not a key
        sa.send(frame(b"!", b"\x00" * 10) + frame(b"Z", b""))           # not a record; no such type
        sa.send(b"?" + FRAME_LEN.pack(100) + KEY)                        # runs past its datagram
    got, a, b = run_pair(b"x" * 32, b"x" * 32, junk)
    assert b.bad == 4
    assert got["B"] == [("ask", KEY, False), ("ask", KEY, True), ("told", KEY, (300,))]


def test_one_datagram_carries_what_a_turn_of_the_loop_queued():
    def count(a, b, sa):
        count.before = b.received
    got, a, b = run_pair(b"x" * 32, b"x" * 32, count)
    assert got["B"] == [("ask", KEY, False), ("ask", KEY, True), ("told", KEY, (300,))]
    assert b.received - count.before == 1


def test_a_peer_of_another_framing_is_never_agreed_with():
    """An older release (a datagram per message, HELLO without the protocol
    byte) mid-upgrade: the link stays unused rather than misread."""
    def older(a, b, sa):
        b.agreed = False
        sa.send(HELLO + b"x" * 32)
    got, a, b = run_pair(b"x" * 32, b"x" * 32, older)
    assert not b.agreed and got["B"] == []


def test_replies_wait_out_a_full_link_in_order_and_shares_are_dropped_and_counted():
    """The asking worker stops reading for a moment (busy): every reply to
    its asks still arrives, in order, once it reads again (its clients wait
    on them); answers it did not ask for are dropped and counted instead."""
    names = [wire.make_key(f"\x05n{i:04d}\x00".encode(), b"\x00\x01\x00\x01", False, False) for i in range(400)]
    told = []

    async def scenario():
        loop = asyncio.get_running_loop()
        sa, sb = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sa.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)     # a few datagrams of frames
        owner_end = PeerLink(sa, "A", b"x" * 32, lambda k, r: None, lambda k, e: None, lambda link: None)
        asker = PeerLink(sb, "B", b"x" * 32, lambda k, r: None, lambda k, e: told.append(k), lambda link: None)
        owner_end.start()
        asker.start()
        await asyncio.sleep(0.05)
        loop.remove_reader(sb.fileno())                                 # the asker is busy
        accepted, backlog_while_stalled = [], 0
        for i, k in enumerate(names):
            accepted.append(owner_end.tell(k, entry(), reply=i % 2 == 0))
            if i % 20 == 19:
                await asyncio.sleep(0)                                  # a turn of the loop: a flush
                backlog_while_stalled = max(backlog_while_stalled, len(owner_end.backlog))
        await asyncio.sleep(0.05)
        loop.add_reader(sb.fileno(), asker._readable)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if not owner_end.backlog and len([k for k in told if k in names[::2]]) == len(names[::2]):
                break
        owner_end.close()
        asker.close()
        return accepted, backlog_while_stalled, owner_end.counts

    accepted, backlog_while_stalled, counts = asyncio.run(scenario())
    replies = names[::2]
    assert all(accepted[::2])
    assert backlog_while_stalled > 0
    assert [k for k in told if k in set(replies)] == replies
    assert counts.dropped == accepted[1::2].count(False) > 0
    assert len(told) == len(replies) + accepted[1::2].count(True)


def test_shares_ride_together_and_what_is_queued_is_sent_at_close():
    """Answers the peer did not ask for wait up to SHARE_DELAY for a datagram
    (at a few misses a second each was a datagram and a wake-up of the peer
    of its own); a reply queued when the link closes (a drain) is still sent."""
    keys = [wire.make_key(f"\x05s{i:04d}\x00".encode(), b"\x00\x01\x00\x01", False, False) for i in range(5)]
    told = []

    async def scenario():
        sa, sb = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        a = PeerLink(sa, "A", b"x" * 32, lambda k, r: None, lambda k, e: None, lambda link: None)
        b = PeerLink(sb, "B", b"x" * 32, lambda k, r: None, lambda k, e: told.append(k), lambda link: None)
        a.start()
        b.start()
        await asyncio.sleep(0.05)
        before = b.received
        for k in keys:
            assert a.tell(k, entry(), reply=False)
            await asyncio.sleep(0)                  # a turn of the loop each
        assert told == []                           # waiting for company
        await asyncio.sleep(SHARE_DELAY + 0.05)
        assert told == keys and b.received - before == 1
        a.tell(KEY, entry(), reply=True)
        a.close()                                   # in the same turn: sent, not dropped
        await asyncio.sleep(0.05)
        assert told[-1] == KEY
        b.close()
    asyncio.run(scenario())
