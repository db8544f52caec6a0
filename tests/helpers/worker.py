"""A standalone twindns worker inside a test namespace, and clients that talk
to it from the test process itself.

`ns_socket()` makes a socket that lives in the namespace (setns on this
thread, socket(), setns back): the test keeps real dnspython clients without
starting a Python subprocess per query.
"""
from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdataclass
import dns.rdatatype

CLONE_NEWNET = 0x40000000
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)   # Linux; Python 3.11 lacks the name


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def ns_socket(ns, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM) -> socket.socket:
    """A socket created inside namespace `ns` (it stays there once made)."""
    return socket_in(f"/var/run/netns/{ns.name}", family, kind)


def socket_in(netns_path: str, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM) -> socket.socket:
    """A socket created inside the network namespace at `netns_path` (a
    /var/run/netns name, or /proc/PID/ns/net)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(netns_path, os.O_RDONLY)
    try:
        _setns(target)
        try:
            return socket.socket(family, kind)
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)


def query(ns, server: tuple[str, int], q: dns.message.Message, tcp: bool = False,
          timeout: float = 3.0) -> dns.message.Message:
    """Send q from inside ns; UDP answers are returned even when TC=1."""
    kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
    with ns_socket(ns, socket.AF_INET, kind) as s:
        if tcp:
            s.settimeout(timeout)
            s.connect(server)
            return dns.query.tcp(q, server[0], timeout=timeout, port=server[1], sock=s)
        # dnspython waits with its own timeout only on a non-blocking socket;
        # a blocking one waits forever for a datagram that was lost.
        s.setblocking(False)
        return dns.query.udp(q, server[0], timeout=timeout, port=server[1], sock=s)


def probe_query() -> dns.message.Message:
    return dns.message.make_query("ready.twindns.", dns.rdatatype.TXT, dns.rdataclass.CH)


class Worker:
    """`python -m worker` in standalone mode inside ns, waited for until it answers."""

    def __init__(self, ns, workdir: Path, listen: str = "127.0.0.1:5353",
                 upstream: str | None = "127.0.0.2", config: str | None = None,
                 extra: list[str] | None = None, env: dict | None = None) -> None:
        self.ns = ns
        ip, _, port = listen.rpartition(":")
        self.server = (ip, int(port))
        workdir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "worker", "--listen", listen]
        if upstream:
            argv += ["--upstream", upstream]
        if config is not None:
            path = workdir / f"worker-{port}.toml"
            path.write_text(config)
            argv += ["--config", str(path)]
        argv += extra or []
        self.log_path = workdir / f"worker-{port}.log"
        self.log = open(self.log_path, "wb")
        self.proc = ns.popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.wait_ready()

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited {self.proc.returncode}: {self.log_path.read_text()}")
            try:
                query(self.ns, self.server, probe_query(), timeout=0.3)
                return
            except (dns.exception.Timeout, OSError):
                time.sleep(0.05)
        raise RuntimeError(f"worker did not answer: {self.log_path.read_text()}")

    def ask(self, name: str, rdtype: str = "A", tcp: bool = False, **kw) -> dns.message.Message:
        return query(self.ns, self.server, dns.message.make_query(name, rdtype, **kw), tcp=tcp)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.log.close()


def listen_sockets(ns, ip: str = "127.0.0.1", port: int = 53) -> tuple[socket.socket, socket.socket]:
    """One UDP and one listening TCP socket in ns, made as the supervisor
    makes them (SO_REUSEADDR + SO_REUSEPORT, non-blocking, 4 MiB UDP buffer)."""
    made = []
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        s = ns_socket(ns, socket.AF_INET, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if kind == socket.SOCK_DGRAM:
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
        s.bind((ip, port))
        if kind == socket.SOCK_STREAM:
            s.listen(1024)
        s.setblocking(False)
        made.append(s)
    return made[0], made[1]


class SupervisedWorker:
    """`python -m worker --supervised` spawned the way the supervisor spawns it:
    inherited sockets, a config pipe, a control (SEQPACKET) and a probe (DGRAM)
    socketpair. The test keeps the supervisor's ends and duplicates."""

    def __init__(self, ns, workdir: Path, config: str, udp: list[socket.socket],
                 tcp: list[socket.socket], adopt_udp: list[socket.socket] = (),
                 slot: str = "A", generation: int = 1, extra: list[str] | None = None) -> None:
        self.ns = ns
        self.control, control_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.probe, probe_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        config_read, config_write = os.pipe()
        argv = [sys.executable, "-m", "worker", "--supervised", "--config-fd", str(config_read),
                "--control-fd", str(control_child.fileno()), "--probe-fd", str(probe_child.fileno()),
                "--slot", slot, "--generation", str(generation)]
        fds = [config_read, control_child.fileno(), probe_child.fileno()]
        for flag, socks in (("--udp-fd", udp), ("--tcp-fd", tcp), ("--adopt-udp-fd", adopt_udp)):
            for s in socks:
                argv += [flag, str(s.fileno())]
                fds.append(s.fileno())
        argv += extra or []
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"supervised-{slot}{generation}.log"
        self.log = open(self.log_path, "wb")
        self.proc = ns.popen(argv, pass_fds=fds, stdout=self.log, stderr=subprocess.STDOUT)
        os.close(config_read)
        control_child.close()
        probe_child.close()
        os.write(config_write, config.encode())
        os.close(config_write)
        self._next_id = 0

    def ask_probe(self, timeout: float = 1.0) -> dns.message.Message:
        q = probe_query()
        self.probe.settimeout(timeout)
        self.probe.send(q.to_wire())
        return dns.message.from_wire(self.probe.recv(65535))

    def wait_ready(self, timeout: float = 15.0) -> dns.message.Message:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited {self.proc.returncode}: {self.log_path.read_text()}")
            try:
                return self.ask_probe(timeout=0.3)
            except (socket.timeout, OSError):
                pass
        raise RuntimeError(f"worker did not answer its probe: {self.log_path.read_text()}")

    def request(self, op: str, timeout: float = 5.0, fds: tuple[int, ...] = (), **fields) -> dict:
        """Send one control request (with `fds` attached, SCM_RIGHTS) and
        return the reply with the same id (events arriving meanwhile are skipped)."""
        self._next_id += 1
        self.control.settimeout(timeout)
        socket.send_fds(self.control, [json.dumps({"id": self._next_id, "op": op, **fields}).encode()], list(fds))
        while True:
            reply = json.loads(self.control.recv(65536))
            if reply.get("id") == self._next_id:
                return reply

    def read_event(self, timeout: float = 10.0) -> dict | None:
        """The next unsolicited message (None when the channel closed)."""
        self.control.settimeout(timeout)
        msg = self.control.recv(65536)
        return json.loads(msg) if msg else None

    def wait(self, timeout: float = 10.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.log.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        self.control.close()
        self.probe.close()
