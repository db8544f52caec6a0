"""The config file on disk against what runs: an invalid file never takes
DNS down at the next start, `reload --config F` moves onto F, and status
tells the truth at the moment it is asked (issue 9, items 4-6)."""
from __future__ import annotations

import json
import time

import pytest

from helpers.firewall import our_lines
from helpers.twindns import LISTEN, Supervisor, write_config

pytestmark = pytest.mark.netns


def dig(netns, name: str = "a.test") -> str:
    return netns.run(["dig", "+tries=1", "+time=2", "+short", f"@{LISTEN}", name, "A"], check=False).stdout.strip()


def http(netns, port: int, path: str) -> str:
    return netns.run(["curl", "-s", "--max-time", "3", f"http://{LISTEN}:{port}{path}"], check=False).stdout


def test_an_invalid_file_at_restart_starts_on_the_last_accepted_config_loudly(netns, upstream, tmp_path):
    config = write_config(tmp_path / "twindns.toml")
    good = config.read_text()
    sup = Supervisor(netns, config)
    sup.wait_ready()
    assert sup.terminate() == 0
    assert json.loads((tmp_path / "state/accepted.json").read_text())["source"] == str(config)

    config.write_text(good + "[cache]\ncapacity = -1\n")           # an edit gone wrong
    sup = Supervisor(netns, config)
    try:
        status = sup.wait_ready(timeout=30)                          # started anyway: DNS stays up
        assert dig(netns) == "192.0.2.10"
        cfg = status["config"]
        assert cfg["running_last_accepted"] and cfg["running"] == str(tmp_path / "state/accepted.toml")
        assert cfg["file_valid"] is False and "cache.capacity" in cfg["file_error"]
        assert not status["healthy"] and sup.cli("status").returncode == 1
        text = sup.cli("status").stdout
        assert "INVALID" in text and "last accepted" in text
        health = http(netns, 8080, "/health")
        assert health.startswith("ok") and "cache.capacity" in health, health
        metrics = http(netns, 9253, "/metrics")
        assert "twindns_config_file_valid 0.0" in metrics
        assert "twindns_config_last_accepted_running 1.0" in metrics
        assert "config_invalid_using_last_accepted" in sup.output()
        # fixed and reloaded: healthy, running the file again
        config.write_text(good)
        p = sup.cli("reload")
        assert p.returncode == 0, p.stderr
        status = sup.status()
        assert status["healthy"] and status["config"]["running"] == str(config)
        assert not status["config"]["running_last_accepted"]
        assert "twindns_config_last_accepted_running 0.0" in http(netns, 9253, "/metrics")
    finally:
        sup.terminate()


def test_an_invalid_file_with_nothing_accepted_before_is_refused(netns, upstream, tmp_path):
    config = write_config(tmp_path / "twindns.toml", extra="[cache]\ncapacity = -1\n")
    sup = Supervisor(netns, config)
    assert sup.proc.wait(timeout=30) == 78
    assert "cache.capacity" in sup.output()


def test_status_says_when_the_file_differs_from_what_runs(netns, upstream, tmp_path):
    config = write_config(tmp_path / "twindns.toml")
    sup = Supervisor(netns, config)
    try:
        assert sup.wait_ready()["config"]["file_differs"] is False
        config.write_text(config.read_text() + '[[header]]\nzone = "."\nclear = ["ra"]\n')
        cfg = sup.status()["config"]
        assert cfg["file_differs"] is True and cfg["file_valid"] is True
        assert "differs from what runs" in sup.cli("status").stdout
        assert sup.status()["healthy"]                           # a pending edit is not a fault
    finally:
        sup.terminate()


def test_reload_with_config_moves_onto_the_named_file(netns, upstream, tmp_path):
    config = write_config(tmp_path / "twindns.toml")
    sup = Supervisor(netns, config)
    try:
        gens = {w["slot"]: w["generation"] for w in sup.wait_ready()["workers"]}
        other = tmp_path / "other.toml"
        other.write_text(config.read_text() + '[[header]]\nzone = "."\nclear = ["ra"]\n')
        p = sup.netns.run([*sup.cli_argv("reload"), "--config", str(other)], check=False, timeout=120)
        assert p.returncode == 0, p.stderr
        status = sup.status()
        assert status["supervisor"]["config"] == str(other)
        assert all(w["generation"] > gens[w["slot"]] for w in status["workers"])
        flags = netns.run(["dig", "+tries=1", "+time=2", f"@{LISTEN}", "a.test", "A"]).stdout
        assert " ra" not in flags.split("flags:")[1].split(";")[0]
        # later reloads re-read the new file, not the old one
        other.write_text(other.read_text() + "bogus = 1\n")
        p = netns.run([*sup.cli_argv("reload"), "--socket", str(tmp_path / "control.sock")], check=False)
        assert p.returncode != 0 and "other.toml" in p.stderr and "bogus" in p.stderr, p.stderr
        assert sup.status()["config"]["file"] == str(other)
    finally:
        sup.terminate()


def test_status_verifies_the_rules_when_asked(netns, upstream, tmp_path):
    """A deleted rule shows at the next `twindns status`, not a resync interval later."""
    config = write_config(tmp_path / "twindns.toml", top="[firewall]\nbackend = \"nft\"\nresync_interval = 600\n")
    sup = Supervisor(netns, config)
    try:
        status = sup.wait_ready()
        assert status["network"]["rules_ok"] is True
        rule = next(line for line in our_lines(netns, "nft") if "INPUT" in line)
        netns.run(["iptables-nft", "-D", *rule.split()[1:]])
        # at most a second old (a status polled in a loop reuses a read-back that recent)
        status = sup.wait(lambda s: s["network"]["rules_ok"] is False, timeout=3, what="the missing rule")
        assert status["network"]["problems"] and status["network"]["checked_ago"] < 2
        assert not status["healthy"]
    finally:
        sup.terminate()
