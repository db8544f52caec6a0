"""The message that hands an open TCP connection from one process to
another over an AF_UNIX SOCK_SEQPACKET socketpair (worker/tcp_handoff.py,
supervisor/restartconns.py): one message per connection, a flags byte and
the socket (SCM_RIGHTS)."""
from __future__ import annotations

import os
import socket
from collections.abc import Callable

# The client asked for edns-tcp-keepalive (RFC 7828) on this connection.
FLAG_KEEPALIVE = 0x01


def send_connection(channel: socket.socket, conn_fd: int, keepalive: bool) -> None:
    """Raises OSError (BlockingIOError when the channel is full)."""
    socket.send_fds(channel, [bytes((FLAG_KEEPALIVE if keepalive else 0,))], [conn_fd])


def receive_ready(channel: socket.socket, take: Callable[[socket.socket, bool], None]) -> bool:
    """take(connection, keepalive) for each connection waiting on the
    (non-blocking) channel; True once the channel has ended, False when it
    would block."""
    while True:
        try:
            got = receive_connection(channel)
        except (BlockingIOError, InterruptedError):
            return False
        except ValueError:
            continue
        except OSError:
            return True
        if got is None:
            return True
        take(*got)


def receive_connection(channel: socket.socket) -> tuple[socket.socket, bool] | None:
    """The next connection and its keepalive flag; None at the end of the
    channel. Raises BlockingIOError when nothing is there yet; a message that
    is not one connection is skipped (its fds closed), ValueError."""
    msg, fds, _flags, _addr = socket.recv_fds(channel, 16, 1)
    if not msg and not fds:
        return None
    if len(msg) != 1 or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise ValueError("not a connection")
    try:
        conn = socket.socket(fileno=fds[0])
    except OSError:             # not a socket at all
        os.close(fds[0])
        raise ValueError("not a socket") from None
    if conn.type != socket.SOCK_STREAM:
        conn.close()
        raise ValueError("not a stream socket")
    return conn, bool(msg[0] & FLAG_KEEPALIVE)
