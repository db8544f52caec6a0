"""What per-query metrics cost the hit path.

Two standalone workers in one throwaway network namespace, same upstream
(unbound with local data), same all-hit query file: one counting per query
(the default), one with --no-metrics. dnsperf saturates each in turn, in
ABBA order so drift (other load on the machine, CPU frequency) hits both
alike. The figure compared is the worker's CPU time per answered query
(user + system, from /proc): unlike queries/s it does not move when another
process takes the CPU away. Median queries/s is printed too.

    sudo python3 bench/bench_metrics.py [--rounds 4] [--seconds 3]

Prints one line per run, then `metrics overhead on the hit path: X.X%`
(target: <= 5%). Needs root (network namespace), unbound and dnsperf.
"""
from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import psutil  # noqa: E402

from helpers import dnsperf  # noqa: E402
from helpers.netns import Netns  # noqa: E402
from helpers.unbound import Unbound  # noqa: E402

PORTS = {"metrics on": 5301, "metrics off": 5302}
TARGET_OVERHEAD = 0.05


def start_worker(ns: Netns, port: int, upstream: str, metrics: bool, log: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "worker", "--listen", f"127.0.0.1:{port}", "--upstream", upstream]
    if not metrics:
        argv.append("--no-metrics")
    return ns.popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))


def wait_answering(ns: Netns, port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = ns.run(["dig", "+short", "+tries=1", "+time=1", "-p", str(port), "@127.0.0.1", "a.test"],
                   check=False)
        if p.stdout.strip() == "192.0.2.10":
            return
        time.sleep(0.2)
    raise RuntimeError(f"worker on port {port} did not answer within {timeout:g}s")


@dataclass
class Run:
    qps: float
    completed: int
    lost: int
    cpu_us_per_query: float


def measure(ns: Netns, worker: psutil.Process, port: int, queries: Path, seconds: float,
            clients: int) -> Run:
    argv = dnsperf.dnsperf_argv("127.0.0.1", port, queries, seconds, clients=clients, timeout=1.0)
    before = worker.cpu_times()
    r = dnsperf.run(argv, netns=ns, timeout=seconds + 30)
    after = worker.cpu_times()
    cpu = (after.user + after.system) - (before.user + before.system)
    return Run(r.qps, r.completed, r.lost, cpu * 1e6 / max(r.completed, 1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4, help="ABBA pairs (default 4)")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of one dnsperf run")
    ap.add_argument("--names", type=int, default=1000, help="distinct hit names")
    ap.add_argument("--clients", type=int, default=8, help="dnsperf -c")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp, Netns("bm") as ns:
        tmpdir = Path(tmp)
        upstream = Unbound(tmpdir / "unbound", addr="127.0.0.2", port=53, netns=ns)
        try:
            names = [(f"n{i}.hit.test", "A") for i in range(args.names)]
            queries = dnsperf.write_queries(tmpdir / "hits.txt", names)
            workers = {label: psutil.Process(start_worker(ns, port, upstream.server, label == "metrics on",
                                                          tmpdir / f"{port}.log").pid)
                       for label, port in PORTS.items()}
            for label, port in PORTS.items():
                wait_answering(ns, port)
                # fill the cache: only hits from here on
                measure(ns, workers[label], port, queries, 1.0, args.clients)
            runs: dict[str, list[Run]] = {label: [] for label in PORTS}
            order = []
            for _ in range(args.rounds):
                order += ["metrics on", "metrics off", "metrics off", "metrics on"]
            for label in order:
                r = measure(ns, workers[label], PORTS[label], queries, args.seconds, args.clients)
                runs[label].append(r)
                print(f"{label:12s} {r.qps:9.0f} q/s  {r.cpu_us_per_query:6.2f} us CPU/query  lost {r.lost}",
                      flush=True)
        finally:
            upstream.stop()

    def median(label: str, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs[label])

    on_qps, off_qps = median("metrics on", "qps"), median("metrics off", "qps")
    on_cpu, off_cpu = median("metrics on", "cpu_us_per_query"), median("metrics off", "cpu_us_per_query")
    overhead = on_cpu / off_cpu - 1
    print(f"median q/s: metrics on {on_qps:.0f}, off {off_qps:.0f} (ratio on/off {on_qps / off_qps:.3f})")
    print(f"median CPU per query: metrics on {on_cpu:.2f} us, off {off_cpu:.2f} us "
          f"(ratio on/off {on_cpu / off_cpu:.3f})")
    verdict = "within" if overhead <= TARGET_OVERHEAD else "OVER"
    print(f"metrics overhead on the hit path: {overhead * 100:.1f}% ({verdict} the {TARGET_OVERHEAD:.0%} target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
