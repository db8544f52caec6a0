"""Chaos benchmark: the chaos scenarios of tests/chaos/ as figures, each run
with the design's handover (connect() steering, drain, socket hand-over) and
with the plain-close control (TWINDNS_UNSAFE_PLAIN_CLOSE=1); and the three
ways the whole service is replaced, each beside a control run of a plain
stop then start:

    sudo python3 bench/bench_chaos.py [--qps 6000] [--seconds 20] [--restarts 5] [--only workers|service]

* `twindns run --takeover` beside a running supervisor (network namespace);
* SIGKILL of the supervisor, `twindns run` 2 s later (network namespace);
* `systemctl restart twindns` under a real systemd (a booted Debian container,
  tests/helpers/systemd_container.py; the root file system is cached);
* SIGKILL of the supervisor under that systemd, restarted by `Restart=`
  (control: the unit with `KillMode=mixed`, which kills the workers too).

Needs root (throwaway namespaces and containers; the host is not touched),
unbound and dnsperf. Prints per scenario: queries sent, lost, max latency,
rcodes; service scenarios also the longest gap with no answer at all, from
dnsperf's answers per 100 ms (-S 0.1), and that timeline around the switch.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import dnsperf  # noqa: E402
from helpers.chaos import Load, answer_timeline, hit_queries, kill_worker, longest_gap, rolling_restarts, \
    warm  # noqa: E402
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
    ap.add_argument("--only", choices=("workers", "service"), help="only the worker scenarios, or only the service ones")
    ap.add_argument("--service-seconds", type=float, default=12)
    args = ap.parse_args()
    if args.only != "workers":
        service_scenarios(args.qps, args.service_seconds)
    if args.only == "service":
        return 0
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


# -- replacing the whole service -------------------------------------------------
INTERVAL = 0.1
OUTSTANDING = 40000       # more than qps x any outage: an outage shows as lost queries, not a stalled client
SERVICE_TIMEOUT = 5.0     # dnsperf's wait per query: a stub resolver's own default


def service_row(label: str, how: str, result, switch_at: float) -> str:
    timeline = answer_timeline(result.raw)
    at = int(switch_at / INTERVAL)
    around = " ".join(f"{r / 1000:.0f}k" if r else "0" for r in timeline[max(0, at - 3):at + 40])
    return (f"{label:<26} {how:<34} sent {result.sent:>7}  lost {result.lost:>6}  longest gap "
            f"{longest_gap(result.raw, INTERVAL):5.1f} s  max latency {result.max_latency * 1000:6.0f} ms\n"
            f"    answers/s per 100 ms from {switch_at - 0.3:.1f} s: {around}")


def netns_replacement(qps: int, seconds: float, how: str) -> str:
    """takeover | sigkill | stop-start | stop-2s-start, in a fresh namespace."""
    with tempfile.TemporaryDirectory(prefix="twbench") as d, Netns(prefix="twb") as ns:
        wd = Path(d)
        upstream = Unbound(wd / "unbound", netns=ns)
        config = write_config(wd / "twindns.toml")
        old = Supervisor(ns, config)
        new = None
        try:
            old.wait_ready()
            queries = dnsperf.mixed_queries(wd / "q.txt")
            warm(ns, queries)
            load = Load(ns, queries, seconds, qps, timeout=SERVICE_TIMEOUT, outstanding=OUTSTANDING,
                        interval=INTERVAL)
            load.wait_until(3)
            if how == "takeover":
                new = Supervisor(ns, config, args=("--takeover",), log_name="new.log")
                old.proc.wait(timeout=60)
            elif how == "sigkill":
                os.kill(old.proc.pid, signal.SIGKILL)
                time.sleep(2)
                new = Supervisor(ns, config, log_name="new.log")
            else:
                old.terminate()
                if how == "stop-2s-start":
                    time.sleep(2)
                new = Supervisor(ns, config, log_name="new.log")
            result = load.result()
            return result
        finally:
            for sup in (new, old):
                if sup is not None and sup.proc.poll() is None:
                    sup.terminate()
            upstream.stop()


def systemd_replacement(qps: int, seconds: float, commands: list[list[str]], dropin: str | None = None):
    """`commands` run 3 s into the load; `dropin`: a [Service] override of the unit."""
    from helpers.systemd_container import Container, debian_root, wheels_for_twindns
    with tempfile.TemporaryDirectory(prefix="twbench") as d:
        wd = Path(d)
        c = Container.boot(debian_root(), log_path=wd / "console.log")
        try:
            twindns = c.install_wheels(wheels_for_twindns(wd / "wheels"))
            c.write("/etc/twindns/twindns.toml", SYSTEMD_CONFIG)
            if dropin is not None:
                c.write("/etc/systemd/system/twindns.service.d/bench.conf", f"[Service]\n{dropin}\n")
            upstream = Unbound(wd / "unbound", netns=c.net)
            try:
                c.run([twindns, "install", "--now"], timeout=120)
                queries = dnsperf.mixed_queries(wd / "q.txt")
                time.sleep(1)
                warm(c.net, queries)
                load = Load(c.net, queries, seconds, qps, timeout=SERVICE_TIMEOUT, outstanding=OUTSTANDING,
                            interval=INTERVAL)
                load.wait_until(3)
                for argv in commands:
                    c.run(argv, timeout=120)
                result = load.result()
                if c.run(["systemctl", "is-active", "twindns"], check=False).stdout.strip() != "active":
                    raise RuntimeError("twindns is not active after the scenario:\n" + c.journal("twindns"))
                return result
            finally:
                c.run([twindns, "uninstall"], check=False, timeout=120)
                upstream.stop()
        finally:
            c.close()


SYSTEMD_CONFIG = """\
listen = ["169.254.20.10"]
[supervisor]
probe_interval = 0.5
drain_timeout = 2.0
[[upstream]]
zone = "."
servers = ["127.0.0.2:53"]
"""


SIGKILL_MAIN = ["systemctl", "kill", "--kill-whom=main", "--signal=SIGKILL", "twindns"]


def service_scenarios(qps: int, seconds: float) -> None:
    print(f"# replacing the whole service at {qps} qps, mixed workload, {seconds:g} s runs, the switch at 3 s; "
          f"dnsperf -t {SERVICE_TIMEOUT:g} -q {OUTSTANDING}")
    runs = [
        ("twindns run --takeover", "takeover (new beside old)", lambda: netns_replacement(qps, seconds, "takeover")),
        ("twindns run --takeover", "control: SIGTERM, then run", lambda: netns_replacement(qps, seconds, "stop-start")),
        ("SIGKILL, run 2 s later", "orphans serve, then adopted", lambda: netns_replacement(qps, seconds, "sigkill")),
        ("SIGKILL, run 2 s later", "control: SIGTERM, 2 s, run",
         lambda: netns_replacement(qps, seconds, "stop-2s-start")),
        ("systemctl restart", "fd store + twindns-net.service",
         lambda: systemd_replacement(qps, seconds, [["systemctl", "restart", "twindns"]])),
        ("systemctl restart", "control: systemctl stop; start",
         lambda: systemd_replacement(qps, seconds, [["systemctl", "stop", "twindns", "twindns-net"],
                                                    ["systemctl", "start", "twindns"]])),
        ("SIGKILL under systemd", "KillMode=process: orphans adopted",
         lambda: systemd_replacement(qps, seconds, [SIGKILL_MAIN])),
        ("SIGKILL under systemd", "control: KillMode=mixed",
         lambda: systemd_replacement(qps, seconds, [SIGKILL_MAIN], dropin="KillMode=mixed")),
    ]
    for label, how, run in runs:
        print(service_row(label, how, run(), 3.0), flush=True)


def _kill(ns, sup, wd: Path, sig, label: str, qps: int, timeout: float = 2.0):
    queries = hit_queries(wd / "hit.txt")
    warm(ns, queries)
    return kill_worker(ns, sup, queries, 8, qps, sig, label, timeout=timeout)


if __name__ == "__main__":
    sys.exit(main())
