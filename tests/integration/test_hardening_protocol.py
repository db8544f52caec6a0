"""Issue 14 item 8: protocol edges a differential test against unbound found.
UDP answers capped at max_udp_size (1232) with TC; BADVERS keeps the DO bit;
FORMERR/NOTIMP replies echo the question and an OPT; queries with TC=1 or
with answer/authority records get FORMERR; CNAME-only answers are cached;
a SERVFAIL after an upstream timeout is cached; an expired answer is served
stale after stale_client_timeout instead of after the full upstream timeout."""
from __future__ import annotations

import os
import signal
import socket
import struct
import time

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from helpers.scripted_upstream import Scripted
from helpers.worker import Worker, ns_socket, query

pytestmark = pytest.mark.netns

CONFIG = """
[cache]
serve_stale = 60
{extra}
[[upstream]]
zone = "."
servers = ["127.0.0.2"]
timeout = 2.0

[[upstream]]
zone = "cname.test"
servers = ["127.0.0.3"]
"""


def raw(netns, server, packet: bytes) -> dns.message.Message:
    with ns_socket(netns) as s:
        s.settimeout(3)
        s.sendto(packet, server)
        return dns.message.from_wire(s.recv(65535))


def slow_ask(w: Worker, name: str) -> dns.message.Message:
    return query(w.ns, w.server, dns.message.make_query(name, "A"), timeout=5)


def test_udp_answers_are_capped_at_max_udp_size_whatever_the_client_offers(netns, upstream, tmp_path):
    default = Worker(netns, tmp_path, listen="127.0.0.1:5353", upstream=None, config=CONFIG.format(extra=""))
    larger = Worker(netns, tmp_path, listen="127.0.0.1:5354", upstream=None,
                    config=CONFIG.format(extra="max_udp_size = 4096"))
    try:
        for _ in range(2):                      # a miss, then a hit
            capped = default.ask("big.test", "TXT", use_edns=0, payload=4096)
            assert capped.flags & dns.flags.TC and not capped.answer and capped.edns == 0
            assert len(default.ask("big.test", "TXT", tcp=True).answer[0]) == 30
            full = larger.ask("big.test", "TXT", use_edns=0, payload=4096)
            assert not full.flags & dns.flags.TC and len(full.answer[0]) == 30
    finally:
        default.stop()
        larger.stop()


def test_error_replies_echo_question_and_opt(netns, upstream, tmp_path):
    w = Worker(netns, tmp_path, upstream=None, config=CONFIG.format(extra=""))
    try:
        w.ask("a.test")                         # cached: the fast path sees the same names
        badvers = w.ask("a.test", use_edns=1, want_dnssec=True)
        assert badvers.rcode() == dns.rcode.BADVERS and badvers.ednsflags & dns.flags.DO, "BADVERS keeps DO"

        q = dns.message.make_query("a.test", "A", use_edns=0, want_dnssec=True)
        q.flags |= dns.flags.TC
        tc = raw(netns, w.server, q.to_wire())
        assert tc.rcode() == dns.rcode.FORMERR, "a query with TC=1"
        assert tc.question and tc.question[0].name.to_text() == "a.test." and tc.edns == 0
        assert tc.ednsflags & dns.flags.DO

        for section in ("answer", "authority"):
            q = dns.message.make_query("a.test", "A", use_edns=0)
            getattr(q, section).append(dns.rrset.from_text("a.test.", 60, "IN", "A", "192.0.2.99"))
            reply = raw(netns, w.server, q.to_wire())
            assert reply.rcode() == dns.rcode.FORMERR, f"a query with an {section} record"
            assert reply.question and reply.edns == 0 and not reply.answer

        update = dns.message.make_query("a.test", "A", use_edns=0)
        update.set_opcode(dns.opcode.STATUS)     # dnspython parses an UPDATE reply by its own rules
        notimp = raw(netns, w.server, update.to_wire())
        assert notimp.rcode() == dns.rcode.NOTIMP
        assert notimp.question and notimp.question[0].name.to_text() == "a.test." and notimp.edns == 0

        qd2 = struct.pack(">HHHHHH", 0x4242, 0x0100, 2, 0, 0, 0) + b"\x01a\x04test\x00\x00\x01\x00\x01" * 2
        formerr = raw(netns, w.server, qd2)
        assert formerr.id == 0x4242 and formerr.rcode() == dns.rcode.FORMERR
        assert w.ask("a.test").answer[0][0].address == "192.0.2.10"
    finally:
        w.stop()


def test_cname_only_answers_are_cached(netns, upstream, tmp_path):
    cname = Scripted(netns, tmp_path, "cname", addr="127.0.0.3")
    w = Worker(netns, tmp_path, upstream=None, config=CONFIG.format(extra=""))
    try:
        for _ in range(3):
            reply = w.ask("alias.cname.test")
            assert reply.answer[0].rdtype == dns.rdatatype.CNAME
        assert cname.counts()["udp_queries"] == 1, "the CNAME-only answer was asked for again"
    finally:
        w.stop()
        cname.stop()


def test_timeout_servfail_is_cached_and_stale_comes_after_the_client_timeout(netns, upstream, tmp_path):
    w = Worker(netns, tmp_path, upstream=None, config=CONFIG.format(extra=""))
    try:
        first = w.ask("old.short.test")
        assert first.answer[0].ttl == 1
        os.kill(upstream.proc.pid, signal.SIGSTOP)       # the upstream goes silent: every ask times out
        try:
            time.sleep(1.2)
            started = time.monotonic()
            stale = slow_ask(w, "old.short.test")
            waited = time.monotonic() - started
            assert stale.answer[0][0].address == "192.0.2.2" and stale.answer[0].ttl == 30
            assert waited < 1.6, f"stale answer after {waited:.2f} s: not after the 2 s upstream timeout"

            started = time.monotonic()
            assert slow_ask(w, "never.short.test").rcode() == dns.rcode.SERVFAIL
            assert time.monotonic() - started > 1.5         # the full upstream timeout, once
            started = time.monotonic()
            assert slow_ask(w, "never.short.test").rcode() == dns.rcode.SERVFAIL
            assert time.monotonic() - started < 0.5, "a retry waited out the upstream timeout again"
        finally:
            os.kill(upstream.proc.pid, signal.SIGCONT)
    finally:
        w.stop()
