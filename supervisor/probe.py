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
        self._pending: tuple[int, float] | None = None   # (query id, sent at)
        loop.add_reader(sock.fileno(), self._readable)

    def tick(self) -> bool:
        """Send a fresh probe; True when the previous one was never answered (a miss)."""
        missed = self._pending is not None
        qid = random.randrange(65536)
        q = dns.message.make_query(PROBE_NAME, dns.rdatatype.TXT, dns.rdataclass.CH)
        q.id = qid
        try:
            self._sock.send(q.to_wire())
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
        if self._pending is None:
            return
        try:
            reply = dns.message.from_wire(data)
        except Exception:   # dnspython raises many kinds on bad wire data; a bad reply is no answer
            return
        qid, sent = self._pending
        if reply.id != qid or reply.rcode() != dns.rcode.NOERROR:
            return
        self._pending = None
        text = " ".join(b.decode("utf-8", "replace") for rrset in reply.answer for rd in rrset
                        for b in getattr(rd, "strings", ()))
        self._on_answer(time.monotonic() - sent, text)

    def close(self) -> None:
        try:
            self._loop.remove_reader(self._sock.fileno())
        except (ValueError, OSError):
            pass
