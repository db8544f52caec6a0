"""Cached names under a miss flood, twindns beside unbound: 200,000 unique
NXDOMAIN names at 10,000 qps (20 s), and meanwhile a probe of 100 cached
names at 200 qps whose every answer's latency is kept (dnsperf -v).

    sudo python3 bench/bench_miss_flood.py [--flood-qps 10000] [--seconds 20]

One twindns worker and unbound (1 thread, cache on), each forwarding to the
same upstream (unbound serving local data), in one throwaway network
namespace, one after the other (bench/bench_cache.py's servers). Prints the
flood's answered rate and mean latency and the probe's mean and p99.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cache import LATENCY_LINE, PORTS, UPSTREAM, start_twindns, start_unbound, wait_answering, warm  # noqa: E402
from helpers import dnsperf  # noqa: E402
from helpers.netns import Netns  # noqa: E402
from helpers.unbound import Unbound  # noqa: E402


def probe(ns, port: int, qfile: Path, seconds: float, out: dict) -> None:
    argv = dnsperf.dnsperf_argv("127.0.0.1", port, qfile, seconds, qps=200, clients=2, timeout=2.0)
    raw = subprocess.run(ns.cmd([*argv, "-v"]), capture_output=True, timeout=seconds + 60).stdout
    out["latencies"] = sorted(float(m) * 1e3 for m in LATENCY_LINE.findall(raw))
    out["lost"] = dnsperf.parse(raw.decode(errors="replace")).lost


def run(ns, port: int, work: Path, flood_qps: int, seconds: float) -> str:
    cached = dnsperf.write_queries(work / "cached.txt", [(f"c{i}.hit.test", "A") for i in range(100)])
    flood = dnsperf.write_queries(work / "flood.txt",
                                  [(f"nx{i}.flood.test", "A") for i in range(int(flood_qps * seconds))])
    wait_answering(ns, port)
    warm(ns, port, cached)
    result: dict = {}
    t = threading.Thread(target=probe, args=(ns, port, cached, seconds - 2, result))
    argv = dnsperf.dnsperf_argv("127.0.0.1", port, flood, seconds, qps=flood_qps, clients=4, timeout=2.0)
    flood_proc = ns.popen(argv + ["-n", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t.start()
    out, _ = flood_proc.communicate(timeout=seconds + 120)
    t.join()
    f = dnsperf.parse(out)
    lat = result["latencies"]
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return (f"flood {f.qps:8.0f} qps answered, mean {f.avg_latency * 1e3:6.1f} ms, lost {f.lost:6d} | "
            f"cached probe mean {statistics.fmean(lat):6.2f} ms, p99 {p99:6.2f} ms, lost {result['lost']}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--flood-qps", type=int, default=10000)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--twindns-args", default="", help="extra worker arguments")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="twflood") as tmp, Netns(prefix="twf") as ns:
        work = Path(tmp)
        upstream = Unbound(work / "upstream", addr=UPSTREAM, netns=ns)
        try:
            for name, start in (("twindns", lambda: start_twindns(ns, work, args.twindns_args.split(), [])),
                                ("unbound", lambda: start_unbound(ns, work, []))):
                proc = start()
                try:
                    print(f"{name:8} {run(ns, PORTS[name], work, args.flood_qps, args.seconds)}", flush=True)
                finally:
                    proc.terminate()
                    proc.wait(timeout=10)
        finally:
            upstream.stop()


if __name__ == "__main__":
    main()
