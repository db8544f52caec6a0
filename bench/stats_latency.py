#!/usr/bin/env python3
"""Hit latency of the supervised pair with a large cache: what the
supervisor's once-a-second STATS requests cost the queries that arrive
meanwhile. bench_cache.py runs a standalone worker, which nobody asks for
STATS, so it cannot show this.

    sudo python3 bench/stats_latency.py [--entries 100000] [--rounds 2] [--tree DIR]

`twindns run` (this tree's, or with --tree another checkout's, for an
A/B) in a throwaway network namespace, `[cache] capacity` = --entries,
forwarding to unbound serving local data. The cache is filled with
--entries names (1-hour TTL) from 16 client sockets, so both workers hold
them all; then dnsperf asks 20,000 of them at 2,000 qps for 10 s (every
query a hit) and the script prints p50, p99, p99.9 and the maximum over
every answer (dnsperf -v).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_cache as bc  # noqa: E402
import sharing  # noqa: E402
from helpers import dnsperf  # noqa: E402
from helpers.netns import Netns  # noqa: E402
from helpers.unbound import Unbound  # noqa: E402


def one_round(tree: Path, entries: int) -> list[float]:
    work = bc.workdir("twindns-stats-")
    ns = Netns(prefix="tws")
    pair = None
    try:
        Unbound(work / "upstream", addr=bc.UPSTREAM, port=53, netns=ns)
        pair = sharing.start_pair(ns, work, bc.UPSTREAM, f"[cache]\ncapacity = {entries}\n", tree)
        names = [(f"f{i}.hit.test", "A") for i in range(entries)]
        fill = dnsperf.write_queries(work / "fill.txt", names)
        subprocess.run(ns.cmd(["dnsperf", "-s", sharing.PAIR_LISTEN, "-d", str(fill), "-n", "1", "-c", "16",
                               "-q", "200"]), capture_output=True, check=True)
        time.sleep(2)
        probe = dnsperf.write_queries(work / "probe.txt", names[:20000])
        return bc.latencies(ns, 53, probe, 10, 2000, [], sharing.PAIR_LISTEN)[0]
    finally:
        sharing.clean_up(ns, pair, work)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=100000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent,
                    help="the checkout whose supervisor and workers run (default: this one)")
    args = ap.parse_args()
    if not bc.can_run():
        return 2
    for r in range(args.rounds):
        lat = one_round(args.tree.resolve(), args.entries)
        n = len(lat)
        print(f"round {r + 1}: {n} answers  p50 {lat[n // 2] * 1e3:.3f}  p99 {lat[int(n * 0.99)] * 1e3:.3f}  "
              f"p99.9 {lat[int(n * 0.999)] * 1e3:.3f}  max {lat[-1] * 1e3:.3f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
