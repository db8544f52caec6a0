"""Backend auto-detection (iptables-wrappers' order) and the xtables lock,
against real iptables state in a test namespace."""
from __future__ import annotations

import fcntl
import os
import sys
import time

import pytest

from helpers.firewall import API_DRIVER, api, iptables, our_lines

pytestmark = pytest.mark.netns

SPEC = {"addresses": ["169.254.20.10"], "health_ports": [8080], "backend": "auto"}


def _foreign_rules(ns, backend: str, n: int) -> None:
    for port in range(1, n + 1):
        iptables(ns, backend, 4, "-A", "INPUT", "-p", "tcp", "-m", "tcp", "--dport", str(port), "-j", "ACCEPT")


@pytest.mark.parametrize("canary", ["KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"])
def test_kube_chain_in_nft_mangle_picks_nft(netns, canary):
    iptables(netns, "nft", 4, "-t", "mangle", "-N", canary)
    _foreign_rules(netns, "legacy", 3)  # more rules in legacy: the count alone would say legacy
    report = api(netns, "ensure", SPEC)
    assert report["backend"] == "nft"
    assert len(our_lines(netns, "nft")) == 12 and our_lines(netns, "legacy") == []


def test_kube_chain_in_legacy_picks_legacy(netns):
    iptables(netns, "legacy", 4, "-t", "mangle", "-N", "KUBE-IPTABLES-HINT")
    _foreign_rules(netns, "nft", 3)  # more rules in nft: the count alone would say nft
    report = api(netns, "ensure", SPEC)
    assert report["backend"] == "legacy"
    assert len(our_lines(netns, "legacy")) == 12 and our_lines(netns, "nft") == []


def test_without_kube_chains_the_backend_with_more_rules_wins(netns):
    _foreign_rules(netns, "legacy", 2)
    report = api(netns, "ensure", SPEC)
    assert report["backend"] == "legacy" and our_lines(netns, "nft") == []
    # Our own rules now count too, so the choice does not flap on the next run.
    assert api(netns, "ensure", SPEC)["backend"] == "legacy"


def test_legacy_writes_wait_for_the_xtables_lock(netns, tmp_path):
    lock = tmp_path / "xtables.lock"
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a concurrent iptables/kube-proxy would
        spec = '{"addresses": ["169.254.20.10"], "backend": "legacy"}'
        proc = netns.popen([sys.executable, "-c", API_DRIVER, "ensure", spec, "1"],
                           env={**os.environ, "XTABLES_LOCKFILE": str(lock)})
        # The link is made just before the firewall step: from then on the
        # child is at the lock (a slow start must not pass for waiting).
        deadline = time.monotonic() + 15
        while "nodelocaldns" not in netns.run(["ip", "-br", "link"]).stdout:
            assert proc.poll() is None and time.monotonic() < deadline, "ensure() never got to the firewall"
            time.sleep(0.05)
        time.sleep(0.5)
        assert proc.poll() is None, "ensure() did not wait for the xtables lock"
        assert our_lines(netns, "legacy") == []
    finally:
        os.close(fd)
    assert proc.wait(timeout=15) == 0
    assert len(our_lines(netns, "legacy")) == 14
