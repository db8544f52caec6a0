"""Readiness and hang detection over a worker's probe socketpair: a DNS query
`ready.twindns. CH TXT`, answered by the worker through its normal UDP path
(docs/internals.md, "Probe channel")."""
from __future__ import annotations

import asyncio
import random
import socket
import time
from typing import Callable

import dns.message
import dns.rdataclass
import dns.rdatatype
import dns.rcode

PROBE_NAME = "ready.twindns."
MAX_REPLY = 4096


class Prober:
    """Sends one probe at a time; `tick()` reports whether the previous one went unanswered."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop,
                 on_answer: Callable[[float, str], None]) -> None:
        self._sock = sock
        self._loop = loop
        self._on_answer = on_answer
        self._pending: tuple[bytes, float] | None = None   # (query id, sent at)
        # The probe and its last answer's text, made and parsed once: with dnspython at every
        # probe the supervisor spent 0.1-0.3 ms per worker each probe_interval, on a CPU the
        # workers serve from (a stall of their hits, as their own answers to it were).
        self._query = dns.message.make_query(PROBE_NAME, dns.rdatatype.TXT, dns.rdataclass.CH).to_wire()
        self._last: tuple[bytes, str] | None = None      # (an answer after its ID, its text)
        loop.add_reader(sock.fileno(), self._readable)

    def tick(self) -> bool:
        """Send a fresh probe; True when the previous one was never answered (a miss)."""
        missed = self._pending is not None
        qid = random.randrange(65536).to_bytes(2, "big")
        try:
            self._sock.send(qid + self._query[2:])
        except (BlockingIOError, ConnectionError, OSError):
            pass   # worker gone or stuck with a full buffer: this probe simply goes unanswered
        self._pending = (qid, time.monotonic())
        return missed

    def _readable(self) -> None:
        while True:
            try:
                data = self._sock.recv(MAX_REPLY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                return
            if not data:
                return
            self._match(data)

    def _match(self, data: bytes) -> None:
        if self._pending is None or data[:2] != self._pending[0]:
            return
        if self._last is not None and data[2:] == self._last[0]:
            text = self._last[1]        # the same bytes as last time (the worker's answer never changes)
        else:
            try:
                reply = dns.message.from_wire(data)
            except Exception:   # dnspython raises many kinds on bad wire data; a bad reply is no answer
                return
            if reply.rcode() != dns.rcode.NOERROR:
                return
            text = " ".join(b.decode("utf-8", "replace") for rrset in reply.answer for rd in rrset
                            for b in getattr(rd, "strings", ()))
            self._last = (data[2:], text)
        sent = self._pending[1]
        self._pending = None
        self._on_answer(time.monotonic() - sent, text)

    def close(self) -> None:
        try:
            self._loop.remove_reader(self._sock.fileno())
        except (ValueError, OSError):
            pass
