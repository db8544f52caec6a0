"""The standalone command line as a user runs it: dig gets cached answers,
--force-tcp, SIGTERM, and the exit code when the sockets cannot be made."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest

from helpers.worker import Worker

pytestmark = pytest.mark.netns


def dig(netns, *args: str) -> str:
    return netns.run(["dig", "@127.0.0.1", "-p", "5353", "+time=2", "+tries=1", *args]).stdout


def test_dig_gets_cached_answers_and_sigterm_exits_0(netns, upstream, tmp_path):
    w = Worker(netns, tmp_path, upstream=upstream.server)
    before = upstream.queries()
    first = dig(netns, "a.test")
    second = dig(netns, "a.test")
    assert "status: NOERROR" in first and "192.0.2.10" in first and "192.0.2.10" in second
    assert upstream.queries() - before == 1, "the second dig is answered from the cache"
    over_tcp = dig(netns, "+tcp", "a.test")
    assert "192.0.2.10" in over_tcp and upstream.queries() - before == 1
    w.proc.send_signal(signal.SIGTERM)
    assert w.stop() == 0


def test_force_tcp_sends_misses_over_tcp(netns, upstream, tmp_path):
    w = Worker(netns, tmp_path, upstream=upstream.server, extra=["--force-tcp"])
    assert "192.0.2.1" in dig(netns, "forced.hit.test")
    stats = netns.run(["unbound-control", "-c", str(upstream.conf), "stats_noreset"]).stdout
    tcp = int(re.search(r"^num\.query\.tcp=(\d+)$", stats, re.M).group(1))
    assert tcp >= 1
    w.stop()


def test_cannot_bind_exits_3_saying_why(netns):
    p = netns.run([sys.executable, "-m", "worker", "--listen", "192.0.2.77:53", "--upstream", "127.0.0.2"],
                  check=False, timeout=30)
    assert p.returncode == 3
    assert "192.0.2.77:53" in p.stderr and "assign requested address" in p.stderr


def test_missing_listen_is_a_usage_error(netns):
    p = subprocess.run([sys.executable, "-m", "worker", "--upstream", "127.0.0.2"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "--listen" in p.stderr


def test_open_file_limit_raised_to_the_hard_limit(netns, upstream):
    """Each upstream miss in flight holds a socket: a worker started under a
    low soft limit (the common 1024, here 256) raises it to the hard one."""
    p = netns.popen(["prlimit", "--nofile=256:8192", sys.executable, "-m", "worker",
                     "--listen", "127.0.0.1:5353", "--upstream", upstream.server],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            answer = netns.run(["dig", "@127.0.0.1", "-p", "5353", "+time=1", "+tries=1", "+short", "a.test"],
                               check=False).stdout
            if "192.0.2.10" in answer:
                break
            time.sleep(0.1)
        assert "192.0.2.10" in answer
        limits = open(f"/proc/{p.pid}/limits").read()
        assert re.search(r"^Max open files\s+8192\s+8192\s", limits, re.M), limits
    finally:
        p.terminate()
        p.wait(timeout=10)
