"""The supervisor's config validation: what an operator sees for each mistake."""
from __future__ import annotations

import pytest

from supervisor import config as cfg


def err(text: str) -> str:
    with pytest.raises(cfg.ConfigError) as e:
        cfg.parse(text, "twindns.toml")
    return str(e.value)


def test_embedded_default_matches_reference_defaults():
    c = cfg.load(cfg.EMBEDDED_CONFIG)
    assert c.listen == ("169.254.20.10",)
    assert c.port == 53 and c.user == "twindns"
    assert c.control_socket == "/run/twindns/control.sock"
    assert str(c.health_listen) == "169.254.20.10:8080"
    assert str(c.metrics_listen) == "169.254.20.10:9253"
    assert c.interface == cfg.InterfaceConfig()
    assert c.firewall == cfg.FirewallConfig()
    assert c.supervisor == cfg.SupervisorConfig()
    assert c.health_ports() == (8080, 9253)
    assert "[[upstream]]" in c.raw_text


def test_empty_file_gives_defaults_and_keeps_raw_text():
    c = cfg.parse("", "x.toml")
    assert c.listen == ("169.254.20.10",) and c.supervisor.probe_failures == 3
    text = 'listen = ["10.0.0.1", "10.0.0.2"]\nport = 5353\n[cache]\ncapacity = 5\n'
    c = cfg.parse(text, "x.toml")
    assert c.raw_text == text
    assert [str(e) for e in c.listen_endpoints()] == ["10.0.0.1:5353", "10.0.0.2:5353"]
    # HTTP endpoints on an address we do not own need no NOTRACK ports.
    assert c.health_ports() == ()


@pytest.mark.parametrize("text, message", [
    ('port = "x"', 'twindns.toml: port = "x": expected a port number 1-65535'),
    ("port = 0", "twindns.toml: port = 0: expected a port number 1-65535"),
    ("listen = []", "twindns.toml: listen = []: expected a non-empty list of distinct IP addresses"),
    ('listen = ["1.2.3.4", "1.2.3.4"]', "expected a non-empty list of distinct IP addresses"),
    ('listen = ["nodelocal"]', 'listen = ["nodelocal"]: expected a non-empty list'),
    ('control_socket = "run/x.sock"', 'control_socket = "run/x.sock": expected an absolute path'),
    ('health_listen = "1.2.3.4"', 'health_listen = "1.2.3.4": expected "IP:PORT"'),
    ('metrics_listen = "1.2.3.4:70000"', 'metrics_listen = "1.2.3.4:70000": expected "IP:PORT"'),
    ('log_level = "loud"', 'log_level = "loud": expected one of "debug", "info", "warning", "error"'),
    ("[interface]\nmanage = 1", "twindns.toml: interface.manage = 1: expected true or false"),
    ('[interface]\nname = "a/b"', 'interface.name = "a/b": expected an interface name'),
    ('[firewall]\nbackend = "iptables"', 'firewall.backend = "iptables": expected one of "auto", "legacy", "nft"'),
    ("[firewall]\nresync_interval = 0", "firewall.resync_interval = 0: expected a number of seconds > 0"),
    ('[supervisor]\nprobe_interval = "fast"',
     'twindns.toml: supervisor.probe_interval = "fast": expected a number of seconds > 0'),
    ("[supervisor]\nprobe_failures = 1.5", "supervisor.probe_failures = 1.5: expected an integer 1-100"),
    ("[supervisor]\nprobe_failures = true", "supervisor.probe_failures = true: expected an integer"),
    ("[supervisor]\nbackoff_initial = 5.0\nbackoff_max = 1.0", "supervisor.backoff_max = 1.0: expected"),
    ("interface = 3", "twindns.toml: interface = 3: expected a table ([interface])"),
])
def test_bad_values_name_file_key_value_and_expectation(text, message):
    assert message in err(text)


def test_unknown_keys_are_errors_and_list_the_known_ones():
    m = err("bogus = 1")
    assert m.startswith("twindns.toml: bogus: unknown key")
    assert "listen" in m and "upstream" in m
    m = err("[supervisor]\nprobe_intervall = 1.0")
    assert m.startswith("twindns.toml: supervisor.probe_intervall: unknown key")
    assert "probe_interval" in m


def test_worker_sections_are_left_to_the_worker():
    c = cfg.parse('[cache]\nnonsense = "left to the worker"\n[[upstream]]\nzone = "."\n', "x.toml")
    assert c.port == 53


def test_not_toml_and_unreadable_files(tmp_path):
    assert err("x = [").startswith("twindns.toml: not valid TOML:")
    with pytest.raises(cfg.ConfigError, match="nope.toml: cannot read"):
        cfg.load(str(tmp_path / "nope.toml"))
    bad = tmp_path / "latin.toml"
    bad.write_bytes(b'user = "\xe9"\n')
    with pytest.raises(cfg.ConfigError, match="latin.toml: not UTF-8"):
        cfg.load(str(bad))


def test_load_none_falls_back_to_the_embedded_default(monkeypatch, tmp_path):
    monkeypatch.setattr(cfg, "SYSTEM_CONFIG", str(tmp_path / "absent.toml"))
    assert cfg.resolve_path(None) == cfg.EMBEDDED_CONFIG
    system = tmp_path / "twindns.toml"
    system.write_text("port = 5300\n")
    monkeypatch.setattr(cfg, "SYSTEM_CONFIG", str(system))
    assert cfg.load(None).port == 5300


def test_worker_check_argv_passes_every_listen_endpoint():
    c = cfg.parse('listen = ["10.0.0.1", "fd00::1"]\nport = 53\n', "/etc/t.toml")
    argv = cfg.worker_check_argv(c)
    assert argv[1:5] == ["-m", "worker", "--check-config", "/etc/t.toml"]
    assert argv[5:] == ["--listen", "10.0.0.1:53", "--listen", "[fd00::1]:53"]


def test_worker_check_message_keeps_the_workers_wording():
    c = cfg.parse("", "/etc/t.toml")
    m = cfg.worker_check_message(c, 78, 'Traceback?\n/etc/t.toml: upstream[0].timeout = "fast": expected x\n')
    assert m == '/etc/t.toml: upstream[0].timeout = "fast": expected x'
    assert cfg.worker_check_message(c, 1, "").startswith("/etc/t.toml: worker config check failed (exit 1)")
