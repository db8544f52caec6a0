#!/usr/bin/env python3
"""What the DaemonSet's `resources` are based on (deploy/kubernetes/daemonset.yaml):
memory and CPU of `twindns run` (supervisor plus both workers) with the default
cache (10,000 entries per worker), filled and then kept busy.

    sudo .venv/bin/python bench/k8s_resources.py [--names 12000] [--qps 1000] [--seconds 40]

In a throwaway network namespace: unbound on 127.0.0.2 answers every name
under hit.test (helpers/unbound.py); dnsperf asks --names distinct names (more
than the cache holds, so it fills and evicts) at --qps for --seconds. Every
second the RSS and PSS of each process of the supervisor's tree and their CPU
time are read from /proc; it prints the peak of the summed RSS and PSS and the
mean CPU (millicores) over the run.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import dnsperf  # noqa: E402
from helpers.netns import Netns  # noqa: E402
from helpers.twindns import LISTEN, Supervisor, write_config  # noqa: E402
from helpers.unbound import Unbound  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    return out


def sample(pid: int) -> tuple[int, int, float]:
    """(RSS KiB, PSS KiB, CPU seconds) summed over the tree."""
    rss = pss = 0
    cpu = 0.0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / TICKS
        except OSError:
            pass
    return rss, pss, cpu


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--names", type=int, default=12000)
    ap.add_argument("--qps", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=40)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d, Netns("res") as ns:
        d = Path(d)
        up = Unbound(d / "unbound", netns=ns)
        config = write_config(d / "twindns.toml")          # default [cache]: capacity 10000
        sup = Supervisor(ns, config)
        try:
            sup.wait_ready()
            pid = sup.proc.pid
            queries = dnsperf.write_queries(d / "q.txt", [(f"n{i}.hit.test", "A") for i in range(a.names)])
            idle_rss, idle_pss, _ = sample(pid)
            peak = [0, 0]
            stop = threading.Event()

            def watch() -> None:
                while not stop.wait(1.0):
                    rss, pss, _ = sample(pid)
                    peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)

            t = threading.Thread(target=watch)
            cpu0, t0 = sample(pid)[2], time.monotonic()
            t.start()
            r = dnsperf.run(dnsperf.dnsperf_argv(LISTEN, 53, queries, a.seconds, qps=a.qps), netns=ns)
            cpu1, t1 = sample(pid)[2], time.monotonic()
            stop.set()
            t.join()
            entries = {w["slot"]: w.get("cache_entries") for w in sup.status()["workers"]}
            print(f"idle: RSS {idle_rss / 1024:.1f} MiB, PSS {idle_pss / 1024:.1f} MiB")
            print(f"{a.qps} qps over {a.names} names for {a.seconds} s: {r.completed} answered, {r.lost} lost; "
                  f"cache entries {entries}")
            print(f"peak RSS {peak[0] / 1024:.1f} MiB, peak PSS {peak[1] / 1024:.1f} MiB, "
                  f"mean CPU {1000 * (cpu1 - cpu0) / (t1 - t0):.0f}m")
        finally:
            sup.terminate()
            up.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
