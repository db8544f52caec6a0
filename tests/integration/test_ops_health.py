"""/health and /metrics of a real supervisor: a worker whose UDP receive
queue overflows is named at once, fails health only once the drops persist
past health_drop_window, and the drops are counted in /metrics."""
from __future__ import annotations

import os
import re
import signal
import sys
import textwrap
import time

import pytest

from helpers.twindns import LISTEN, Supervisor, write_config

pytestmark = pytest.mark.netns

DROP_WINDOW = 2.0

# Fire-and-forget queries from 16 source ports (so both workers get a share),
# ~30k/s, padded to 1232 bytes: a stopped worker's receive queue (32 MiB
# asked, 64 MiB as the kernel counts) fills in seconds, not in the ten or so
# that small queries take on a busy machine. dnsperf would not do: it stops
# sending when its outstanding queries time out.
FLOOD = textwrap.dedent("""
    import socket, sys, time
    import dns.message
    wire = dns.message.make_query("n1.hit.test", "A", use_edns=0, pad=1232).to_wire()
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
    for s in socks:
        s.setblocking(False)
    end = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < end:
        for s in socks:
            try:
                s.sendto(wire, (sys.argv[1], 53))
            except BlockingIOError:
                pass
        time.sleep(0.0005)
""")


def get(netns, port: int, path: str) -> tuple[int, str]:
    out = netns.run(["curl", "-sS", "--max-time", "5", "-w", "\n%{http_code}",
                     f"http://{LISTEN}:{port}{path}"]).stdout
    body, _, code = out.rpartition("\n")
    return int(code), body


def dropped_total(netns) -> float:
    _, body = get(netns, 9253, "/metrics")
    m = re.search(r"^twindns_udp_dropped_datagrams_total (\S+)$", body, re.M)
    return float(m.group(1))


def health_when(netns, predicate, timeout: float, what: str) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        code, body = get(netns, 8080, "/health")
        if predicate(code, body):
            return code, body
        if time.monotonic() >= deadline:
            sockets = netns.run(["ss", "-uamn", "sport", "= :53"], check=False).stdout
            raise AssertionError(f"timed out waiting for {what}; last /health: {code} {body!r}\n{sockets}")
        time.sleep(0.2)


def test_persistent_drops_fail_health_and_name_the_worker(netns, upstream, tmp_path):
    # probes may miss for 25 s before the stopped worker counts as hung
    config = write_config(tmp_path / "twindns.toml", supervisor=f"health_drop_window = {DROP_WINDOW}\n")
    config.write_text(config.read_text().replace("probe_failures = 3\n", "probe_failures = 50\n"))
    sup = Supervisor(netns, config)
    stopped = None
    try:
        status = sup.wait_ready()
        # the verdict is sampled every probe_interval
        health_when(netns, lambda code, body: (code, body) == (200, "ok\n"), timeout=3, what="healthy")
        assert dropped_total(netns) == 0
        a = next(w for w in status["workers"] if w["slot"] == "A")
        stopped = a["pid"]
        os.kill(stopped, signal.SIGSTOP)          # A stops reading: its share of the load queues, then drops
        flood = netns.popen([sys.executable, "-c", FLOOD, LISTEN, "60"])
        name = f"worker A{a['generation']}"
        _, body = health_when(netns, lambda code, body: code == 200 and name in body, timeout=30,
                              what="health naming worker A while still 200 (one burst is no failure)")
        assert f"{name}: UDP receive queue overflowing" in body
        _, body = health_when(netns, lambda code, body: code == 503, timeout=DROP_WINDOW + 6,
                              what="503 once the drops outlast health_drop_window")
        assert f"{name}: UDP receive queue overflowing" in body and "worker B" not in body
        assert dropped_total(netns) > 0
        flood.kill()
        flood.wait()
        os.kill(stopped, signal.SIGCONT)
        stopped = None
        health_when(netns, lambda code, body: (code, body) == (200, "ok\n"), timeout=10, what="healthy again")
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        if sup.proc.poll() is None:
            sup.terminate()
