"""Supervised mode, driven the way the supervisor drives it: sockets made
by the parent and inherited, config through a pipe, probe and control
socketpairs; draining and adopting a crashed predecessor's sockets."""
from __future__ import annotations

import json
import os
import socket
import struct
import time

import dns.message
import dns.rcode
import pytest

from helpers.unbound import Unbound
from helpers.worker import SupervisedWorker, listen_sockets, ns_socket, query

pytestmark = pytest.mark.netns

CONFIG = """
listen = ["127.0.0.1"]      # the supervisor's key: the worker ignores it

[[upstream]]
zone = "."
servers = ["127.0.0.2"]
"""
SERVER = ("127.0.0.1", 53)


@pytest.fixture
def spawn(netns, upstream, tmp_path):
    started = []

    def start(generation: int = 1, adopt=(), config: str = CONFIG, ready: bool = True) -> SupervisedWorker:
        udp, tcp = listen_sockets(netns)
        w = SupervisedWorker(netns, tmp_path, config, [udp], [tcp], adopt_udp=list(adopt),
                             generation=generation)
        w.udp, w.tcp = udp, tcp
        started.append(w)
        if ready:
            w.wait_ready()
        return w
    yield start
    for w in started:
        w.close()
        w.udp.close()
        w.tcp.close()


def send_queries(sock: socket.socket, names: list[str]) -> set[int]:
    ids = set()
    for name in names:
        q = dns.message.make_query(name, "A")
        while q.id in ids:
            q.id = (q.id + 1) & 0xFFFF
        ids.add(q.id)
        sock.sendto(q.to_wire(), SERVER)
    return ids


def receive_ids(sock: socket.socket, expected: int, timeout: float = 5.0) -> set[int]:
    got = set()
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            reply = dns.message.from_wire(sock.recv(4096))
        except socket.timeout:
            break
        assert reply.rcode() == dns.rcode.NOERROR
        got.add(reply.id)
    return got


def test_probe_stats_and_drain(spawn, netns):
    w = spawn(generation=3)
    probe = w.ask_probe()
    txt = probe.answer[0][0].strings[0].decode()
    assert txt.startswith("slot=A gen=3 pid=") and "version=" in txt
    with ns_socket(netns) as client:
        ids = send_queries(client, ["a.test", "x.hit.test"])
        assert receive_ids(client, 2) == ids
        ids = send_queries(client, ["A.test"])
        assert receive_ids(client, 1) == ids
    reply = w.request("stats")
    assert reply["ok"] is True
    stats = reply["stats"]
    assert (stats["slot"], stats["generation"]) == ("A", 3)
    assert stats["cache_hits"] >= 1 and stats["cache_misses"] >= 2
    assert ["udp", "A", "NOERROR", 3] in stats["queries"]
    # Probes travel the client code path but are not client traffic.
    for _ in range(5):
        w.ask_probe()
    stats = w.request("stats")["stats"]
    assert stats["queries_total"] == 3, stats["queries"]
    assert not [q for q in stats["queries"] if q[1] == "TXT"]
    assert stats["upstream"] and stats["upstream"][0]["server"] == "127.0.0.2:53"
    assert w.request("nonsense")["ok"] is False
    assert w.request("drain", timeout=2.0)["ok"] is True
    event = w.read_event()
    assert event["event"] == "stats" and event["stats"]["queries_total"] >= 3
    assert w.wait() == 0
    # The listener left the reuseport group although the supervisor (this
    # test) still holds a duplicate of it: nothing accepts on the address.
    with ns_socket(netns, socket.AF_INET, socket.SOCK_STREAM) as s:
        with pytest.raises(ConnectionRefusedError):
            s.connect(SERVER)


