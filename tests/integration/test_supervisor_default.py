"""`twindns run` with no config file at all: the embedded default serves
169.254.20.10:53 and forwards to the host's resolv.conf nameservers (here the
namespace's own resolv.conf, pointing at the unbound upstream), and refuses
to start, clearly, when those would be ourselves."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.twindns import LISTEN, reachable_python

pytestmark = pytest.mark.netns


@pytest.fixture
def resolv(netns):
    """/etc/resolv.conf as seen inside the namespace (ip netns exec bind-mounts it)."""
    etc = Path("/etc/netns") / netns.name
    etc.mkdir(parents=True)
    try:
        yield etc / "resolv.conf"
    finally:
        shutil.rmtree(etc, ignore_errors=True)


def run_default(netns, sock: Path, log: Path) -> subprocess.Popen:
    argv = reachable_python([sys.executable, "-m", "supervisor", "run", "--socket", str(sock),
                             "--state-dir", str(sock.parent / "state")])
    return netns.popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def test_embedded_default_serves_on_a_bare_host(netns, upstream, resolv, tmp_path):
    resolv.write_text("nameserver 127.0.0.2\n")
    sock, log = tmp_path / "control.sock", tmp_path / "run.log"
    proc = run_default(netns, sock, log)
    try:
        deadline = time.monotonic() + 20
        status = {}
        while time.monotonic() < deadline and status.get("ready_workers") != 2:
            assert proc.poll() is None, log.read_text()
            p = netns.run([sys.executable, "-m", "supervisor", "status", "--json", "--socket", str(sock)], check=False)
            status = json.loads(p.stdout) if p.stdout.startswith("{") else {}
            time.sleep(0.2)
        assert status.get("ready_workers") == 2, log.read_text()
        assert status["supervisor"]["config"].endswith("supervisor/default.toml")
        assert status["network"]["interface"] == "nodelocaldns" and status["network"]["addresses"] == [LISTEN]
        out = netns.run(["dig", "+short", "+time=2", "+tries=1", f"@{LISTEN}", "a.test", "A"]).stdout.split()
        assert out == ["192.0.2.10"]
        if subprocess.run(["id", "twindns"], capture_output=True).returncode != 0:
            assert "user 'twindns' does not exist; workers run as 'nobody'" in log.read_text()
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0


def test_refuses_to_start_when_resolv_conf_is_only_ourselves(netns, resolv, tmp_path):
    resolv.write_text(f"nameserver {LISTEN}\n")
    log = tmp_path / "run.log"
    proc = run_default(netns, tmp_path / "control.sock", log)
    assert proc.wait(timeout=30) == 78
    text = log.read_text()
    assert "default.toml" in text and "upstream" in text
    # Nothing was put in place.
    assert netns.run(["ip", "link", "show", "nodelocaldns"], check=False).returncode != 0
