"""netsetup ensure / verify / teardown in a fresh namespace, on both iptables
backends, read back from the kernel with the iptables tools themselves."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter

import pytest

from helpers.firewall import (BACKENDS, api, expected_lines, iptables, links, our_lines, rule_lines,
                              twindns_net, write_config)

pytestmark = pytest.mark.netns

V4, V6 = "169.254.20.10", "fd00::10"
SPEC = {"addresses": [V4, V6], "health_ports": [8080]}
OTHER = {"legacy": "nft", "nft": "legacy"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_net_ensure_then_verify_in_fresh_namespace(netns, tmp_path, backend):
    cfg = write_config(tmp_path / "twindns.toml", backend)
    before = twindns_net(netns, "verify", cfg)
    assert before.returncode == 1 and "problem: interface nodelocaldns is missing" in before.stdout

    ensured = twindns_net(netns, "ensure", cfg)
    assert ensured.returncode == 0, ensured.stderr
    assert f"firewall backend: {backend}" in ensured.stdout
    assert "created interface nodelocaldns" in ensured.stdout

    verified = twindns_net(netns, "verify", cfg)
    assert verified.returncode == 0, verified.stdout
    assert "verify: ok" in verified.stdout and "problem" not in verified.stdout

    want = expected_lines(V4, health_ports=(8080, 9253)) + expected_lines(V6, health_ports=(8080, 9253))
    assert sorted(our_lines(netns, backend)) == sorted(want)
    assert our_lines(netns, OTHER[backend]) == []  # never written to the backend not in use
    addrs = links(netns)["nodelocaldns"]
    assert f"{V4}/32" in addrs and f"{V6}/128" in addrs
    assert netns.run(["cat", "/proc/sys/net/ipv4/tcp_migrate_req"]).stdout.strip() == "1"

    again = twindns_net(netns, "ensure", cfg)
    assert again.returncode == 0 and "ensure: nothing to change" in again.stdout

    down = twindns_net(netns, "teardown", cfg)
    assert down.returncode == 0 and "deleted interface nodelocaldns" in down.stdout
    assert our_lines(netns, backend) == [] and "nodelocaldns" not in links(netns)
    assert "nothing of twindns's was in place" in twindns_net(netns, "teardown", cfg).stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_hundred_ensures_leave_one_copy_of_each_rule(netns, backend):
    report = api(netns, "ensure", {**SPEC, "backend": backend}, times=100)
    assert report["changes"] == [] and report["backend"] == backend
    counts = Counter(our_lines(netns, backend))
    assert counts == Counter(expected_lines(V4) + expected_lines(V6))
    assert links(netns)["nodelocaldns"].count(f"{V4}/32") == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_flushed_raw_table_is_reported_then_repaired(netns, tmp_path, backend):
    cfg = write_config(tmp_path / "twindns.toml", backend, listen=(V4,))
    assert twindns_net(netns, "ensure", cfg).returncode == 0
    iptables(netns, backend, 4, "-t", "raw", "-F")  # another agent flushes the table
    iptables(netns, backend, 4, "-t", "filter", "-A", "INPUT", "-d", f"{V4}/32", "-p", "udp", "-m", "udp",
             "--dport", "53", "-m", "comment", "--comment", "twindns", "-j", "ACCEPT")  # and duplicates one

    verified = twindns_net(netns, "verify", cfg)
    assert verified.returncode == 1
    assert f"problem: missing: iptables -t raw -A PREROUTING -d {V4}/32 -p udp" in verified.stdout
    assert "problem: duplicated (2 copies): iptables -t filter -A INPUT" in verified.stdout

    repaired = twindns_net(netns, "ensure", cfg)
    assert repaired.returncode == 0 and "added rule: iptables -t raw" in repaired.stdout
    assert twindns_net(netns, "verify", cfg).returncode == 0
    assert Counter(our_lines(netns, backend)) == Counter(expected_lines(V4, health_ports=(8080, 9253)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_teardown_cleans_state_of_a_killed_run(netns, backend):
    killed_spec = {"addresses": ["169.254.20.11", "fd00::11"], "health_ports": [8080], "backend": backend}
    code = ("import json, sys, time, netsetup\n"
            "netsetup.ensure(netsetup.NetSpec(**json.loads(sys.argv[1])))\n"
            "print('ready', flush=True)\ntime.sleep(60)\n")
    proc = netns.popen([sys.executable, "-c", code, json.dumps(killed_spec)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=5)
    assert len(our_lines(netns, backend)) == 24

    # A later run with another config still finds everything by its kernel marks.
    report = api(netns, "teardown", {**SPEC, "backend": backend})
    assert "deleted interface nodelocaldns" in report["changes"]
    assert our_lines(netns, backend) == []
    assert "nodelocaldns" not in links(netns)


@pytest.mark.parametrize("backend", BACKENDS)
def test_foreign_rules_in_our_chains_survive_teardown(netns, backend):
    foreign = [
        (4, "raw", "-A", "PREROUTING", "-d", f"{V4}/32", "-p", "udp", "-m", "udp", "--dport", "53",
         "-j", "CT", "--notrack"),  # same match as ours, but not ours: no twindns comment
        (4, "filter", "-A", "INPUT", "-p", "tcp", "-m", "tcp", "--dport", "22", "-m", "comment",
         "--comment", "ssh access", "-j", "ACCEPT"),
        (6, "raw", "-A", "OUTPUT", "-d", f"{V6}/128", "-p", "udp", "-m", "udp", "--dport", "53",
         "-m", "comment", "--comment", "twindns-lookalike", "-j", "CT", "--notrack"),
    ]
    for family, table, *args in foreign:
        iptables(netns, backend, family, "-t", table, *args)
    foreign_lines = sorted(rule_lines(netns, backend))
    assert len(foreign_lines) == 3

    api(netns, "ensure", {**SPEC, "backend": backend})
    assert api(netns, "verify", {**SPEC, "backend": backend})["ok"] is True
    report = api(netns, "teardown", {**SPEC, "backend": backend})
    assert len([c for c in report["changes"] if c.startswith("removed rule")]) == 24
    assert sorted(rule_lines(netns, backend)) == foreign_lines


def test_removed_address_and_downed_link_are_reported_then_repaired(netns):
    spec = {**SPEC, "manage_firewall": False}
    api(netns, "ensure", spec)
    netns.run(["ip", "addr", "del", f"{V4}/32", "dev", "nodelocaldns"])
    netns.run(["ip", "link", "set", "nodelocaldns", "down"])
    report = api(netns, "verify", spec)
    assert report["ok"] is False and report["backend"] is None
    # (Taking a link down also makes the kernel drop its IPv6 addresses.)
    assert set(report["problems"]) == {"interface nodelocaldns is down",
                                       f"address {V4}/32 is missing on nodelocaldns",
                                       f"address {V6}/128 is missing on nodelocaldns"}
    assert set(api(netns, "ensure", spec)["changes"]) == {
        "set nodelocaldns up", f"added {V4}/32 to nodelocaldns", f"added {V6}/128 to nodelocaldns"}
    assert api(netns, "verify", spec)["ok"] is True


def test_adopted_interface_stays_with_only_our_addresses_removed(netns):
    netns.add_bridge_address("nodelocaldns", "10.9.9.9/24")
    spec = {**SPEC, "manage_firewall": False}
    report = api(netns, "ensure", spec)
    assert not any("created interface" in c for c in report["changes"])
    assert {f"{V4}/32", f"{V6}/128", "10.9.9.9/24"} <= set(links(netns)["nodelocaldns"])

    api(netns, "teardown", spec)
    left = links(netns)["nodelocaldns"]
    assert "10.9.9.9/24" in left and f"{V4}/32" not in left and f"{V6}/128" not in left

    # An address a run with another config put there is found by its kernel mark.
    api(netns, "ensure", {**spec, "addresses": ["169.254.20.11"]})
    assert "169.254.20.11/32" in links(netns)["nodelocaldns"]
    api(netns, "teardown", spec)
    assert [a for a in links(netns)["nodelocaldns"] if not a.startswith("fe80:")] == ["10.9.9.9/24"]


def test_listen_ip_an_operator_put_on_the_adopted_interface_survives_teardown(netns):
    """netplan or an operator already serves 169.254.20.10 on nodelocaldns:
    twindns adopts it and added nothing, so stopping it must not strip it."""
    netns.add_bridge_address("nodelocaldns", f"{V4}/32")
    spec = {**SPEC, "addresses": [V4], "manage_firewall": False}
    api(netns, "ensure", spec)
    api(netns, "teardown", spec)
    assert f"{V4}/32" in links(netns)["nodelocaldns"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_listen_ip_on_another_interface_is_a_clear_error(netns, tmp_path, backend):
    netns.add_bridge_address("other0", f"{V4}/32")
    cfg = write_config(tmp_path / "twindns.toml", backend)
    proc = twindns_net(netns, "ensure", cfg)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"twindns net ensure: {V4} is already on interface other0; remove it there or choose another listen address"]
    assert "nodelocaldns" not in links(netns) and our_lines(netns, backend) == []


@pytest.mark.parametrize("action", ["ensure", "verify", "teardown"])
def test_without_cap_net_admin_is_a_clear_error(netns, tmp_path, action):
    cfg = write_config(tmp_path / "twindns.toml", "nft")
    drop = ["setpriv", "--inh-caps=-all", "--bounding-set=-net_admin"]
    proc = twindns_net(netns, action, cfg, prefix=drop)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith(f"twindns net {action}: ") and "CAP_NET_ADMIN" in lines[0]
    assert "nodelocaldns" not in links(netns) and our_lines(netns, "nft") == []


def test_bad_config_names_file_and_key(netns, tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[firewall]\nbackend = "iptables"\n')
    proc = twindns_net(netns, "ensure", str(cfg))
    assert proc.returncode == 78 and str(cfg) in proc.stderr and "firewall.backend" in proc.stderr
    assert "nodelocaldns" not in links(netns)


def test_read_only_proc_sys_still_gets_interface_and_rules(netns, tmp_path):
    """An unprivileged pod or ProtectKernelTunables=: /proc/sys is read-only.
    tcp_migrate_req is an optimisation, so ensure puts everything else in
    place and verify does not report what nobody here can change."""
    cfg = write_config(tmp_path / "twindns.toml", "nft")
    ro = ["unshare", "--mount", "sh", "-c", 'mount --bind -o ro /proc/sys /proc/sys && exec "$@"', "ro"]
    ensured = twindns_net(netns, "ensure", cfg, prefix=ro)
    assert ensured.returncode == 0, ensured.stdout + ensured.stderr
    assert "Traceback" not in ensured.stderr
    assert sorted(our_lines(netns, "nft")) == sorted(
        expected_lines(V4, health_ports=(8080, 9253)) + expected_lines(V6, health_ports=(8080, 9253)))
    verified = twindns_net(netns, "verify", cfg, prefix=ro)
    assert verified.returncode == 0 and "verify: ok" in verified.stdout, verified.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_rules_left_in_the_other_backend_are_reported_then_removed(netns, backend):
    """A backend change between runs (auto detection, or the config) must
    not leave our rules behind in the backend no longer used; foreign rules
    there stay."""
    other = OTHER[backend]
    api(netns, "ensure", {**SPEC, "backend": other})
    iptables(netns, other, 4, "-t", "filter", "-A", "INPUT", "-p", "udp", "--dport", "5353", "-j", "ACCEPT")
    assert len(our_lines(netns, other)) == 24
    report = api(netns, "verify", {**SPEC, "backend": backend})
    assert not report["ok"]
    assert any(f"rule(s) of ours in {other}, which is not in use" in p for p in report["problems"])
    report = api(netns, "ensure", {**SPEC, "backend": backend})
    assert any(f"({other}, not in use)" in c for c in report["changes"])
    assert our_lines(netns, other) == [], "no copy left in the backend not in use"
    assert sorted(our_lines(netns, backend)) == sorted(expected_lines(V4) + expected_lines(V6))
    assert any("--dport 5353" in l for l in rule_lines(netns, other)), "a foreign rule there survives"
    assert api(netns, "verify", {**SPEC, "backend": backend})["ok"]
    api(netns, "ensure", {**SPEC, "backend": other})        # and back: teardown cleans both
    api(netns, "ensure", {**SPEC, "backend": backend})
    api(netns, "teardown", {**SPEC, "backend": backend})
    assert our_lines(netns, backend) == [] and our_lines(netns, other) == []
