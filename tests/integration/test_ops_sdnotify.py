"""`twindns run` under a stand-in for systemd: a real unix datagram socket in
$NOTIFY_SOCKET receives what systemd would (Type=notify, WatchdogSec=)."""
from __future__ import annotations

import socket
import statistics
import time

import pytest

from helpers.sdnotify import fill_queue
from helpers.twindns import Supervisor, write_config

pytestmark = pytest.mark.netns

WATCHDOG_USEC = 1_000_000          # WatchdogSec=1s: the supervisor must ping every 0.5 s


class FakeSystemd:
    def __init__(self, path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.path = str(path)
        self.seen: list[tuple[float, dict[str, str]]] = []

    def read_until(self, predicate, timeout: float) -> list[tuple[float, dict[str, str]]]:
        """Messages received until one matches `predicate` (included)."""
        got = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                break
            msg = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            got.append((time.monotonic(), msg))
            self.seen.append(got[-1])
            if predicate(msg):
                return got
        raise AssertionError(f"no matching notification in {timeout}s; got {[m for _, m in got]}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def systemd(tmp_path):
    s = FakeSystemd(tmp_path / "notify")
    yield s
    s.close()


def test_notify_lifecycle(netns, upstream, tmp_path, systemd):
    sup = Supervisor(netns, write_config(tmp_path / "twindns.toml"),
                     env={"NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)})
    try:
        # READY=1 only once both workers answer their probe
        before_ready = systemd.read_until(lambda m: m.get("READY") == "1", timeout=30)
        assert any("STATUS" in m for _, m in before_ready[:-1]), before_ready
        ready_msg = before_ready[-1][1]
        assert ready_msg["STATUS"].startswith("2/2 workers ready"), ready_msg
        assert sup.status()["ready_workers"] == 2

        # WATCHDOG=1 at half the configured interval, from the main loop
        t0 = time.monotonic()
        pings = []
        while time.monotonic() - t0 < 3.0:
            pings += [t for t, m in systemd.read_until(lambda m: m.get("WATCHDOG") == "1", timeout=2)
                      if m.get("WATCHDOG") == "1"]
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        assert len(pings) >= 5, pings
        # every ping well inside WatchdogSec (systemd would kill us otherwise), paced at half of it
        assert max(gaps) < 0.95 and 0.4 <= statistics.median(gaps) <= 0.6, gaps

        # a reload is bracketed by RELOADING=1 ... READY=1
        p = sup.cli("reload", timeout=60)
        assert p.returncode == 0, p.stderr
        during = systemd.read_until(lambda m: m.get("READY") == "1", timeout=10)
        reloading = [m for _, m in during if m.get("RELOADING") == "1"]
        assert reloading and int(reloading[0]["MONOTONIC_USEC"]) > 0, during
        first_reloading = next(i for i, (_, m) in enumerate(during) if m.get("RELOADING") == "1")
        assert during[-1][1].get("READY") == "1" and first_reloading < len(during) - 1

        # SIGTERM: STOPPING=1, then a clean exit
        sup.proc.send_signal(15)
        systemd.read_until(lambda m: m.get("STOPPING") == "1", timeout=10)
        assert sup.proc.wait(timeout=20) == 0
    finally:
        if sup.proc.poll() is None:
            sup.terminate()
        sup.log.close()


def test_a_stuck_systemd_never_stops_the_supervisor(netns, upstream, tmp_path, systemd):
    """systemd (here: its socket) reads nothing for a while: the queue stays full.
    The supervisor must still start serving, reload, and stop on SIGTERM; the
    state changes it could not deliver arrive, in order, once systemd reads."""
    fill_queue(systemd.path)
    sup = Supervisor(netns, write_config(tmp_path / "twindns.toml"),
                     env={"NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)})
    try:
        sup.wait_ready(timeout=30)
        p = netns.run(["dig", "+tries=1", "+time=2", "+short", "@169.254.20.10", "a.test", "A"], check=False)
        assert p.returncode == 0 and p.stdout.strip(), p
        p = sup.cli("reload", timeout=60)
        assert p.returncode == 0, p.stderr + sup.output()[-3000:]
        assert sup.status()["ready_workers"] == 2
        # systemd catches up: READY=1 (start), then RELOADING=1 ... READY=1 (the reload)
        got = systemd.read_until(lambda m: m.get("RELOADING") == "1", timeout=10)
        assert any(m.get("READY") == "1" for _, m in got), got
        systemd.read_until(lambda m: m.get("READY") == "1", timeout=10)
        sup.proc.send_signal(15)
        systemd.read_until(lambda m: m.get("STOPPING") == "1", timeout=10)
        assert sup.proc.wait(timeout=20) == 0
    finally:
        if sup.proc.poll() is None:
            sup.terminate()
        sup.log.close()
