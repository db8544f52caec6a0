"""CPU per miss of the supervised pair (both workers of `twindns run`, each
storing every answer and talking over the peer link) beside one worker and
unbound, in the same run. bench_cache.py measures one worker; this is what a
node running the pair pays per miss.

    sudo python3 bench/pair_misses.py [--seconds 4] [--rounds 2]

All three servers are pinned to CPU 1 (the pair's two workers share it, so
the CPU figure is the pair's total), dnsperf to CPU 0; the workload is
bench_cache.py's: unique names with a 1-second TTL, 500 queries outstanding.
Printed per round: qps, CPU per miss (summed over the server's processes)
and system calls per miss (`perf stat`, when perf is installed).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil  # noqa: E402

import bench_cache as bc  # noqa: E402
import sharing  # noqa: E402
from helpers import dnsperf  # noqa: E402
from helpers.netns import Netns  # noqa: E402
from helpers.unbound import Unbound  # noqa: E402


def syscalls(pids: list[int], seconds: float) -> subprocess.Popen | None:
    if shutil.which("perf") is None:
        return None
    return subprocess.Popen(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p", ",".join(map(str, pids)),
                             "--", "sleep", str(seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if not bc.can_run():
        return 2
    work = bc.workdir("twindns-pair-")
    ns = Netns(prefix="twm")
    pair = None
    pin = ["taskset", "-c", "1"]
    try:
        Unbound(work / "upstream", addr=bc.UPSTREAM, port=53, netns=ns)
        pair = sharing.start_pair(ns, work, bc.UPSTREAM)
        worker_pids = [w["pid"] for w in sharing.pair_workers(ns, work)]
        for pid in worker_pids:
            os.sched_setaffinity(pid, {1})
        servers = {
            "pair": ([psutil.Process(p) for p in worker_pids], sharing.PAIR_LISTEN, 53),
            "twindns": ([psutil.Process(bc.start_twindns(ns, work, [], pin).pid)], "127.0.0.1", bc.PORTS["twindns"]),
            "unbound": ([psutil.Process(bc.start_unbound(ns, work, pin).pid)], "127.0.0.1", bc.PORTS["unbound"]),
        }
        for name in ("twindns", "unbound"):
            bc.wait_answering(ns, bc.PORTS[name])
        figures: dict[str, list[float]] = {name: [] for name in servers}
        for r in range(args.rounds):
            for name, (procs, addr, port) in servers.items():
                qfile = dnsperf.write_queries(work / "miss.txt", [(f"m{r}-{i}.{name}.short.test", "A")
                                                                  for i in range(int(args.seconds * 60000))])
                argv = dnsperf.dnsperf_argv(addr, port, qfile, args.seconds, clients=16, timeout=2.0)
                argv[argv.index("-q") + 1] = "500"
                cpu_before = sum(sum(p.cpu_times()[:2]) for p in procs)
                counting = syscalls([p.pid for p in procs], args.seconds - 1)
                res = dnsperf.run(["taskset", "-c", "0", *argv], netns=ns)
                used = sum(sum(p.cpu_times()[:2]) for p in procs) - cpu_before
                per_miss = used / max(res.completed, 1) * 1e6
                figures[name].append(per_miss)
                calls = ""
                if counting is not None:
                    line = next((l for l in counting.communicate()[1].splitlines() if l[:1].isdigit()), None)
                    if line:
                        calls = f"  {float(line.split(',')[0]) / (res.qps * (args.seconds - 1)):5.2f} syscalls/miss"
                print(f"round {r + 1} {name:8} {res.qps:8.0f} qps  {per_miss:6.1f} us CPU/miss{calls}  "
                      f"lost {res.lost}", flush=True)
                time.sleep(1)
        print("\nCPU per miss, median of rounds, and as a multiple of unbound's:")
        ub = sorted(figures["unbound"])[len(figures["unbound"]) // 2]
        for name, values in figures.items():
            med = sorted(values)[len(values) // 2]
            print(f"  {name:8} {med:6.1f} us  {med / ub:4.2f}x")
    finally:
        sharing.clean_up(ns, pair, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