def test_drain_hands_over_without_loss(spawn, netns):
    """Two workers share the address; one drains in the middle of a burst of
    misses and hits from 16 client ports (so reuseport spreads them): every
    query is answered, by one or the other."""
    old = spawn(generation=1)
    new = spawn(generation=2)
    names = [f"n{i}.short.test" if i % 2 else f"n{i}.hit.test" for i in range(640)]
    clients = [ns_socket(netns) for _ in range(16)]
    try:
        sent = [set() for _ in clients]
        for part, half in enumerate((names[:320], names[320:])):
            for i, c in enumerate(clients):
                sent[i] |= send_queries(c, half[i::len(clients)])
            if part == 0:
                assert old.request("drain", timeout=3.0)["ok"]
        lost = sum(len(ids - receive_ids(c, len(ids))) for c, ids in zip(clients, sent))
    finally:
        for c in clients:
            c.close()
    assert lost == 0, f"{lost} queries lost"
    final = old.read_event()["stats"]
    assert old.wait() == 0
    by_new = new.request("stats")["stats"]["queries_total"]
    assert final["queries_total"] > 1 and by_new > 1, "both workers served part of the burst"


def test_adopts_a_crashed_predecessors_queue(spawn, netns):
    """Datagrams queued on a dead worker's socket are answered by its
    replacement, which then closes that socket."""
    dead_udp, dead_tcp = listen_sockets(netns)
    with ns_socket(netns) as client:
        ids = send_queries(client, [f"q{i}.hit.test" for i in range(50)])
        time.sleep(0.1)
        # What the supervisor does on a crash: steer the dead socket away.
        dead_udp.connect(dead_udp.getsockname())
        w = spawn(adopt=[dead_udp])
        assert receive_ids(client, 50) == ids
        dead_tcp.close()
        # The replacement answers new queries on its own socket.
        ids = send_queries(client, ["after.hit.test"])
        assert receive_ids(client, 1) == ids
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _fd_count_of_udp(w, netns) > 1:
        time.sleep(0.05)
    assert _fd_count_of_udp(w, netns) == 1, "the adopted socket is closed once answered"
    dead_udp.close()


def test_adopted_socket_left_in_the_group_is_served_until_steered(spawn, netns):
    """With no other worker serving, the supervisor leaves a dead worker's
    socket in the reuseport group (so clients are queued, not refused) and
    steers it away only once the replacement's own sockets are bound. Until
    then the replacement serves it and must not close it."""
    dead_udp, dead_tcp = listen_sockets(netns)
    dead_tcp.close()
    with ns_socket(netns) as client:
        ids = send_queries(client, [f"q{i}.hit.test" for i in range(50)])
        time.sleep(0.1)
        w = spawn(adopt=[dead_udp])
        assert receive_ids(client, 50) == ids
        time.sleep(0.5)
        assert _fd_count_of_udp(w, netns) == 2, "an adopted socket still in the group stays open"
        # Still in the group: a share of new queries lands on it, and is answered.
        ids = send_queries(client, [f"n{i}.hit.test" for i in range(40)])
        assert receive_ids(client, 40) == ids
        dead_udp.connect(dead_udp.getsockname())     # the supervisor steers it away
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _fd_count_of_udp(w, netns) > 1:
            time.sleep(0.05)
        assert _fd_count_of_udp(w, netns) == 1, "closed once steered away and answered"
        ids = send_queries(client, ["after.hit.test"])
        assert receive_ids(client, 1) == ids
    dead_udp.close()


def _fd_count_of_udp(w: SupervisedWorker, netns) -> int:
    """UDP sockets the worker process listens on with port 53 (from ss in the
    netns); not its upstream sockets, whose peer's port is 53."""
    out = netns.run(["ss", "-uanp"]).stdout
    pid = _worker_pid(w)
    return sum(1 for line in out.splitlines()
               if f"pid={pid}," in line and line.split()[3].endswith(":53"))


def _worker_pid(w: SupervisedWorker) -> int:
    return w.request("stats")["stats"]["pid"]


