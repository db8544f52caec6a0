"""Chaos benchmark: the chaos scenarios of tests/chaos/ as figures, each run
with the design's handover (connect() steering, drain, socket hand-over) and
with the plain-close control (TWINDNS_UNSAFE_PLAIN_CLOSE=1).

    sudo python3 bench/bench_chaos.py [--qps 6000] [--seconds 20] [--restarts 5]

Needs root (a throwaway network namespace; the host is not touched), unbound
and dnsperf. Prints per scenario: queries sent, lost, max latency, rcodes.
"""
from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import dnsperf  # noqa: E402
from helpers.chaos import hit_queries, kill_worker, rolling_restarts, warm  # noqa: E402
from helpers.netns import Netns  # noqa: E402
from helpers.twindns import Supervisor, write_config  # noqa: E402
from helpers.unbound import Unbound  # noqa: E402

PLAIN = {"TWINDNS_UNSAFE_PLAIN_CLOSE": "1"}


def scenario(workdir: Path, env: dict | None, run):
    """Fresh namespace, upstream and supervisor for one scenario."""
    with Netns(prefix="twb") as ns:
        upstream = Unbound(workdir / "unbound", netns=ns)
        sup = Supervisor(ns, write_config(workdir / "twindns.toml"), env=env)
        try:
            sup.wait_ready()
            return run(ns, sup)
        finally:
            if sup.proc.poll() is None:
                sup.terminate()
            upstream.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--qps", type=int, default=6000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--restarts", type=int, default=5)
    args = ap.parse_args()
    print(f"# {args.qps} qps, mixed workload = half 1-second-TTL names (misses in flight); "
          f"kill scenarios on an all-hit warmed cache, {args.seconds:g} s rolling / 8 s kill runs")
    plans = []
    for label, env in (("steering", None), ("plain close", PLAIN)):
        plans.append((f"rolling x{args.restarts} ({label})", env, lambda ns, sup, wd, lbl: rolling_restarts(
            ns, sup, dnsperf.mixed_queries(wd / "q.txt"), args.seconds, args.qps, args.restarts, lbl)))
        plans.append((f"SIGKILL ({label})", env, lambda ns, sup, wd, lbl: _kill(ns, sup, wd, signal.SIGKILL, lbl,
                                                                               args.qps)))
    plans.append(("SIGSTOP (steering)", None, lambda ns, sup, wd, lbl: _kill(ns, sup, wd, signal.SIGSTOP, lbl,
                                                                             args.qps, timeout=5.0)))
    for label, env, run in plans:
        with tempfile.TemporaryDirectory(prefix="twbench") as d:
            wd = Path(d)
            out = scenario(wd, env, lambda ns, sup: run(ns, sup, wd, label))
            print(out.line(), flush=True)
    return 0


def _kill(ns, sup, wd: Path, sig, label: str, qps: int, timeout: float = 2.0):
    queries = hit_queries(wd / "hit.txt")
    warm(ns, queries)
    return kill_worker(ns, sup, queries, 8, qps, sig, label, timeout=timeout)


if __name__ == "__main__":
    sys.exit(main())
