#!/usr/bin/env python3
"""Cache benchmark: one twindns worker vs unbound vs dnsmasq, each caching
the same upstream, same query files, same run, alternating.

    sudo python3 bench/bench_cache.py [--seconds 5] [--rounds 3] [--rate 20000] [--miss-rate 2000]
    sudo python3 bench/bench_cache.py --workloads sharing memory --only twindns pair unbound

The `sharing` and `memory` workloads and the `pair` contender (the
supervised pair) are described in bench/sharing.py.

Everything runs in a throwaway network namespace: the upstream is unbound
serving local data on 127.0.0.2:53 (tests/helpers/unbound.py, its own cache
off, so it answers every miss from its data); the contenders listen on
127.0.0.1 and forward to it:

* twindns  `python -m worker` (standalone, one process)
* unbound  1 thread, forward-zone "." to the upstream, cache on
* dnsmasq  --server to the upstream, cache 10000
* relay    only with --only relay: bench/relay.py, bytes relayed upstream
           and back by a few lines of uvloop, a new socket per query (with
           --relay-arg=--keep one kept socket): the floor of a miss in Python
* other    only with --only other: the worker of another checkout (--tree
           DIR, its C accelerator built in place there: python3 setup.py
           build_ext --inplace), for an A/B of two versions in one run

Workloads:

* hit   10,000 names with a 1-hour TTL, all cached by a warm-up pass before each run
* miss  unique names with a 1-second TTL (every query is a cache miss)

Two measurements per contender and workload, per round:

* throughput: dnsperf unthrottled (-c 4 -q 500) for --seconds: qps and dnsperf's mean latency;
* latency: dnsperf at a fixed rate (--rate for hits, --miss-rate for misses)
  with -v, which prints every answer's own
  latency (dnsperf 2.10 has no histogram), so mean and p99 are exact over
  all answers of that run. A fixed rate below every contender's capacity
  compares service time rather than queueing. `@rate us/q` is the
  server's CPU per answer in that run: at 2,000 misses/s nearly every
  miss is alone, and what it costs then, caches cold between queries, is
  what its latency is made of.

With --pin (the default on 2 or more CPUs) every contender runs on CPU 1
and dnsperf on CPU 0 (taskset): on a small machine an unpinned server and
load generator fight over the same cores, and the qps then says as much
about how much CPU the server leaves dnsperf as about the server. `us/q` is
the server's CPU time (user + system) per answered query in the
throughput run: the cost figure that does not depend on the client.

After each run the bench waits until that server is idle again, so a
backlog it is still working off does not slow the next run. The figures
printed are medians over rounds; ratios are to unbound; `cpu` is the
server's CPU share during the throughput run.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import dnsperf  # noqa: E402
from helpers.netns import Netns  # noqa: E402
from helpers.unbound import Unbound  # noqa: E402

import sharing  # noqa: E402

UPSTREAM = "127.0.0.2"
PORTS = {"twindns": 5301, "unbound": 5302, "dnsmasq": 5303, "relay": 5304, "other": 5305}
# Run unless --only says otherwise. Not `relay` (bench/relay.py): the floor of
# a Python miss, no cache (a hit is a miss to it).
DEFAULT_CONTENDERS = ["twindns", "unbound", "dnsmasq"]
LATENCY_LINE = re.compile(rb"^> \S+ \S+ \S+ ([0-9.]+)$", re.M)


@dataclass
class Figures:
    qps: list[float] = field(default_factory=list)
    mean_ms: list[float] = field(default_factory=list)      # throughput run
    lat_mean_ms: list[float] = field(default_factory=list)  # fixed-rate run
    lat_p99_ms: list[float] = field(default_factory=list)
    lat_us_per_query: list[float] = field(default_factory=list)  # server CPU us per answer, fixed-rate run
    cpu: list[float] = field(default_factory=list)          # server CPU share in the throughput run
    us_per_query: list[float] = field(default_factory=list)  # server CPU us per answered query, same run
    lost: int = 0


def can_run() -> bool:
    """Root (network namespaces) and dnsperf are here; else say so on stderr."""
    if os.geteuid() != 0 or shutil.which("dnsperf") is None:
        print("needs root (network namespace) and dnsperf", file=sys.stderr)
        return False
    return True


def check_tree(ap: argparse.ArgumentParser, only: list[str], tree: Path | None) -> None:
    """--tree goes with the `other` contender, and only with it."""
    if ("other" in only) != (tree is not None):
        ap.error("--tree DIR goes with the `other` contender (--only ... other), and only with it")


def workdir(prefix: str) -> Path:
    """A scratch directory the servers' unprivileged users can read."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(work, 0o755)
    return work


