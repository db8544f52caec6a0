"""Issue 14 item 1: a client asking thousands of distinct query types cannot
freeze `/metrics` or get a healthy worker killed: the worker's counters are a
fixed set (common qtypes plus `other`), so its STATS message stays small."""
from __future__ import annotations

import re
import select
import time

import dns.message
import pytest

from helpers.twindns import LISTEN, Supervisor, write_config
from helpers.worker import ns_socket

pytestmark = pytest.mark.netns

FLOOD_TYPES = range(1000, 61000)        # 60,000 distinct, unassigned query types
RATE = 4000                             # qps: modest, the machine is shared


def metrics_queries(netns) -> dict[tuple[str, str, str], float]:
    out = netns.run(["curl", "-sS", "--max-time", "5", f"http://{LISTEN}:9253/metrics"]).stdout
    rows = {}
    for m in re.finditer(r'^twindns_queries_total\{([^}]*)\} (\S+)$', out, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        rows[(labels.get("proto", labels.get("protocol", "")), labels.get("type", labels.get("qtype", "")),
              labels.get("rcode", ""))] = float(m.group(2))
    return rows


def flood(netns, types) -> int:
    """Ask a.test. once for every type in `types` at RATE qps; returns the answers seen."""
    wires = []
    for i, t in enumerate(types):
        q = dns.message.make_query("a.test.", t)
        q.id = i & 0xFFFF
        wires.append(q.to_wire())
    answered = 0
    with ns_socket(netns) as s:
        s.setblocking(False)
        s.connect((LISTEN, 53))
        started = time.monotonic()
        for i, w in enumerate(wires):
            try:
                s.send(w)
            except BlockingIOError:
                pass
            if i % 100 == 99:
                while time.monotonic() - started < (i + 1) / RATE:
                    if select.select([s], [], [], 0.005)[0]:
                        answered += _drain(s)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if select.select([s], [], [], 0.2)[0]:
                answered += _drain(s)
    return answered


def _drain(s) -> int:
    n = 0
    while True:
        try:
            s.recv(4096)
        except BlockingIOError:
            return n
        n += 1


def test_metrics_keep_counting_through_60000_distinct_qtypes(netns, upstream, tmp_path):
    sup = Supervisor(netns, write_config(tmp_path / "twindns.toml"))
    try:
        sup.wait_ready()
        answered = flood(netns, FLOOD_TYPES)
        assert answered >= 0.95 * len(FLOOD_TYPES), f"only {answered} of {len(FLOOD_TYPES)} answered"
        # Workers poll STATS every second: the flood must show up in full.
        deadline = time.monotonic() + 10
        while True:
            rows = metrics_queries(netns)
            counted = sum(n for (_p, qtype, _r), n in rows.items() if qtype == "other")
            if counted >= answered or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert counted >= answered, f"/metrics counted {counted} of {answered} answered queries"
        assert len(rows) < 100, f"{len(rows)} query counter rows: the set must be fixed"
        # Still counting afterwards, and nobody was killed as hung.
        flood(netns, [1] * 200)
        deadline = time.monotonic() + 10
        while metrics_queries(netns).get(("udp", "A", "NOERROR"), 0) < 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert metrics_queries(netns).get(("udp", "A", "NOERROR"), 0) >= 200
        status = sup.status()
        assert [w["restarts"] for w in status["workers"]] == [0, 0], status["workers"]
        assert "Message too long" not in sup.output()
    finally:
        sup.terminate()
