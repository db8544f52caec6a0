"""The message that hands a TCP connection on (contract/tcphandoff.py):
the socket and its keepalive flag arrive; anything else is skipped with
its fds closed; the end of the channel is told apart from "nothing yet"."""
from __future__ import annotations

import os
import socket

import pytest

from contract.tcphandoff import receive_ready, send_connection


def channel() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    b.setblocking(False)
    return a, b


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
    """Each bad message's fd is sent, and our copy closed: its other end then
    shows whether the receiver closed the copy it got."""
    sender, receiver = channel()
    dgram, dgram_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    pipe_read, pipe_write = os.pipe()
    other_read, other_write = os.pipe()
    try:
        socket.send_fds(sender, [b"\x01"], [dgram.fileno()])       # a socket, not a stream one
        socket.send_fds(sender, [b"\x01\x00"], [pipe_read])        # not one flags byte
        socket.send_fds(sender, [b"\x00"], [other_read])           # not a socket at all
        socket.send_fds(sender, [b"\x00"], [])                     # no fd
        dgram.close()
        os.close(pipe_read)
        os.close(other_read)
        got = []
        assert receive_ready(receiver, lambda conn, keepalive: got.append(conn)) is False, "the channel goes on"
        assert got == []
        with pytest.raises(ConnectionRefusedError):
            dgram_peer.send(b"x")
        with pytest.raises(BrokenPipeError):
            os.write(pipe_write, b"x")
        with pytest.raises(BrokenPipeError):
            os.write(other_write, b"x")
    finally:
        for s in (sender, receiver, dgram_peer):
            s.close()
        os.close(pipe_write)
        os.close(other_write)
