"""Replacing the whole supervisor under the chaos tests' mixed workload at
20,000 qps: `twindns run --takeover` beside a running one, and a new
`twindns run` after the old supervisor was SIGKILLed (its workers serve on
as orphans until the new one takes over from them)."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from helpers import dnsperf
from helpers.chaos import Load, warm
from helpers.firewall import OUR_COMMENT, rule_lines
from helpers.twindns import LISTEN, Supervisor, write_config

pytestmark = [pytest.mark.netns, pytest.mark.chaos]

QPS = 20000
SECONDS = 12
# More than QPS x any outage we would have: an outage shows as lost queries, not a stalled client.
OUTSTANDING = 20000
# An answer within a stub resolver's own timeout (glibc's default is 5 s) is an answer.
TIMEOUT = 5.0


def our_rules(netns) -> int:
    return sum(1 for backend in ("legacy", "nft") for line in rule_lines(netns, backend) if OUR_COMMENT in line + " ")


def address_present(netns) -> bool:
    return LISTEN in netns.run(["ip", "-br", "addr"], check=False).stdout


class Sampler(threading.Thread):
    """(address present, rules of ours) every 50 ms until stopped."""

    def __init__(self, netns) -> None:
        super().__init__(daemon=True)
        self.netns, self.samples, self.halt = netns, [], threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.samples.append((address_present(self.netns), our_rules(self.netns)))
            time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def worker_pids(netns) -> list[int]:
    """Every supervised worker process in the namespace."""
    out = []
    for pid in netns.pids():
        try:
            argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except FileNotFoundError:
            continue
        if b"worker" in argv and b"--supervised" in argv:
            out.append(pid)
    return out


class DropWatch(threading.Thread):
    """Datagrams dropped on full receive buffers during the run, per socket (from
    /proc/net/udp every 100 ms, so sockets closed before the end still count):
    on failure, says whether ours (port 53) or dnsperf's dropped them."""

    def __init__(self, netns) -> None:
        super().__init__(daemon=True)
        self.netns, self.seen, self.first, self.halt = netns, {}, {}, threading.Event()
        self.started = time.monotonic()
        self.start()

    def run(self) -> None:
        while not self.halt.is_set():
            for line in self.netns.run(["cat", "/proc/net/udp"], check=False).stdout.splitlines()[1:]:
                cols = line.split()
                if len(cols) >= 13 and int(cols[12]):
                    key = (cols[1], cols[9])
                    self.seen[key] = int(cols[12])
                    self.first.setdefault(key, round(time.monotonic() - self.started, 1))
            time.sleep(0.1)

    def report(self) -> str:
        self.halt.set()
        ours = sum(n for (local, _), n in self.seen.items() if local.endswith(":0035"))
        theirs = sum(n for (local, _), n in self.seen.items() if not local.endswith(":0035"))
        detail = "; ".join(f"{local} inode {inode}: {n} from {self.first[(local, inode)]} s"
                           for (local, inode), n in self.seen.items())
        return f"\nUDP drops: port 53 sockets {ours}, dnsperf's sockets {theirs} ({detail})\n"


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def config(netns, upstream, tmp_path):
    return write_config(tmp_path / "twindns.toml")


def test_second_run_without_takeover_refuses_naming_the_pid(netns, config):
    old = Supervisor(netns, config)
    old.wait_ready()
    second = netns.run([sys.executable, "-m", "supervisor", "run", "--config", str(config)], check=False, timeout=60)
    assert second.returncode == 1, second.stderr
    assert f"pid {old.proc.pid}" in second.stderr and "--takeover" in second.stderr, second.stderr
    assert old.status()["ready_workers"] == 2 and address_present(netns)
    assert old.terminate() == 0


