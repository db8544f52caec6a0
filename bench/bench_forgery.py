"""Forged upstream answers that guessed the port and the ID, twindns beside
unbound: an upstream (tests/helpers/scripted_upstream.py, mode `guessed`)
first sends, from the queried address and port with the query's ID, a forged
answer whose question is in lower case, then the real answer echoing the
question exactly 0.2 s later. Each server is asked N fresh names; a reply
carrying the forged address counts as an accepted forgery.

    sudo python3 bench/bench_forgery.py [--names 50]

Contenders: a twindns worker (0x20 always on, with fallback), unbound as a
forwarder with its default (use-caps-for-id: no) and with use-caps-for-id: yes.
This is the case 0x20 defends against (port and ID already guessed); the
chance of guessing both is the same for all of them (random port and ID).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.query

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers.netns import Netns  # noqa: E402
from helpers.scripted_upstream import FORGED, Scripted  # noqa: E402

FORGER = "127.0.0.3"


def unbound_forwarder(ns, work: Path, port: int, caps: bool) -> subprocess.Popen:
    conf = work / f"unbound-{port}.conf"
    conf.write_text("\n".join([
        "server:", f"    interface: 127.0.0.1@{port}", "    do-daemonize: no", "    use-syslog: no",
        '    logfile: ""', '    username: ""', '    chroot: ""', f'    directory: "{work}"', '    pidfile: ""',
        "    access-control: 0.0.0.0/0 allow", "    num-threads: 1", "    verbosity: 0",
        '    module-config: "iterator"', "    do-not-query-localhost: no", "    do-ip6: no",
        f"    use-caps-for-id: {'yes' if caps else 'no'}", '    local-zone: "test." nodefault',
        "forward-zone:", '    name: "."', f"    forward-addr: {FORGER}@53", ""]))
    return ns.popen(["unbound", "-d", "-p", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def twindns(ns, work: Path, port: int) -> subprocess.Popen:
    conf = work / "twindns.toml"
    conf.write_text(f'[[upstream]]\nzone = "."\nservers = ["{FORGER}"]\n')
    return ns.popen([sys.executable, "-m", "worker", "--listen", f"127.0.0.1:{port}", "--config", str(conf)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def accepted(ns, port: int, names: int, tag: str) -> tuple[int, int]:
    """(forged answers accepted, names answered) for `names` fresh names."""
    script = (
        "import sys, dns.message, dns.query\n"
        "forged = answered = 0\n"
        f"for i in range({names}):\n"
        f"    q = dns.message.make_query(f'victim{{i}}.{tag}.test', 'A')\n"
        "    try:\n"
        f"        r = dns.query.udp(q, '127.0.0.1', timeout=3, port={port})\n"
        "    except Exception:\n"
        "        continue\n"
        "    answered += 1\n"
        f"    forged += any(rd.address == '{FORGED}' for rrset in r.answer for rd in rrset)\n"
        "print(forged, answered)\n")
    out = ns.run([sys.executable, "-c", script], timeout=names * 4 + 30).stdout.split()
    return int(out[0]), int(out[1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--names", type=int, default=50)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="twforge") as tmp, Netns(prefix="twg") as ns:
        work = Path(tmp)
        forger = Scripted(ns, work, "guessed", addr=FORGER, delay=0.2)
        try:
            for name, port, start in (("twindns", 5401, lambda: twindns(ns, work, 5401)),
                                      ("unbound", 5402, lambda: unbound_forwarder(ns, work, 5402, False)),
                                      ("unbound+caps", 5403, lambda: unbound_forwarder(ns, work, 5403, True))):
                proc = start()
                try:
                    time.sleep(1.5)
                    forged, answered = accepted(ns, port, args.names, name.replace("+", ""))
                    print(f"{name:13} forged answers accepted: {forged} of {answered} answered ({args.names} asked)",
                          flush=True)
                finally:
                    proc.terminate()
                    proc.wait(timeout=10)
        finally:
            forger.stop()


if __name__ == "__main__":
    main()