def test_supervisor_gone_worker_serves_on_until_a_successor_drains_it(spawn, netns):
    """The control channel closing without a drain request means the supervisor died:
    the worker keeps answering, and a root successor that connects to
    @twindns-orphan.<pid> (same network namespace) gets a control channel
    that drains it."""
    w = spawn()
    pid = _worker_pid(w)
    w.control.close()
    time.sleep(0.5)
    assert w.proc.poll() is None, w.log_path.read_text()
    answer = query(netns, SERVER, dns.message.make_query("n1.hit.test", "A"))
    assert answer.rcode() == dns.rcode.NOERROR and answer.answer
    successor = ns_socket(netns, socket.AF_UNIX, socket.SOCK_SEQPACKET)
    successor.settimeout(5)
    successor.connect(b"\0twindns-orphan." + str(pid).encode())
    successor.send(json.dumps({"id": 1, "op": "stats"}).encode())
    assert json.loads(successor.recv(65536))["stats"]["pid"] == pid
    successor.send(json.dumps({"id": 2, "op": "drain", "timeout": 1.0}).encode())
    assert json.loads(successor.recv(65536)) == {"id": 2, "ok": True}
    assert w.wait() == 0
    successor.close()


def test_bad_config_exits_78_naming_the_key(spawn):
    w = spawn(config='[cache]\ncapacity = "big"\n', ready=False)
    assert w.wait() == 78
    err = w.log_path.read_text()
    assert "cache.capacity" in err and "big" in err


def test_drain_finishes_open_tcp_connections(spawn, netns):
    """A query in flight on a TCP connection is answered before the worker
    closes the connection and exits; an idle connection is simply closed."""
    silent = ns_socket(netns)
    silent.bind(("127.0.0.9", 53))     # an upstream that never answers
    config = CONFIG + '\n[[upstream]]\nzone = "slow.test"\nservers = ["127.0.0.9"]\ntimeout = 1.0\n'
    w = spawn(config=config)
    busy = ns_socket(netns, socket.AF_INET, socket.SOCK_STREAM)
    idle = ns_socket(netns, socket.AF_INET, socket.SOCK_STREAM)
    try:
        for s in (busy, idle):
            s.settimeout(5)
            s.connect(SERVER)
        q = dns.message.make_query("x.slow.test", "A")
        busy.sendall(struct.pack(">H", len(q.to_wire())) + q.to_wire())
        time.sleep(0.1)
        assert w.request("drain", timeout=3.0)["ok"]
        assert idle.recv(1) == b"", "the idle connection is closed at once"
        length = struct.unpack(">H", busy.recv(2))[0]
        reply = dns.message.from_wire(busy.recv(length))
        assert reply.id == q.id and reply.rcode() == dns.rcode.SERVFAIL
        assert busy.recv(1) == b"", "then its connection is closed"
        assert w.wait() == 0
    finally:
        busy.close()
        idle.close()
        silent.close()


def test_cache_ops_take_a_pipe_end_and_close_fds_they_do_not_use(spawn):
    """cache_send / cache_receive need a pipe end (SCM_RIGHTS); an fd sent
    with any other op is closed by the worker, not leaked."""
    w = spawn()
    w.control.settimeout(5)
    w.control.send(json.dumps({"id": 1, "op": "cache_send"}).encode())
    reply = json.loads(w.control.recv(65536))
    assert reply["ok"] is False and "expected a pipe end" in reply["error"]
    read_end, write_end = os.pipe()
    socket.send_fds(w.control, [json.dumps({"id": 2, "op": "stats"}).encode()], [write_end])
    os.close(write_end)
    assert json.loads(w.control.recv(65536))["ok"] is True
    os.set_blocking(read_end, False)
    deadline = time.monotonic() + 5
    while True:     # EOF once no write end is open anywhere: the worker closed its copy
        try:
            if os.read(read_end, 1) == b"":
                break
        except BlockingIOError:
            assert time.monotonic() < deadline, "the worker kept the fd it was sent with 'stats'"
            time.sleep(0.05)
    os.close(read_end)
