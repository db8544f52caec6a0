"""Open TCP connections outlive a rolling restart: a draining worker with a
replacement hands each connection over at a message boundary (SCM_RIGHTS,
worker/tcp_handoff.py) instead of closing it, so a client that goes on
sending on it loses nothing and never sees a close. Without a replacement
the drain closes with FIN as before (test_hardening_drain.py)."""
from __future__ import annotations

import os
import re
import signal
import socket
import time

import dns.edns
import dns.message
import dns.rcode
import pytest

from helpers.tcpclients import SteadyClients, ask_tcp as ask, frame, read_reply
from helpers.twindns import LISTEN, Supervisor, write_config
from helpers.worker import SupervisedWorker, listen_sockets, ns_socket
from test_hardening_drain import CONFIG, KEEPALIVE, SERVER, keepalive_timeout

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
    old, new, conn = linked
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
    assert new.request("drain", timeout=3.0)["ok"]        # nobody to hand it to now: FIN, not RST
    try:
        assert conn.recv(1) == b"", "closed by FIN"
    except ConnectionResetError:
        pytest.fail("the adopted connection was reset")
    assert new.wait() == 0


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


def handed_total(output: str) -> list[int]:
    return [int(n) for n in re.findall(r"\((\d+) handed to our replacement\)", output)]


def test_rolling_restart_keeps_tcp_connections_open(netns, upstream, tmp_path):
    """`twindns restart` under steady TCP load: every query on 8 connections
    opened before it is answered on its own connection, none is closed."""
    sup = Supervisor(netns, write_config(tmp_path / "twindns.toml"))
    try:
        sup.wait_ready()
        clients = SteadyClients(lambda: ns_socket(netns, socket.AF_INET, socket.SOCK_STREAM), (LISTEN, 53))
        time.sleep(0.5)
        p = sup.cli("restart")
        restarted = time.monotonic()
        time.sleep(0.5)
        clients.stop()
        assert p.returncode == 0, p.stderr
        clients.check_answered_since(restarted)
        handed = handed_total(sup.output())
        assert len(handed) == 2 and sum(handed) == len(clients.conns), handed
    finally:
        if sup.proc.poll() is None:
            sup.terminate()


def test_takeover_keeps_tcp_connections_open(netns, upstream, tmp_path):
    """`twindns run --takeover`: the old supervisor's workers hand their
    connections to the new supervisor's workers as they drain."""
    config = write_config(tmp_path / "twindns.toml")
    old = Supervisor(netns, config)
    new = None
    try:
        old.wait_ready()
        clients = SteadyClients(lambda: ns_socket(netns, socket.AF_INET, socket.SOCK_STREAM), (LISTEN, 53))
        time.sleep(0.5)
        new = Supervisor(netns, config, args=("--takeover",), log_name="takeover.log")
        assert old.proc.wait(timeout=40) == 0, old.output()[-3000:]
        switched = time.monotonic()
        time.sleep(0.5)
        clients.stop()
        clients.check_answered_since(switched)
        handed = handed_total(old.output())
        assert len(handed) == 2 and sum(handed) == len(clients.conns), handed
    finally:
        for sup in (old, new):
            if sup is not None and sup.proc.poll() is None:
                sup.terminate()


def test_next_run_takes_tcp_connections_from_orphaned_workers(netns, upstream, tmp_path):
    """The supervisor SIGKILLed, its workers serve on as orphans; the next
    `twindns run` takes their connections over with them."""
    config = write_config(tmp_path / "twindns.toml")
    old = Supervisor(netns, config)
    new = None
    try:
        orphans = [w["pid"] for w in old.wait_ready()["workers"]]
        clients = SteadyClients(lambda: ns_socket(netns, socket.AF_INET, socket.SOCK_STREAM), (LISTEN, 53))
        time.sleep(0.5)
        os.kill(old.proc.pid, signal.SIGKILL)
        old.proc.wait()
        time.sleep(0.5)
        new = Supervisor(netns, config, log_name="successor.log")
        new.wait_ready(20)
        deadline = time.monotonic() + 20
        while any(os.path.exists(f"/proc/{pid}") for pid in orphans) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(os.path.exists(f"/proc/{pid}") for pid in orphans), "the orphans drained and exited"
        switched = time.monotonic()
        time.sleep(0.5)
        clients.stop()
        clients.check_answered_since(switched)
        assert "orphan_taken_over" in new.output()
    finally:
        if new is not None and new.proc.poll() is None:
            new.terminate()
