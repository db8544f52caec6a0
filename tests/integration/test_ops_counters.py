"""What an SRE scrapes: restart counters present from the start and counting
rolling restarts as status does; counters as of the moment of the scrape."""
from __future__ import annotations

import re
import sys
import textwrap

import pytest

from helpers.twindns import LISTEN, Supervisor, write_config

pytestmark = pytest.mark.netns

BURST = textwrap.dedent("""
    import socket, sys, urllib.request
    import dns.message
    n = int(sys.argv[1])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    for i in range(n):
        s.sendto(dns.message.make_query("a.test", "A").to_wire(), ("%s", 53))
        s.recv(4096)
    # scraped the moment the last answer arrived
    sys.stdout.write(urllib.request.urlopen("http://%s:9253/metrics", timeout=5).read().decode())
""" % (LISTEN, LISTEN))


def scrape(netns) -> str:
    return netns.run(["curl", "-s", "--max-time", "5", f"http://{LISTEN}:9253/metrics"]).stdout


def restarts(body: str) -> dict[str, float]:
    return {m[1]: float(m[2]) for m in re.finditer(r'^twindns_worker_restarts_total\{cause="(\w+)"\} (\S+)$',
                                                    body, re.M)}


def queries(body: str) -> float:
    return sum(float(v) for v in re.findall(r"^twindns_queries_total\{.*\} (\S+)$", body, re.M))


@pytest.fixture
def sup(netns, upstream, tmp_path):
    s = Supervisor(netns, write_config(tmp_path / "twindns.toml"))
    s.wait_ready()
    yield s
    s.terminate()


def test_restart_counters_exist_at_zero_and_count_rolling_restarts(sup, netns):
    assert restarts(scrape(netns)) == {"rolling": 0.0, "crash": 0.0, "hang": 0.0, "boot": 0.0}
    p = sup.cli("restart")
    assert p.returncode == 0, p.stderr
    by_status = sum(w["restarts_by_cause"]["rolling"] for w in sup.status()["workers"])
    assert by_status == 2
    assert restarts(scrape(netns))["rolling"] == by_status


def test_a_scrape_counts_every_query_answered_before_it(sup, netns):
    before = queries(scrape(netns))
    for burst in (50, 300):
        out = netns.run([sys.executable, "-c", BURST, str(burst)], timeout=60).stdout
        after = queries(out)
        assert after >= before + burst, (before, after, burst)
        before = after
    status_total = sum(w["queries"] for w in sup.status()["workers"])
    assert status_total >= before
