"""TCP through restarts, twindns beside unbound: `dnsperf -m tcp -Q 2000 -c 8`
for 16 s with 3 restarts at 3, 7 and 11 s. twindns: `twindns restart`
(rolling, both workers each time), or with --takeover a new `twindns run
--takeover` replacing the whole service each time; unbound (cache on, the
same local data): `unbound-control reload`, its nearest equivalent.

    sudo python3 bench/bench_tcp_restarts.py [--qps 2000] [--seconds 16] [--rounds 1] [--takeover]

Needs root (a throwaway network namespace), unbound and dnsperf. Prints
queries sent and lost per server and round.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import dnsperf  # noqa: E402
from helpers.chaos import hit_queries  # noqa: E402
from helpers.netns import Netns  # noqa: E402
from helpers.twindns import LISTEN, Supervisor, write_config  # noqa: E402
from helpers.unbound import Unbound  # noqa: E402

RESTARTS_AT = (3.0, 7.0, 11.0)


def load(ns, server: str, queryfile: Path, seconds: float, qps: int) -> subprocess.Popen:
    argv = dnsperf.dnsperf_argv(server, 53, queryfile, seconds, qps=qps, clients=8, tcp=True)
    return ns.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def measure(ns, server: str, queryfile: Path, seconds: float, qps: int, restart) -> dnsperf.DnsperfResult:
    # Warm the cache first, so the restarts are what is measured.
    dnsperf.run(dnsperf.dnsperf_argv(server, 53, queryfile, 2, qps=4000, clients=8, tcp=True), ns)
    started = time.monotonic()
    proc = load(ns, server, queryfile, seconds, qps)
    for at in RESTARTS_AT:
        time.sleep(max(0.0, started + at - time.monotonic()))
        restart()
    out, err = proc.communicate(timeout=seconds + 60)
    if "Queries sent" not in out:
        raise RuntimeError(f"dnsperf failed: {out}\n{err}")
    return dnsperf.parse(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--qps", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=16.0)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--verbose", action="store_true", help="print each drain's TCP summary line")
    p.add_argument("--takeover", action="store_true", help="replace the whole service (`twindns run --takeover`)")
    args = p.parse_args()
    for rnd in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="twtcp") as tmp, Netns(prefix="twt") as ns:
            work = Path(tmp)
            queries = hit_queries(work / "hits.txt")
            upstream = Unbound(work / "upstream", netns=ns)
            config = write_config(work / "twindns.toml")
            sups = [Supervisor(ns, config)]
            cache = Unbound(work / "unbound-cache", addr="127.0.0.5", netns=ns, cache=True)
            try:
                sups[0].wait_ready()

                def twindns_restart():
                    if args.takeover:
                        old = sups[-1]
                        sups.append(Supervisor(ns, config, args=("--takeover",), log_name=f"takeover{len(sups)}.log"))
                        if old.proc.wait(timeout=40) != 0:
                            raise RuntimeError(old.output()[-2000:])
                    elif sups[-1].cli("restart").returncode != 0:
                        raise RuntimeError(sups[-1].output()[-2000:])

                def unbound_reload():
                    cache._control("reload")
                for name, server, restart in (("twindns", LISTEN, twindns_restart),
                                              ("unbound", "127.0.0.5", unbound_reload)):
                    r = measure(ns, server, queries, args.seconds, args.qps, restart)
                    print(f"round {rnd + 1} {name:8} sent {r.sent:6d} lost {r.lost:4d}", flush=True)
                    if args.verbose and name == "twindns":
                        print("\n".join(l for s in sups for l in s.output().splitlines() if "tcp drained" in l))
            finally:
                cache.stop()
                for sup in sups:
                    if sup.proc.poll() is None:
                        sup.terminate()
                upstream.stop()


if __name__ == "__main__":
    main()
