"""Chaos scenarios against a running supervisor under real dnsperf load.
Shared by tests/chaos/ (assertions) and bench/bench_chaos.py (figures)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from helpers import dnsperf
from helpers.twindns import LISTEN, Supervisor


@dataclass
class Outcome:
    scenario: str
    result: dnsperf.DnsperfResult
    notes: dict = field(default_factory=dict)

    def line(self) -> str:
        r = self.result
        extra = "  ".join(f"{k}={v}" for k, v in self.notes.items())
        return (f"{self.scenario:<28} sent {r.sent:>7}  lost {r.lost:>4}  max latency {r.max_latency * 1000:7.1f} ms"
                f"  rcodes {dict(sorted(r.rcodes.items()))}  {extra}")


def answer_timeline(raw: str) -> list[float]:
    """Answers per second in each of dnsperf's -S intervals, in order."""
    return [float(m.group(1)) for m in re.finditer(r"^\d+\.\d+: ([0-9.]+)$", raw, re.M)]


def longest_gap(raw: str, interval: float) -> float:
    """The longest run of -S intervals with no answer at all, in seconds."""
    best = run = 0
    for rate in answer_timeline(raw):
        run = run + 1 if rate == 0 else 0
        best = max(best, run)
    return round(best * interval, 3)


def hit_queries(path: Path, n: int = 2000) -> Path:
    """Names that are all cached after a warm-up (3600 s TTL)."""
    return dnsperf.write_queries(path, [(f"n{i}.hit.test", "A") for i in range(n)])


class Load:
    """dnsperf at a fixed rate in the background.

    16 client sockets with large receive buffers: after a stall (a worker
    starting on a busy 2-core machine) the workers answer their backlog at
    ~180k qps, and 8 sockets with default 208 KiB buffers overflowed inside
    dnsperf (seen at 20,000 qps: lost = the drops counted on dnsperf's own
    sockets in /proc/net/udp, none on the server's). Those replies were sent;
    counting them as lost would measure the load generator."""

    def __init__(self, netns, queryfile: Path, seconds: float, qps: int, timeout: float = 2.0,
                 outstanding: int = 1000, interval: float | None = None, address: str = LISTEN) -> None:
        argv = dnsperf.dnsperf_argv(address, 53, queryfile, seconds, qps=qps, clients=16, timeout=timeout,
                                    buffer_kib=4096, outstanding=outstanding, interval=interval)
        self.started = time.monotonic()
        self.proc = netns.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def wait_until(self, t: float) -> None:
        time.sleep(max(0.0, t - self.elapsed()))

    def result(self, timeout: float = 120) -> dnsperf.DnsperfResult:
        out, err = self.proc.communicate(timeout=timeout)
        if "Queries sent" not in out:
            raise RuntimeError(f"dnsperf failed: {out}\n{err}")
        return dnsperf.parse(out)


def warm(netns, queryfile: Path, qps: int = 4000, seconds: float = 2.0) -> None:
    Load(netns, queryfile, seconds, qps).result()


def rolling_restarts(netns, sup: Supervisor, queryfile: Path, seconds: float, qps: int,
                     restarts: int, label: str) -> Outcome:
    """`restarts` rolling restarts (`twindns restart`) spread over the run."""
    load = Load(netns, queryfile, seconds, qps)
    spacing = (seconds - 4.0) / restarts
    took = []
    for i in range(restarts):
        load.wait_until(2.0 + i * spacing)
        start = time.monotonic()
        p = sup.cli("restart")
        if p.returncode != 0:
            load.proc.kill()
            raise AssertionError(f"restart {i + 1} failed: {p.stderr}\n{sup.output()[-2000:]}")
        took.append(time.monotonic() - start)
    return Outcome(label, load.result(), {"restarts": restarts, "slowest_restart_s": round(max(took), 2)})


def _slot_pid(sup: Supervisor, slot: str) -> int:
    return sup.workers()[slot]["pid"]


def kill_worker(netns, sup: Supervisor, queryfile: Path, seconds: float, qps: int, sig: signal.Signals,
                label: str, timeout: float = 2.0) -> Outcome:
    """Send `sig` to slot A's worker at 2 s; time until a new worker serves slot A."""
    load = Load(netns, queryfile, seconds, qps, timeout=timeout)
    load.wait_until(2.0)
    victim = _slot_pid(sup, "A")
    hit = time.monotonic()
    os.kill(victim, sig)
    status = sup.wait(lambda st: st["workers"][0]["pid"] not in (None, victim)
                      and st["workers"][0]["state"] == "ready", 15, "slot A replaced")
    replaced_after = time.monotonic() - hit
    result = load.result()
    a = status["workers"][0]
    return Outcome(label, result, {"replaced_after_s": round(replaced_after, 2),
                                   "restarts": {k: v for k, v in a["restarts_by_cause"].items() if v}})
