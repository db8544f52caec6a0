"""Clients that keep TCP connections to a DNS server open and ask on them
steadily, to show that a restart or takeover closes none of them."""
from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable

import dns.message


def frame(q: dns.message.Message) -> bytes:
    """`q` as sent over TCP: its length, then its wire form."""
    wire = q.to_wire()
    return struct.pack(">H", len(wire)) + wire


def read_reply(s: socket.socket) -> dns.message.Message:
    head = s.recv(2, socket.MSG_WAITALL)
    return dns.message.from_wire(s.recv(struct.unpack(">H", head)[0], socket.MSG_WAITALL))


def ask_tcp(conn: socket.socket, name: str = "a.test", **kw) -> dns.message.Message:
    """One query on an open connection, and its reply (same ID)."""
    q = dns.message.make_query(name, "A", use_edns=0, **kw)
    conn.sendall(frame(q))
    reply = read_reply(conn)
    assert reply.id == q.id
    return reply


class SteadyClients:
    """`n` TCP connections to `server`, made by `make_socket()`, each asking
    `name` every 10 ms on its own thread until stop(); what failed, and when
    each last had an answer."""

    def __init__(self, make_socket: Callable[[], socket.socket], server: tuple[str, int], n: int = 8,
                 name: str = "a.test") -> None:
        self.conns = []
        for _ in range(n):
            c = make_socket()
            c.settimeout(5)
            c.connect(server)
            self.conns.append(c)
        self.name = name
        self.halt = threading.Event()
        self.counts = [0] * n
        self.last_answer = [0.0] * n
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(n)]
        for t in self.threads:
            t.start()

    def _client(self, i: int) -> None:
        try:
            while not self.halt.is_set():
                assert ask_tcp(self.conns[i], self.name).answer
                self.counts[i] += 1
                self.last_answer[i] = time.monotonic()
                time.sleep(0.01)
        except Exception as e:  # noqa: BLE001 - a closed connection shows as a short read
            self.errors.append(f"connection {i} after {self.counts[i]} answers: {e!r}")

    def stop(self) -> None:
        self.halt.set()
        for t in self.threads:
            t.join(10)
        for c in self.conns:
            c.close()

    def check_answered_since(self, since: float) -> None:
        """No connection closed or failed, and each was answered after `since`."""
        assert self.errors == [], self.errors
        assert all(t > since for t in self.last_answer), "every connection is answered after the switch"
