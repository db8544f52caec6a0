"""twindns under a real systemd (a booted Debian container, tests/helpers/
systemd_container.py): `twindns install --now`, Type=notify, the watchdog,
`systemctl restart` under 20,000 qps losing nothing, `systemctl reload`,
`systemctl stop` leaving nothing of ours behind, `twindns uninstall`."""
from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from helpers import dnsperf
from helpers.chaos import Load, warm
from helpers.tcpclients import SteadyClients
from helpers.twindns import LISTEN
from helpers.unbound import Unbound
from helpers.worker import socket_in

pytestmark = [pytest.mark.netns, pytest.mark.chaos]

QPS = 20000
CONFIG = f"""\
listen = ["{LISTEN}"]
health_listen = "{LISTEN}:8080"
metrics_listen = "{LISTEN}:9253"
[supervisor]
probe_interval = 0.5
drain_timeout = 2.0
[[upstream]]
zone = "."
servers = ["127.0.0.2:53"]
"""
RULE_DUMPS = ("iptables-nft-save", "iptables-legacy-save")
SECOND = "169.254.20.11"        # a listen address a reload adds


def status(c) -> dict:
    p = c.run([c.twindns, "status", "--json"], check=False, timeout=15)
    return json.loads(p.stdout) if p.stdout.strip() else {}


def wait_healthy(c, timeout: float = 30, other_than: int | None = None) -> dict:
    deadline = time.monotonic() + timeout
    last: dict = {}
    while time.monotonic() < deadline:
        last = status(c)
        if last.get("healthy") and last["supervisor"]["pid"] != other_than:
            return last
        time.sleep(0.2)
    raise AssertionError(f"twindns not healthy: {last}\n{c.journal('twindns')}")


def ours_in_place(c) -> tuple[bool, int]:
    """(listen address on the interface, number of twindns rules in either backend)."""
    addr = LISTEN in c.run(["ip", "-br", "addr"], check=False).stdout
    rules = sum(c.run([dump], check=False).stdout.count("twindns") for dump in RULE_DUMPS)
    return addr, rules


def processes(c, needle: str) -> list[str]:
    """Command lines of the container's processes that contain `needle`."""
    found = []
    for d in c.path("/proc").iterdir():
        if d.name.isdigit():
            try:
                args = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if needle in args:
                found.append(args)
    return found


class Sampler(threading.Thread):
    """Samples the address and the rule count inside the container until stopped."""

    def __init__(self, c) -> None:
        super().__init__(daemon=True)
        self.c, self.samples, self.halt = c, [], threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.samples.append(ours_in_place(self.c))
            time.sleep(0.05)


def load_until_the_switch(c, tmp_path) -> tuple[Load, Sampler]:
    """The mixed workload at QPS for 10 s, warmed, 3 s in, the address and rules
    sampled from now on. -t 5: a stub resolver's own timeout; -q 40000: more than
    a restart's gap at QPS, so an outage shows up as lost queries, not as a stalled client."""
    queries = dnsperf.mixed_queries(tmp_path / "q.txt")
    warm(c.net, queries)
    load = Load(c.net, queries, 10, QPS, timeout=5, outstanding=40000)
    sampler = Sampler(c)
    load.wait_until(3)
    sampler.start()
    return load, sampler


