"""`twindns run` in a network namespace with a real unbound upstream: both
workers serve 169.254.20.10:53 without privileges, restart and reload behave
as an operator expects, SIGTERM leaves nothing behind."""
from __future__ import annotations

import os
import signal
import time

import dns.message
import dns.query
import dns.rcode
import pytest

from helpers.twindns import LISTEN, Supervisor, write_config

pytestmark = pytest.mark.netns


def query(netns, name: str = "a.test", timeout: float = 2.0):
    """Ask LISTEN:53 from inside the namespace with dig; returns (rcode text, answers)."""
    p = netns.run(["dig", "+tries=1", f"+time={int(timeout)}", "+short", f"@{LISTEN}", name, "A"], check=False)
    return p.returncode, p.stdout.split()


@pytest.fixture
def sup(netns, upstream, tmp_path):
    s = Supervisor(netns, write_config(tmp_path / "twindns.toml"))
    try:
        yield s
    finally:
        if s.proc.poll() is None:
            s.terminate()


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def test_both_workers_serve_unprivileged(sup, netns):
    status = sup.wait_ready()
    assert status["healthy"] is True
    assert [w["state"] for w in status["workers"]] == ["ready", "ready"]
    assert status["network"]["interface"] == "nodelocaldns"
    assert status["network"]["addresses"] == [LISTEN] and status["network"]["rules_ok"] is True
    for w in status["workers"]:
        st = proc_status(w["pid"])
        assert int(st["CapEff"], 16) == 0, st["CapEff"]
        assert int(st["CapPrm"], 16) == 0
        assert st["Uid"].split()[0] != "0" and st["Uid"].split()[1] != "0"
        assert st["Groups"] == "" or "0" not in st["Groups"].split()
    rc, answers = query(netns)
    assert rc == 0 and answers == ["192.0.2.10"]
    p = sup.cli("status")
    assert p.returncode == 0, p.stderr
    assert "ready" in p.stdout and "nodelocaldns" in p.stdout and "rules ok" in p.stdout
