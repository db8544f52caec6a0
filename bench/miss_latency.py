#!/usr/bin/env python3
"""Fixed-rate latency of lone misses (or hits), in many short slices that
alternate between the contenders, so each sees the same share of a noisy
machine. bench_cache.py's latency figures come from one 3-second run per
contender per round; on this shared machine unbound's own p99 moved from
0.23 to 0.84 ms between such runs, more than the gap being measured.

    sudo python3 bench/miss_latency.py [--slices 16] [--seconds 1.5] [--rate 2000]
                                       [--hit] [--only twindns unbound pair other --tree DIR] [--pair-free]

Every slice asks new names at --rate (with --hit: 10,000 cached names at
--rate, 20,000 by default then), pinned as bench_cache.py pins them
(contender on CPU 1, dnsperf on CPU 0). Printed per contender, over the
medians of the slices: mean, p50, p90, p99, p99.9 and the server's CPU per
answer; and the p99 over every answer of every slice.

`pair` is the supervised pair (`twindns run`, bench/sharing.py), both
workers on CPU 1 (with --pair-free on any CPU, as a node runs them), its
CPU summed over them: what a node runs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_cache as bc  # noqa: E402
import sharing  # noqa: E402
from helpers import dnsperf  # noqa: E402
from helpers.netns import Netns  # noqa: E402
from helpers.unbound import Unbound  # noqa: E402

QUANTILES = (0.5, 0.9, 0.99, 0.999)


def cpu_seconds(procs: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def one_slice(ns: Netns, target: tuple[str, int], qfile: Path, seconds: float, rate: int,
              procs: list[psutil.Process]) -> tuple[list[float], float]:
    """(every answer's latency in ms, sorted; server CPU us per answer) of one fixed-rate slice."""
    cpu = cpu_seconds(procs)
    lat, _lost = bc.latencies(ns, target[1], qfile, seconds, rate, ["taskset", "-c", "0"], target[0])
    cpu = cpu_seconds(procs) - cpu
    return [v * 1e3 for v in lat], cpu / len(lat) * 1e6


def quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=1.5, help="length of each slice")
    ap.add_argument("--rate", type=int, help="offered qps (default 2,000; 20,000 with --hit)")
    ap.add_argument("--hit", action="store_true", help="cached names instead of new ones")
    ap.add_argument("--only", nargs="*", default=["twindns", "unbound"],
                    choices=["twindns", "unbound", "pair", "other"])
    ap.add_argument("--tree", type=Path, help="the checkout whose worker the `other` contender runs")
    ap.add_argument("--pair-free", action="store_true",
                    help="leave the pair's workers free on every CPU (as a node runs them), not both on CPU 1")
    args = ap.parse_args()
    rate = args.rate or (20000 if args.hit else 2000)
    bc.check_tree(ap, args.only, args.tree)
    if not bc.can_run():
        return 2
    work = bc.workdir("twindns-lat-")
    ns = Netns(prefix="twl")
    procs: dict[str, subprocess.Popen] = {}
    pair = None
    pin = ["taskset", "-c", "1"]
    try:
        Unbound(work / "upstream", addr=bc.UPSTREAM, port=53, netns=ns)
        starters = {"twindns": lambda: bc.start_twindns(ns, work, [], pin),
                    "unbound": lambda: bc.start_unbound(ns, work, pin),
                    "other": lambda: bc.start_twindns(ns, work, [], pin, "other", args.tree)}
        # contender -> ((address, port), the processes whose CPU it spends)
        targets: dict[str, tuple[tuple[str, int], list[psutil.Process]]] = {}
        for name in args.only:
            if name == "pair":
                pair = sharing.start_pair(ns, work, bc.UPSTREAM)
                pids = [w["pid"] for w in sharing.pair_workers(ns, work)]
                for pid in pids if not args.pair_free else ():
                    os.sched_setaffinity(pid, {1})
                targets[name] = ((sharing.PAIR_LISTEN, 53), [psutil.Process(pid) for pid in pids])
                continue
            procs[name] = starters[name]()
            bc.wait_answering(ns, bc.PORTS[name])
            targets[name] = (("127.0.0.1", bc.PORTS[name]), [psutil.Process(procs[name].pid)])
        hit_file = dnsperf.write_queries(work / "hit.txt", [(f"h{i}.hit.test", "A") for i in range(10000)])
        slices: dict[str, list[tuple[list[float], float]]] = {name: [] for name in args.only}
        for s in range(args.slices):
            for name in (args.only if s % 2 == 0 else args.only[::-1]):
                target, servers = targets[name]
                if args.hit:
                    bc.warm(ns, target[1], hit_file, target[0])
                    qfile = hit_file
                else:
                    qfile = dnsperf.write_queries(work / "miss.txt", [(f"s{s}-{i}.{name}.short.test", "A")
                                                                      for i in range(int(rate * args.seconds * 1.2))])
                for proc in servers:
                    bc.settle(proc)
                slices[name].append(one_slice(ns, target, qfile, args.seconds, rate, servers))
        print(f"{args.slices} slices of {args.seconds:g} s at {rate} qps ({'hits' if args.hit else 'lone misses'}),"
              " alternating; medians over slices, then p99 over every answer:")
        print(f"{'server':8} {'mean ms':>8} {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>7} {'us/q':>6} {'p99 all':>8}")
        for name, runs in slices.items():
            med = [statistics.median(statistics.fmean(lat) for lat, _ in runs)]
            med += [statistics.median(quantile(lat, q) for lat, _ in runs) for q in QUANTILES]
            cpu = statistics.median(c for _, c in runs)
            every = sorted(v for lat, _ in runs for v in lat)
            print(f"{name:8} {med[0]:8.3f} {med[1]:7.3f} {med[2]:7.3f} {med[3]:7.3f} {med[4]:7.3f} {cpu:6.1f} "
                  f"{quantile(every, 0.99):8.3f}")
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(timeout=20)
        sharing.clean_up(ns, pair, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
