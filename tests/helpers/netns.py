"""Throwaway network namespaces for integration tests.

Everything a test starts that touches the network runs inside one of these,
so the host's interfaces and firewall tables are never touched.
"""
from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time

_counter = itertools.count()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


class Netns:
    """A named network namespace with loopback up; deleted (with every
    process still inside it) on close()."""

    def __init__(self, prefix: str = "tw") -> None:
        self.name = f"{prefix}{os.getpid()}x{next(_counter)}"
        _ip("netns", "add", self.name)
        self._procs: list[subprocess.Popen] = []
        self.run(["ip", "link", "set", "lo", "up"])

    # -- running things inside -------------------------------------------
    def cmd(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: list[str], check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self.cmd(argv), check=check, timeout=timeout, **kw)

    def popen(self, argv: list[str], **kw) -> subprocess.Popen:
        # New session so a test can signal the whole tree it started.
        kw.setdefault("start_new_session", True)
        p = subprocess.Popen(self.cmd(argv), **kw)
        self._procs.append(p)
        return p

    # -- topology helpers ------------------------------------------------
    def add_bridge_address(self, ifname: str, cidr: str) -> None:
        """An up bridge carrying `cidr` (the kernel here has no dummy driver)."""
        self.run(["ip", "link", "add", ifname, "type", "bridge"])
        self.run(["ip", "addr", "add", cidr, "dev", ifname])
        self.run(["ip", "link", "set", ifname, "up"])

    def pids(self) -> list[int]:
        out = _ip("netns", "pids", self.name, check=False).stdout.split()
        return [int(p) for p in out if p.isdigit()]

    def close(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in self._procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 5
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        _ip("netns", "del", self.name, check=False)

    def __enter__(self) -> "Netns":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VethPair:
    """A veth link between two namespaces with one /24 (link-local range) each side."""

    def __init__(self, a: Netns, a_addr: str, b: Netns, b_addr: str, prefix: int = 24) -> None:
        self.a_if = f"va{next(_counter)}"
        self.b_if = f"vb{next(_counter)}"
        _ip("link", "add", self.a_if, "netns", a.name, "type", "veth", "peer", "name", self.b_if, "netns", b.name)
        a.run(["ip", "addr", "add", f"{a_addr}/{prefix}", "dev", self.a_if])
        b.run(["ip", "addr", "add", f"{b_addr}/{prefix}", "dev", self.b_if])
        a.run(["ip", "link", "set", self.a_if, "up"])
        b.run(["ip", "link", "set", self.b_if, "up"])
