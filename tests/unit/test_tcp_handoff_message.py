"""The message that hands a TCP connection on (contract/tcphandoff.py):
the socket and its keepalive flag arrive; anything else is skipped with
its fds closed; the end of the channel is told apart from "nothing yet"."""
from __future__ import annotations

import os
import socket

from contract.tcphandoff import receive_ready, send_connection


def channel() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    b.setblocking(False)
    return a, b


def open_fds() -> set[str]:
    return {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")}


def test_connections_arrive_with_their_keepalive_flag_and_the_end_is_seen():
    sender, receiver = channel()
    listener = socket.create_server(("127.0.0.1", 0))
    clients = [socket.create_connection(listener.getsockname()) for _ in range(2)]
    accepted = [listener.accept()[0] for _ in clients]
    got = []
    try:
        send_connection(sender, accepted[0].fileno(), True)
        send_connection(sender, accepted[1].fileno(), False)
        assert receive_ready(receiver, lambda conn, keepalive: got.append((conn, keepalive))) is False
        assert [k for _, k in got] == [True, False]
        # The received socket is the same connection: what the client sends arrives on it.
        clients[0].sendall(b"x")
        assert got[0][0].recv(1) == b"x"
        sender.close()
        assert receive_ready(receiver, got.append) is True
    finally:
        for s in [listener, receiver, *clients, *accepted, *(c for c, _ in got)]:
            s.close()


def test_a_message_that_is_not_one_stream_socket_is_skipped_and_its_fds_closed():
    sender, receiver = channel()
    datagram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    read_end, write_end = os.pipe()
    socket.send_fds(sender, [b"\x01"], [datagram.fileno()])     # not a stream socket
    socket.send_fds(sender, [b"\x01\x00"], [read_end])          # not one flags byte
    socket.send_fds(sender, [b"\x00"], [])                      # no socket
    datagram.close()
    os.close(read_end)
    os.close(write_end)
    before = open_fds()             # ours closed: the copies in flight are the only ones left
    got = []
    try:
        assert receive_ready(receiver, lambda conn, keepalive: got.append(conn)) is False
        assert got == []
        assert open_fds() <= before, "the skipped messages' fds are closed"
    finally:
        sender.close()
        receiver.close()