def start_twindns(ns: Netns, work: Path, extra: list[str], pin: list[str], name: str = "twindns",
                  tree: Path = ROOT) -> subprocess.Popen:
    """A standalone worker of `tree` (this checkout, or --tree's for `other`)."""
    log = open(work / f"{name}.log", "wb")
    return ns.popen([*pin, sys.executable, "-m", "worker", "--listen", f"127.0.0.1:{PORTS[name]}",
                     "--upstream", UPSTREAM, *extra], stdout=log, stderr=subprocess.STDOUT,
                    cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)})


def start_unbound(ns: Netns, work: Path, pin: list[str]) -> subprocess.Popen:
    conf = work / "unbound-fwd.conf"
    conf.write_text("\n".join([
        "server:",
        f"    interface: 127.0.0.1@{PORTS['unbound']}",
        "    do-daemonize: no", "    use-syslog: no", '    logfile: ""', '    username: ""',
        '    chroot: ""', f'    directory: "{work}"', '    pidfile: ""',
        "    access-control: 0.0.0.0/0 allow", "    num-threads: 1", "    verbosity: 0",
        '    module-config: "iterator"', "    do-not-query-localhost: no", "    do-ip6: no",
        "    msg-cache-size: 64m", "    rrset-cache-size: 128m",
        # The same receive buffer as the worker (worker/main.py UDP_RCVBUF): a
        # default-sized queue overflows under dnsperf and the lost queries,
        # not unbound's CPU, would set its figure.
        "    so-rcvbuf: 4m",
        # test. is one of unbound's default (RFC 6761) local zones: forward it instead.
        '    local-zone: "test." nodefault',
        "forward-zone:", '    name: "."', f"    forward-addr: {UPSTREAM}@53", ""]))
    log = open(work / "unbound-fwd.log", "wb")
    return ns.popen([*pin, "unbound", "-d", "-p", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)


def start_dnsmasq(ns: Netns, work: Path, pin: list[str]) -> subprocess.Popen:
    log = open(work / "dnsmasq.log", "wb")
    return ns.popen([*pin, "dnsmasq", "-k", "--no-resolv", "--no-hosts", "--no-poll", "--user=root",
                     f"--server={UPSTREAM}#53", "--listen-address=127.0.0.1", "--bind-interfaces",
                     f"--port={PORTS['dnsmasq']}", "--cache-size=10000", "--dns-forward-max=1000",
                     "--pid-file="], stdout=log, stderr=subprocess.STDOUT)


def start_relay(ns: Netns, work: Path, extra: list[str], pin: list[str]) -> subprocess.Popen:
    log = open(work / "relay.log", "wb")
    return ns.popen([*pin, sys.executable, str(Path(__file__).with_name("relay.py")), str(PORTS["relay"]), UPSTREAM,
                     *extra], stdout=log, stderr=subprocess.STDOUT)


def wait_answering(ns: Netns, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = ns.run(["dig", "@127.0.0.1", "-p", str(port), "+time=1", "+tries=1", "+short", "a.test"],
                   check=False)
        if "192.0.2.10" in r.stdout:
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing answers on port {port}")


def throughput(ns: Netns, port: int, qfile: Path, seconds: float, pin: list[str]) -> dnsperf.DnsperfResult:
    argv = dnsperf.dnsperf_argv("127.0.0.1", port, qfile, seconds, clients=4, timeout=2.0)
    argv[argv.index("-q") + 1] = "500"
    return dnsperf.run([*pin, *argv], netns=ns)


def latencies(ns: Netns, port: int, qfile: Path, seconds: float, rate: int,
              pin: list[str], address: str = "127.0.0.1") -> tuple[list[float], int]:
    """Every answer's own latency in seconds, sorted (dnsperf -v at `rate`), and the lost count."""
    argv = dnsperf.dnsperf_argv(address, port, qfile, seconds, qps=rate, clients=4, timeout=2.0)
    # To a file, read afterwards: a pipe read while dnsperf runs woke this
    # process per burst of lines (-v prints one per answer), 4-5 ms at a time
    # on dnsperf's own CPU (perf sched), delaying the answers being timed.
    with tempfile.TemporaryFile() as sink:
        subprocess.run(ns.cmd([*pin, *argv, "-v"]), stdout=sink, stderr=subprocess.DEVNULL, timeout=seconds + 60)
        sink.seek(0)
        out = sink.read()
    lat = sorted(float(m) for m in LATENCY_LINE.findall(out))
    if not lat:
        raise RuntimeError(f"no answers: {out[-2000:]!r}")
    return lat, dnsperf.parse(out.decode(errors="replace")).lost


def latency(ns: Netns, port: int, qfile: Path, seconds: float, rate: int,
            pin: list[str]) -> tuple[float, float, int, int]:
    """(mean ms, p99 ms, lost, answers) from every answer's own latency (dnsperf -v)."""
    lat, lost = latencies(ns, port, qfile, seconds, rate, pin)
    return statistics.fmean(lat) * 1e3, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3, lost, len(lat)


def warm(ns: Netns, port: int, qfile: Path, address: str = "127.0.0.1") -> None:
    """Ask every name once, so the hit workload is all hits."""
    subprocess.run(ns.cmd(["dnsperf", "-s", address, "-p", str(port), "-d", str(qfile),
                           "-n", "1", "-c", "4", "-q", "200"]), capture_output=True, check=True)


def settle(proc: psutil.Process, timeout: float = 30.0) -> None:
    """Wait until the server has worked off what the last run left queued (a
    server slower than the offered load keeps answering after dnsperf
    stopped), so it does not compete with the next run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = sum(proc.cpu_times()[:2])
        time.sleep(0.3)
        if sum(proc.cpu_times()[:2]) - before < 0.3 * 0.05:
            return


def cold_starters(ns: Netns, work: Path, args, pin: list[str]) -> dict:
    """name -> start(): a fresh server, returned as (pids, address, port, stop)."""
    def standalone(start, name):
        def go():
            proc = start()
            wait_answering(ns, PORTS[name])

            def stop():
                proc.terminate()
                proc.wait(timeout=20)
            return [proc.pid], "127.0.0.1", PORTS[name], stop
        return go

    def pair():
        proc = sharing.start_pair(ns, work, UPSTREAM)
        pids = [w["pid"] for w in sharing.pair_workers(ns, work)]
        return pids, sharing.PAIR_LISTEN, 53, lambda: sharing.stop_pair(ns, proc)
    every = {"twindns": standalone(lambda: start_twindns(ns, work, args.worker_arg, pin), "twindns"),
             "unbound": standalone(lambda: start_unbound(ns, work, pin), "unbound"),
             "dnsmasq": standalone(lambda: start_dnsmasq(ns, work, pin), "dnsmasq"),
             "other": standalone(lambda: start_twindns(ns, work, args.worker_arg, pin, "other", args.tree), "other"),
             "pair": pair}
    return {name: every[name] for name in args.only if name in every}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each dnsperf run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=int, default=20000, help="offered qps of the hit latency runs")
    ap.add_argument("--miss-rate", type=int, default=2000, help="offered qps of the miss latency runs")
    ap.add_argument("--only", nargs="*", default=DEFAULT_CONTENDERS, choices=[*PORTS, "pair"])
    ap.add_argument("--workloads", nargs="*", default=["hit", "miss"], choices=["hit", "miss", "sharing", "memory"])
    ap.add_argument("--worker-arg", action="append", default=[], help="extra argument for python -m worker")
    ap.add_argument("--relay-arg", action="append", default=[], help="extra argument for bench/relay.py (--keep)")
    ap.add_argument("--tree", type=Path, help="the checkout whose worker the `other` contender runs")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=(os.cpu_count() or 1) >= 2,
                    help="servers on CPU 1, dnsperf on CPU 0 (default with 2+ CPUs)")
    args = ap.parse_args()
    check_tree(ap, args.only, args.tree)
    server_pin = ["taskset", "-c", "1"] if args.pin else []
    client_pin = ["taskset", "-c", "0"] if args.pin else []
    if not can_run():
        return 2
    work = workdir("twindns-bench-")
    hit_file = dnsperf.write_queries(work / "hit.txt", [(f"h{i}.hit.test", "A") for i in range(10000)])
    ns = Netns(prefix="twb")
    try:
        upstream = Unbound(work / "upstream", addr=UPSTREAM, port=53, netns=ns)
        extra = [w for w in args.workloads if w in ("sharing", "memory")]
        if extra:
            sharing.run(ns, work, upstream, cold_starters(ns, work, args, server_pin), extra, dnsperf.write_queries)
        args.workloads = [w for w in args.workloads if w in ("hit", "miss")]
        args.only = [n for n in args.only if n != "pair"]
        if not args.workloads:
            return 0
        procs = {}
        starters = {"twindns": lambda: start_twindns(ns, work, args.worker_arg, server_pin),
                    "unbound": lambda: start_unbound(ns, work, server_pin),
                    "dnsmasq": lambda: start_dnsmasq(ns, work, server_pin),
                    "relay": lambda: start_relay(ns, work, args.relay_arg, server_pin),
                    "other": lambda: start_twindns(ns, work, args.worker_arg, server_pin, "other", args.tree)}
        for name in args.only:
            procs[name] = psutil.Process(starters[name]().pid)
            wait_answering(ns, PORTS[name])
        results = {(w, n): Figures() for w in args.workloads for n in args.only}
        load = os.getloadavg()
        for r in range(args.rounds):
            for workload in args.workloads:
                for name in (args.only if r % 2 == 0 else list(reversed(args.only))):
                    fig = results[(workload, name)]
                    if workload == "hit":
                        # The miss workload may have pushed hit names out of a bounded cache.
                        warm(ns, PORTS[name], hit_file)
                        settle(procs[name])
                        tput_file = lat_file = hit_file
                    else:
                        count = int(max(args.seconds * 60000, args.miss_rate * args.seconds) * 1.2)
                        tput_file = dnsperf.write_queries(
                            work / "miss-t.txt", [(f"t{r}-{i}.{name}.short.test", "A") for i in range(count)])
                        lat_file = dnsperf.write_queries(
                            work / "miss-l.txt", [(f"l{r}-{i}.{name}.short.test", "A") for i in range(count)])
                    cpu_before, t_before = sum(procs[name].cpu_times()[:2]), time.monotonic()
                    res = throughput(ns, PORTS[name], tput_file, args.seconds, client_pin)
                    cpu_used = sum(procs[name].cpu_times()[:2]) - cpu_before
                    fig.cpu.append(cpu_used / (time.monotonic() - t_before))
                    fig.us_per_query.append(cpu_used / max(res.completed, 1) * 1e6)
                    fig.qps.append(res.qps)
                    fig.mean_ms.append(res.avg_latency * 1e3)
                    fig.lost += res.lost
                    settle(procs[name])
                    rate = args.rate if workload == "hit" else args.miss_rate
                    cpu_before = sum(procs[name].cpu_times()[:2])
                    mean, p99, lost, answers = latency(ns, PORTS[name], lat_file, min(args.seconds, 3.0), rate,
                                                       client_pin)
                    fig.lat_us_per_query.append((sum(procs[name].cpu_times()[:2]) - cpu_before) / answers * 1e6)
                    settle(procs[name])
                    fig.lat_mean_ms.append(mean)
                    fig.lat_p99_ms.append(p99)
                    fig.lost += lost
                    print(f"round {r + 1} {workload:4} {name:8} {res.qps:9.0f} qps (cpu {fig.cpu[-1]:4.0%},"
                          f" {fig.us_per_query[-1]:5.2f} us/q)"
                          f"  mean {res.avg_latency * 1e3:6.3f} ms"
                          f" | at {rate} qps: mean {mean:6.3f} ms  p99 {p99:6.3f} ms"
                          f"  {fig.lat_us_per_query[-1]:6.1f} us/q", flush=True)
        load_after = os.getloadavg()
        print(f"\nupstream queries: {upstream.queries()}; load average before {load[0]:.2f}, after {load_after[0]:.2f}"
              f" ({os.cpu_count()} CPUs; {'servers on CPU 1, dnsperf on CPU 0' if args.pin else 'not pinned'})")
        print(f"\nmedians over {args.rounds} rounds, {args.seconds:g} s runs (latency runs at a fixed "
              f"{args.rate} qps for hits, {args.miss_rate} qps for misses; p99 over every answer):")
        print(f"{'workload':8} {'server':8} {'qps':>9} {'x unbound':>9} {'cpu':>5} {'us/q':>6} {'mean ms':>8} {'@rate mean':>10} "
              f"{'@rate p99':>9} {'@rate us/q':>10} {'lost':>5}")
        for workload in args.workloads:
            base = statistics.median(results[(workload, "unbound")].qps) if "unbound" in args.only else None
            for name in args.only:
                fig = results[(workload, name)]
                qps = statistics.median(fig.qps)
                ratio = f"{qps / base:9.2f}" if base else f"{'-':>9}"
                print(f"{workload:8} {name:8} {qps:9.0f} {ratio} {statistics.median(fig.cpu):5.0%} "
                      f"{statistics.median(fig.us_per_query):6.2f} "
                      f"{statistics.median(fig.mean_ms):8.3f} "
                      f"{statistics.median(fig.lat_mean_ms):10.3f} {statistics.median(fig.lat_p99_ms):9.3f} "
                      f"{statistics.median(fig.lat_us_per_query):10.1f} {fig.lost:5d}")
    finally:
        ns.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