def test_takeover_of_a_supervisor_serving_other_addresses_is_refused_before_touching_anything(netns, config,
                                                                                               tmp_path):
    old = Supervisor(netns, config)
    old.wait_ready()
    other = tmp_path / "other"
    other.mkdir()
    other_config = other / "twindns.toml"
    other_config.write_text(config.read_text().replace(LISTEN, "169.254.20.11"))
    p = netns.run([sys.executable, "-m", "supervisor", "run", "--takeover", "--config", str(other_config)],
                  check=False, timeout=60)
    assert p.returncode == 1 and "same listen addresses and port" in p.stderr, p.stderr
    assert "169.254.20.11" not in netns.run(["ip", "-br", "addr"]).stdout
    assert old.status()["ready_workers"] == 2
    assert old.terminate() == 0


def test_takeover_loses_nothing_and_hands_over_the_network_state(netns, config, tmp_path):
    old = Supervisor(netns, config)
    before = old.wait_ready()
    old_workers = [w["pid"] for w in before["workers"]]
    queries = dnsperf.mixed_queries(tmp_path / "q.txt")
    warm(netns, queries)
    load = Load(netns, queries, SECONDS, QPS, timeout=TIMEOUT, outstanding=OUTSTANDING)
    watch = DropWatch(netns)
    sampler = Sampler(netns)
    sampler.start()
    load.wait_until(3)
    new = Supervisor(netns, config, args=("--takeover",), log_name="takeover.log")
    try:
        assert old.proc.wait(timeout=40) == 0, old.output()[-3000:]
    finally:
        sampler.halt.set()
    result = load.result()
    sampler.join()
    after = new.wait(lambda st: st["supervisor"]["pid"] == new.proc.pid and st["ready_workers"] == 2, 20,
                     "the new supervisor answering status")
    print(f"takeover: sent {result.sent} lost {result.lost} max latency {result.max_latency:.3f}")
    assert result.sent >= QPS * SECONDS * 0.9, result.raw
    assert result.lost == 0, result.raw + watch.report() + new.output()[-3000:]
    assert set(result.rcodes) == {"NOERROR"}, result.raw
    assert not any(alive(pid) for pid in old_workers), old_workers
    assert set(worker_pids(netns)) == {w["pid"] for w in after["workers"]}
    assert sampler.samples and all(addr and rules for addr, rules in sampler.samples), sampler.samples
    assert "netsetup_kept" in old.output()          # the old one left the network state alone
    # the new one owns it now: SIGTERM removes everything
    assert new.terminate() == 0
    assert not address_present(netns) and our_rules(netns) == 0, new.output()[-2000:]


def test_sigkilled_supervisor_workers_serve_on_and_the_next_run_takes_over(netns, config, tmp_path):
    old = Supervisor(netns, config)
    before = old.wait_ready()
    old_workers = [w["pid"] for w in before["workers"]]
    queries = dnsperf.mixed_queries(tmp_path / "q.txt")
    warm(netns, queries)
    load = Load(netns, queries, SECONDS, QPS, timeout=TIMEOUT, outstanding=OUTSTANDING)
    watch = DropWatch(netns)
    load.wait_until(3)
    os.kill(old.proc.pid, signal.SIGKILL)
    time.sleep(2)
    assert all(alive(pid) for pid in old_workers), "orphaned workers keep serving"
    assert address_present(netns) and our_rules(netns) > 0
    new = Supervisor(netns, config, log_name="successor.log")
    after = new.wait_ready(20)
    wait_for(lambda: not any(alive(pid) for pid in old_workers), 20, "the orphans to be drained")
    result = load.result()
    print(f"sigkill + run: sent {result.sent} lost {result.lost} max latency {result.max_latency:.3f}")
    assert result.lost <= 10, result.raw + watch.report() + new.output()[-3000:]
    assert sorted(worker_pids(netns)) == sorted(w["pid"] for w in after["workers"])
    assert len(worker_pids(netns)) == 2
    assert "orphan_taken_over" in new.output() and "netsetup_ensured" not in new.output(), new.output()[-3000:]
    assert new.terminate() == 0
    assert not address_present(netns) and our_rules(netns) == 0
