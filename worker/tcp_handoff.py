"""Open TCP connections handed from a draining worker to its replacement
(a rolling restart, a takeover, an orphan taken over) or to the supervisor
(a `systemctl restart`: supervisor/restartconns.py), so a client's
connection outlives the worker that accepted it (docs/internals.md,
`tcp_send` / `tcp_receive`).

Without it a draining worker shuts its side (FIN) at a message boundary,
and every query a client sends before it has seen that FIN is lost: a
client cannot tell a close from a lost query. With it the draining worker
answers what it has read, and at a message boundary with nothing pending
and nothing left to write stops reading and sends the connection's socket
(SCM_RIGHTS) over a SOCK_SEQPACKET socketpair the supervisor gave it. What the client sent meanwhile waits in the socket's own receive
queue, which moves with it; the replacement reads on from there. Closing
the drainer's fd after the send shuts nothing: the socket lives on in the
message and then in the replacement (close() only drops a reference; we
never call shutdown() on a handed socket).

One message per connection (contract/tcphandoff.py): a flags byte (the
client asked for edns-tcp-keepalive) and the socket. Anything the receiver
cannot take (a full table, a bad message) is closed, which the client sees
as the close it would have seen without the handoff.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from contract.tcphandoff import receive_ready, send_connection

if TYPE_CHECKING:
    from worker.tcp_server import TcpServer

log = logging.getLogger(__name__)


class ConnectionSender:
    """The draining worker's end: hands connections over until the
    replacement's end is gone, then refuses (the caller closes with FIN)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.sent = 0
        self.usable = True

    def send(self, conn: socket.socket, keepalive: bool) -> bool:
        """Hand `conn` over (our fd stays ours to close); False when it could
        not be, e.g. the socketpair's buffer is full or the receiver gone."""
        if not self.usable:
            return False
        try:
            send_connection(self.sock, conn.fileno(), keepalive)
        except (BlockingIOError, InterruptedError):
            return False        # this one closes with FIN; later ones may still fit
        except OSError as e:
            log.warning("tcp handoff: cannot send a connection: %s", e)
            self.usable = False
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        self.usable = False
        self.sock.close()


class ConnectionReceiver:
    """The replacement's end: every connection that arrives is given to
    `adopt(sock, keepalive)`, until the drainer closes its end."""

    def __init__(self, sock: socket.socket, adopt: Callable[[socket.socket, bool], None]) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.adopt = adopt
        self.received = 0
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        if receive_ready(self.sock, self._take):
            log.info("tcp handoff: received %d connection(s)", self.received)
            self.close()

    def _take(self, conn: socket.socket, keepalive: bool) -> None:
        self.received += 1
        try:
            self.adopt(conn, keepalive)
        except Exception:  # noqa: BLE001 - one connection must not end the handoff
            log.exception("tcp handoff: adopting a connection failed")
            conn.close()

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()


class TcpHandoff:
    """A worker's ends of the hand-over: to its replacement ("send": its
    open connections go there when it drains) and from the worker it
    replaces ("receive": it serves that one's). `servers()`: the worker's
    TCP servers; `serving()`: whether it takes connections now."""

    def __init__(self, servers: Callable[[], list[TcpServer]], serving: Callable[[], bool]) -> None:
        self.servers, self.serving = servers, serving
        self.sender: ConnectionSender | None = None
        self.receiver: ConnectionReceiver | None = None

    def pipe(self, direction: str, fd: int) -> None:
        """Called from the control channel with our end of a socketpair from the supervisor."""
        sock = socket.socket(fileno=fd)
        if direction == "receive":
            if self.receiver is not None:
                self.receiver.close()
            self.receiver = ConnectionReceiver(sock, self._adopt)
            return
        if self.sender is not None:
            self.sender.close()
        self.sender = ConnectionSender(sock)
        for server in self.servers():
            server.handoff = self.sender

    def _adopt(self, conn: socket.socket, keepalive: bool) -> None:
        """Served by our listener on the connection's address."""
        servers = self.servers()
        if not servers or not self.serving():
            conn.close()
            return
        local = conn.getsockname()[:2]
        server = next((s for s in servers if s.sock.getsockname()[:2] == local), servers[0])
        server.adopt(conn, keepalive)

    def close(self) -> None:
        for end in (self.sender, self.receiver):
            if end is not None:
                end.close()
