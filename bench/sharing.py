"""The `sharing` and `memory` workloads of bench_cache.py, and its `pair`
contender: the supervised pair (`twindns run` in the namespace, on
169.254.20.10:53), beside one standalone worker and unbound.

* sharing: each contender starts cold; dnsperf asks 1,000 names 5 times
  each from 16 client sockets (`-c 16 -n 5`), so the kernel spreads every
  name over both workers of the pair. Printed: upstream queries per unique
  name (the upstream's own count) and the hit ratio (1 - upstream queries
  / queries answered, the same definition for every contender).
* memory: each contender starts cold; RSS before and after 20,000 unique
  names are cached (`-n 1`), per 10,000 entries. The pair's figure is both
  workers' RSS together (each holds every entry) and per worker.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
PAIR_LISTEN = "169.254.20.10"
SHARING_NAMES, SHARING_ROUNDS, SHARING_CLIENTS = 1000, 5, 16
MEMORY_NAMES = 20000


def start_pair(ns, work: Path, upstream: str, sections: str = "[supervisor]\nprobe_interval = 0.5\n",
               tree: Path = ROOT) -> subprocess.Popen:
    """`twindns run` from `tree` (its workers inherit PYTHONPATH, so they run
    the same code: another checkout gives an A/B), `sections` added to its
    config; returns once its workers are linked."""
    cfg = work / "pair.toml"
    cfg.write_text(f'listen = ["{PAIR_LISTEN}"]\ncontrol_socket = "{work}/pair.sock"\n'
                   'health_listen = ""\nmetrics_listen = ""\n' + sections +
                   f'[[upstream]]\nzone = "."\nservers = ["{upstream}:53"]\n')
    log = open(work / "pair.log", "wb")
    proc = ns.popen([sys.executable, "-m", "supervisor", "run", "--config", str(cfg), "--state-dir", str(work)],
                    stdout=log, stderr=subprocess.STDOUT, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is None and "peers_linked" in (work / "pair.log").read_text(errors="replace"):
            return proc
        time.sleep(0.2)
    raise RuntimeError(f"the pair did not come up: {(work / 'pair.log').read_text()[-2000:]}")


def stop_pair(ns, proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def clean_up(ns, pair: subprocess.Popen | None, work: Path) -> None:
    """A bench's end: its pair stopped (if it got that far), its namespace and work directory gone."""
    if pair is not None:
        stop_pair(ns, pair)
    ns.close()
    shutil.rmtree(work, ignore_errors=True)


def pair_workers(ns, work: Path) -> list[dict]:
    out = ns.run([sys.executable, "-m", "supervisor", "status", "--json", "--socket", f"{work}/pair.sock"],
                 check=False).stdout
    return json.loads(out)["workers"]


def ask(ns, server: str, port: int, qfile: Path, rounds: int, clients: int) -> int:
    """dnsperf through the file `rounds` times; the number of answers."""
    p = subprocess.run(ns.cmd(["dnsperf", "-s", server, "-p", str(port), "-d", str(qfile), "-n", str(rounds),
                               "-c", str(clients), "-q", "200", "-t", "3"]), capture_output=True, text=True)
    completed = [int(line.split()[2]) for line in p.stdout.splitlines() if "Queries completed:" in line]
    return completed[0] if completed else 0


def rss(pids: list[int]) -> int:
    return sum(psutil.Process(pid).memory_info().rss for pid in pids)


def settle_all(pids: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    procs = [psutil.Process(p) for p in pids]
    while time.monotonic() < deadline:
        before = sum(sum(p.cpu_times()[:2]) for p in procs)
        time.sleep(0.3)
        if sum(sum(p.cpu_times()[:2]) for p in procs) - before < 0.3 * 0.05 * len(procs):
            return


def run(ns, work: Path, upstream, contenders: dict, workloads: list[str], write_queries) -> None:
    """`contenders`: name -> (start() -> (pids, server, port, stop())). Prints one table per workload."""
    rows = []
    for name, start in contenders.items():
        row = {"server": name}
        if "sharing" in workloads:
            qfile = write_queries(work / f"share-{name}.txt",
                                  [(f"s{i}.{name}.hit.test", "A") for i in range(SHARING_NAMES)])
            pids, server, port, stop = start()
            try:
                before = upstream.queries()
                answered = ask(ns, server, port, qfile, SHARING_ROUNDS, SHARING_CLIENTS)
                asked = upstream.queries() - before
            finally:
                stop()
            row.update(per_name=asked / SHARING_NAMES, hit_ratio=1 - asked / max(answered, 1), answered=answered)
        if "memory" in workloads:
            qfile = write_queries(work / f"mem-{name}.txt",
                                  [(f"m{i}.{name}.hit.test", "A") for i in range(MEMORY_NAMES)])
            pids, server, port, stop = start()
            try:
                settle_all(pids)
                before = rss(pids)
                ask(ns, server, port, qfile, 1, 4)
                settle_all(pids)
                grew = rss(pids) - before
            finally:
                stop()
            row.update(rss_per_10k=grew / MEMORY_NAMES * 10000, rss_per_10k_each=grew / len(pids) / MEMORY_NAMES * 10000)
        rows.append(row)
        print(f"{name}: {row}", flush=True)
    if "sharing" in workloads:
        print(f"\nsharing: {SHARING_NAMES} names x {SHARING_ROUNDS} from {SHARING_CLIENTS} client sockets, cold start")
        print(f"{'server':8} {'upstream/name':>13} {'hit ratio':>9} {'answered':>8}")
        for r in rows:
            print(f"{r['server']:8} {r['per_name']:13.3f} {r['hit_ratio']:9.1%} {r['answered']:8d}")
    if "memory" in workloads:
        print(f"\nmemory: RSS growth for {MEMORY_NAMES} cached names, per 10,000 entries")
        base = next((r["rss_per_10k_each"] for r in rows if r["server"] == "unbound"), None)
        print(f"{'server':8} {'all processes':>13} {'per process':>11} {'x unbound':>9}")
        for r in rows:
            ratio = f"{r['rss_per_10k_each'] / base:9.2f}" if base else f"{'-':>9}"
            print(f"{r['server']:8} {r['rss_per_10k'] / 2**20:10.2f} MiB {r['rss_per_10k_each'] / 2**20:8.2f} MiB"
                  f" {ratio}")