@pytest.fixture
def installed(systemd_container, tmp_path):
    c = systemd_container
    c.write("/etc/twindns/twindns.toml", CONFIG)
    upstream = Unbound(tmp_path / "unbound", netns=c.net)
    try:
        p = c.run([c.twindns, "install", "--now"], check=False, timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr + c.journal()
        yield c
    finally:
        c.run([c.twindns, "uninstall"], check=False, timeout=120)
        upstream.stop()


def test_install_now_restart_reload_stop_uninstall(installed, tmp_path):
    c = installed
    first = wait_healthy(c)
    # Type=notify: systemd saw READY=1 and shows our STATUS= line; the watchdog is armed.
    show = c.run(["systemctl", "show", "twindns", "-p", "ActiveState", "-p", "StatusText",
                  "-p", "WatchdogUSec", "-p", "NFileDescriptorStore"]).stdout
    assert "ActiveState=active" in show and "StatusText=2/2 workers ready" in show, show
    assert "WatchdogUSec=30s" in show and "NFileDescriptorStore=2" in show, show
    assert ours_in_place(c)[0]

    load, sampler = load_until_the_switch(c, tmp_path)
    p = c.run(["systemctl", "restart", "twindns"], check=False, timeout=60)
    time.sleep(1)
    sampler.halt.set()
    result = load.result()
    sampler.join()
    assert p.returncode == 0, p.stderr + c.journal("twindns")
    assert result.sent >= QPS * 10 * 0.9, result.raw
    # on failure: where datagrams were dropped (RcvbufErrors: some socket's buffer was full)
    assert result.lost == 0, result.raw + c.net.run(["grep", "Udp:", "/proc/net/snmp"]).stdout + c.journal("twindns")
    assert set(result.rcodes) == {"NOERROR"}, result.raw + c.journal("twindns")
    assert sampler.samples and all(addr and rules for addr, rules in sampler.samples), sampler.samples
    second = wait_healthy(c, other_than=first["supervisor"]["pid"])
    assert {w["pid"] for w in second["workers"]}.isdisjoint({w["pid"] for w in first["workers"]})

    # ExecReload= is a rolling restart, reported by systemctl
    p = c.run(["systemctl", "reload", "twindns"], check=False, timeout=60)
    assert p.returncode == 0, p.stderr + c.journal("twindns")
    third = wait_healthy(c)
    assert third["supervisor"]["pid"] == second["supervisor"]["pid"]
    assert all(w["restarts_by_cause"]["rolling"] == 1 for w in third["workers"]), third

    # stop for good: the network unit follows (StopWhenUnneeded=, its own stop job right after
    # ours), and with it everything of ours
    c.run(["systemctl", "stop", "twindns"], timeout=60)
    deadline = time.monotonic() + 30
    while c.run(["systemctl", "is-active", "twindns-net"], check=False).stdout.strip() != "inactive":
        assert time.monotonic() < deadline, c.journal("twindns-net")
        time.sleep(0.1)
    addrs = c.run(["ip", "addr"]).stdout
    assert LISTEN not in addrs and "nodelocaldns" not in addrs, addrs
    for dump in RULE_DUMPS:
        assert "twindns" not in c.run([dump], check=False).stdout, dump
    assert not processes(c, "twindns run") and not processes(c, "-m worker"), processes(c, "twindns")

    p = c.run([c.twindns, "uninstall"], check=False, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    for unit in ("twindns.service", "twindns-net.service"):
        assert not c.path(f"/etc/systemd/system/{unit}").exists()
    assert "could not be found" in c.run(["systemctl", "status", "twindns"], check=False).stderr


def test_a_reload_adding_an_address_holds_its_sockets_through_a_restart(installed, tmp_path):
    """The fd store holds the sockets of an address a reload added, so a
    later `systemctl restart` queues its queries too instead of refusing
    them; a reload removing it takes them out again."""
    c = installed
    wait_healthy(c)
    two = CONFIG.replace(f'listen = ["{LISTEN}"]', f'listen = ["{LISTEN}", "{SECOND}"]')
    assert two != CONFIG
    c.write("/etc/twindns/twindns.toml", two)
    p = c.run(["systemctl", "reload", "twindns"], check=False, timeout=60)
    assert p.returncode == 0, p.stderr + c.journal("twindns")
    before = wait_healthy(c)
    assert "NFileDescriptorStore=4" in c.run(["systemctl", "show", "twindns", "-p", "NFileDescriptorStore"]).stdout, \
        c.journal("twindns")

    queries = dnsperf.mixed_queries(tmp_path / "q.txt")
    warm(c.net, queries)
    load = Load(c.net, queries, 10, QPS, timeout=5, outstanding=40000, address=SECOND)
    load.wait_until(3)
    p = c.run(["systemctl", "restart", "twindns"], check=False, timeout=60)
    result = load.result()
    assert p.returncode == 0, p.stderr + c.journal("twindns")
    assert result.sent >= QPS * 10 * 0.9, result.raw
    assert result.lost == 0, result.raw + c.journal("twindns")
    assert set(result.rcodes) == {"NOERROR"}, result.raw
    wait_healthy(c, other_than=before["supervisor"]["pid"])

    c.write("/etc/twindns/twindns.toml", CONFIG)
    p = c.run(["systemctl", "reload", "twindns"], check=False, timeout=60)
    assert p.returncode == 0, p.stderr + c.journal("twindns")
    wait_healthy(c)
    assert "NFileDescriptorStore=2" in c.run(["systemctl", "show", "twindns", "-p", "NFileDescriptorStore"]).stdout, \
        c.journal("twindns")


def worker_pids(c) -> set[int]:
    """Pids of the container's supervised worker processes."""
    pids = set()
    for d in c.path("/proc").iterdir():
        if d.name.isdigit():
            try:
                args = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"worker" in args and b"--supervised" in args:
                pids.add(int(d.name))
    return pids


def test_supervisor_sigkill_loses_nothing_and_restart_adopts_the_orphans(installed, tmp_path):
    """KillMode=process: a SIGKILLed supervisor's workers keep answering; the one
    Restart= starts takes them over (their cache, then a drain), none is left."""
    c = installed
    first = wait_healthy(c)
    old_workers = {w["pid"] for w in first["workers"]}
    assert old_workers == worker_pids(c)
    load, sampler = load_until_the_switch(c, tmp_path)
    c.run(["systemctl", "kill", "--kill-whom=main", "--signal=SIGKILL", "twindns"])
    second = wait_healthy(c, other_than=first["supervisor"]["pid"])
    result = load.result()
    sampler.halt.set()
    sampler.join()
    assert result.sent >= QPS * 10 * 0.9, result.raw
    assert result.lost == 0, result.raw + c.journal("twindns")
    assert set(result.rcodes) == {"NOERROR"}, result.raw + c.journal("twindns")
    assert sampler.samples and all(addr and rules for addr, rules in sampler.samples), sampler.samples
    new_workers = {w["pid"] for w in second["workers"]}
    assert len(new_workers) == 2 and new_workers.isdisjoint(old_workers), second
    deadline = time.monotonic() + 15        # the orphans drain (drain_timeout 2 s), then exit
    while worker_pids(c) != new_workers and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker_pids(c) == new_workers, (worker_pids(c), c.journal("twindns"))   # no orphan left
    show = c.run(["systemctl", "show", "twindns", "-p", "NRestarts", "-p", "ActiveState"]).stdout
    assert "NRestarts=1" in show and "ActiveState=active" in show, show
    journal = c.journal("twindns")
    assert "orphans_taken_over found=2 gone=2" in journal, journal
    # the orphans' own lines reach the journal (their stderr pipe died with the supervisor)
    assert journal.count("supervisor gone: serving unsupervised") == 2, journal


def test_stop_while_waiting_for_restart_after_a_crash_leaves_no_orphan(installed):
    """A crash, then `systemctl stop` before Restart= fires: the network unit goes,
    and the orphaned workers, with no address left to serve, go with it."""
    c = installed
    c.write("/etc/systemd/system/twindns.service.d/restart-later.conf", "[Service]\nRestartSec=120s\n")
    try:
        c.run(["systemctl", "daemon-reload"])
        first = wait_healthy(c)
        old_workers = {w["pid"] for w in first["workers"]}
        c.run(["systemctl", "kill", "--kill-whom=main", "--signal=SIGKILL", "twindns"])
        deadline = time.monotonic() + 10
        while "auto-restart" not in c.run(["systemctl", "show", "twindns", "-p", "SubState"]).stdout:
            assert time.monotonic() < deadline, c.journal("twindns")
            time.sleep(0.1)
        # orphans answer while the service waits for its restart
        assert worker_pids(c) == old_workers and ours_in_place(c)[0]
        dig = c.net.run(["dig", f"@{LISTEN}", "+time=2", "+tries=1", "ready.twindns.", "CH", "TXT"], check=False)
        assert "status: NOERROR" in dig.stdout, dig.stdout
        c.run(["systemctl", "stop", "twindns"], timeout=60)
        deadline = time.monotonic() + 20
        while worker_pids(c) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not worker_pids(c), c.journal()
        assert not ours_in_place(c)[0] and ours_in_place(c)[1] == 0, ours_in_place(c)
    finally:
        c.path("/etc/systemd/system/twindns.service.d/restart-later.conf").unlink(missing_ok=True)
        c.run(["systemctl", "daemon-reload"], check=False)


def test_restart_keeps_tcp_connections_open(installed):
    """`systemctl restart`: the old workers hand their open TCP connections to
    the supervisor as they drain, it puts them into the fd store, and the next
    supervisor hands them to its workers: 8 clients asking on their
    connections every 10 ms lose nothing and see none closed."""
    c = installed
    first = wait_healthy(c)
    clients = SteadyClients(lambda: socket_in(f"/proc/{c.leader}/ns/net", socket.AF_INET, socket.SOCK_STREAM),
                            (LISTEN, 53))
    try:
        time.sleep(0.5)
        p = c.run(["systemctl", "restart", "twindns"], check=False, timeout=60)
        wait_healthy(c, other_than=first["supervisor"]["pid"])
        switched = time.monotonic()
        time.sleep(0.5)
    finally:
        clients.stop()
    assert p.returncode == 0, p.stderr + c.journal("twindns")
    clients.check_answered_since(switched)
    journal = c.journal("twindns")
    assert "restart_connections_kept connections=8 not_stored=0" in journal, journal
    assert "restart_connections_handed_out connections=8 handed=8" in journal, journal
    deadline = time.monotonic() + 10            # out of the store again: the held sockets only
    while "NFileDescriptorStore=2" not in c.run(["systemctl", "show", "twindns", "-p", "NFileDescriptorStore"]).stdout:
        assert time.monotonic() < deadline, c.run(["systemctl", "show", "twindns", "-p", "NFileDescriptorStore"]).stdout
        time.sleep(0.1)
