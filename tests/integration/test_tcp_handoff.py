"""Open TCP connections outlive a rolling restart: a draining worker with a
replacement hands each connection over at a message boundary (SCM_RIGHTS,
worker/tcp_handoff.py) instead of closing it, so a client that goes on
sending on it loses nothing and never sees a close. Without a replacement
the drain closes with FIN as before (test_hardening_drain.py)."""
from __future__ import annotations

import re
import signal
import socket
import threading
import time

import dns.edns
import dns.message
import dns.rcode
import pytest

from helpers.twindns import LISTEN, Supervisor, write_config
from helpers.worker import SupervisedWorker, listen_sockets, ns_socket
from test_hardening_drain import CONFIG, KEEPALIVE, SERVER, frame, keepalive_timeout, read_reply

pytestmark = pytest.mark.netns


def handoff_pair(old: SupervisedWorker, new: SupervisedWorker) -> None:
    """What the supervisor does before it drains a replaced worker."""
    send_end, receive_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        assert new.request("tcp_receive", fds=(receive_end.fileno(),))["ok"]
        assert old.request("tcp_send", fds=(send_end.fileno(),))["ok"]
    finally:
        send_end.close()
        receive_end.close()


def ask(conn: socket.socket, name: str = "a.test", **kw) -> dns.message.Message:
    q = dns.message.make_query(name, "A", use_edns=0, **kw)
    conn.sendall(frame(q))
    reply = read_reply(conn)
    assert reply.id == q.id
    return reply


@pytest.fixture
def linked(netns, upstream, tmp_path):
    """(old worker, its replacement, a client connection to the old one),
    linked for the hand-over as the supervisor links them."""
    udp, tcp = listen_sockets(netns)
    workers = [SupervisedWorker(netns, tmp_path, CONFIG, [udp], [tcp], generation=1)]
    conn = ns_socket(netns, socket.AF_INET, socket.SOCK_STREAM)
    try:
        workers[0].wait_ready()
        conn.settimeout(5)
        conn.connect(SERVER)                # only the old worker listens yet: its connection
        assert ask(conn, options=[dns.edns.GenericOption(KEEPALIVE, b"")]).answer
        udp2, tcp2 = listen_sockets(netns)     # after the connect: a listener nobody accepts on yet
        workers.append(SupervisedWorker(netns, tmp_path, CONFIG, [udp2], [tcp2], generation=2))
        workers[1].wait_ready()
        handoff_pair(*workers)
        yield workers[0], workers[1], conn
    finally:
        conn.close()
        for w in workers:
            w.close()


def test_drain_hands_open_connections_to_the_replacement(netns, linked):
    old, _new, conn = linked
    silent = ns_socket(netns)
    silent.bind(("127.0.0.9", 53))          # the slow zone's upstream never answers
    slow = dns.message.make_query("x.slow.test", "A", use_edns=0)
    conn.sendall(frame(slow))                           # pending upstream when the drain starts
    time.sleep(0.1)
    assert old.request("drain", timeout=3.0)["ok"]
    # Sent while the old worker drains, and after it has gone: one connection throughout.
    sent_during = [dns.message.make_query(f"n{i}.test", "A", use_edns=0) for i in range(20)]
    for q in sent_during:
        conn.sendall(frame(q))
        time.sleep(0.01)
    replies = {r.id: r for r in (read_reply(conn) for _ in range(1 + len(sent_during)))}
    assert set(replies) == {slow.id} | {q.id for q in sent_during}, "every query is answered once"
    assert replies[slow.id].rcode() == dns.rcode.SERVFAIL
    assert all(keepalive_timeout(r) is None or keepalive_timeout(r) > 0 for r in replies.values()), \
        "a handed-over connection is not told to close"
    assert old.wait() == 0
    for _ in range(5):                  # the old worker has exited: the replacement answers
        assert ask(conn).answer
    assert "tcp drained: 1 connections (1 handed to our replacement)" in old.log_path.read_text()


def test_drain_closes_with_fin_when_the_replacement_is_gone(linked):
    old, new, conn = linked
    new.proc.send_signal(signal.SIGKILL)
    new.proc.wait()
    assert old.request("drain", timeout=3.0)["ok"]
    try:
        assert conn.recv(1) == b"", "closed by FIN"
    except ConnectionResetError:
        pytest.fail("the draining worker reset the connection")
    assert old.wait() == 0
    assert "tcp drained: 1 connections (0 handed to our replacement)" in old.log_path.read_text()


def test_rolling_restart_keeps_tcp_connections_open(netns, upstream, tmp_path):
    """`twindns restart` under steady TCP load: 8 connections opened before
    it each send a query every 10 ms throughout; every query is answered on
    its own connection, none is closed."""
    sup = Supervisor(netns, write_config(tmp_path / "twindns.toml"))
    try:
        sup.wait_ready()
        conns = []
        for _ in range(8):
            c = ns_socket(netns, socket.AF_INET, socket.SOCK_STREAM)
            c.settimeout(5)
            c.connect((LISTEN, 53))
            conns.append(c)
        stop = threading.Event()
        counts = [0] * len(conns)
        last_answer = [0.0] * len(conns)
        errors: list[str] = []

        def client(i: int) -> None:
            try:
                while not stop.is_set():
                    assert ask(conns[i]).answer
                    counts[i] += 1
                    last_answer[i] = time.monotonic()
                    time.sleep(0.01)
            except Exception as e:  # noqa: BLE001 - a closed connection shows as a short read
                errors.append(f"connection {i} after {counts[i]} answers: {e!r}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(conns))]
        for t in threads:
            t.start()
        time.sleep(0.5)
        p = sup.cli("restart")
        restarted = time.monotonic()
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(10)
        for c in conns:
            c.close()
        assert p.returncode == 0, p.stderr
        assert errors == [], errors
        assert all(t > restarted for t in last_answer), "every connection is answered after the restart"
        handed = re.findall(r"\((\d+) handed to our replacement\)", sup.output())
        assert len(handed) == 2 and sum(map(int, handed)) == len(conns), handed
    finally:
        if sup.proc.poll() is None:
            sup.terminate()
