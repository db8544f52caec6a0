"""The worker's config sections: defaults, validation, error messages that
name the file, key, bad value and expectation."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from worker import config, resolvconf
from worker.config import ConfigError, load_text

RESOLV = "nameserver 10.0.0.53\nnameserver 169.254.20.10\n"


@pytest.fixture
def resolv(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text(RESOLV)
    return str(path)


def load(text: str, resolv: str, listen=("169.254.20.10:53",), **kw):
    return load_text(text, "twindns.toml", listen, resolv_conf=resolv, **kw)


def error(text: str, resolv: str, listen=("169.254.20.10:53",), **kw) -> str:
    with pytest.raises(ConfigError) as e:
        load(text, resolv, listen, **kw)
    return str(e.value)


def test_defaults_match_the_reference_config(resolv):
    c = load("", resolv)
    assert c.cache == config.CacheConfig(capacity=10000, min_ttl=0, max_ttl=86400,
                                         negative_max_ttl=3600, servfail_ttl=5)
    assert c.upstreams == (config.UpstreamZone(".", (("10.0.0.53", 53),), False, 2.0),)
    assert c.headers == ()


def test_default_config_forwards_to_resolv_conf_minus_our_ips(resolv):
    c = config.default_config(["169.254.20.10:53"], resolv_conf=resolv)
    assert c.upstreams[0].servers == (("10.0.0.53", 53),)


def test_resolv_conf_minus_our_ip_matches_by_ip_whatever_the_listen_port(resolv):
    c = config.default_config(["169.254.20.10:5353", "10.0.0.53"], resolv_conf=resolv,
                              root_servers=["127.0.0.2"])
    assert c.upstreams[0].servers == (("127.0.0.2", 53),)
    with pytest.raises(ConfigError, match="169.254.20.10"):
        config.default_config(["169.254.20.10:5353", "10.0.0.53:5353"], resolv_conf=resolv)


def test_resolv_conf_with_only_our_addresses_is_an_error(resolv):
    msg = error("", resolv, listen=("169.254.20.10", "10.0.0.53"))
    assert msg.startswith("twindns.toml: upstream")
    assert "resolv.conf" in msg and "found: 10.0.0.53, 169.254.20.10" in msg


def test_unreadable_resolv_conf_is_an_error(tmp_path):
    msg = error("", str(tmp_path / "missing"))
    assert "readable resolv.conf" in msg and "missing" in msg


def test_full_config(resolv):
    c = load("""
listen = ["169.254.20.10"]     # supervisor keys are ignored here
port = 53
[interface]
name = "x"
[cache]
capacity = 50
min_ttl = 5
max_ttl = 600
negative_max_ttl = 0
servfail_ttl = 1
[[upstream]]
zone = "Cluster.Local"
servers = ["10.96.0.10", "10.96.0.11:5353", "[2001:db8::1]:53", "2001:db8::2"]
force_tcp = true
timeout = 1
[[upstream]]
zone = "."
servers = ["resolv.conf", "192.0.2.1"]
timeout = 0.5
[[header]]
zone = "."
set = ["RA"]
clear = ["aa", "rd"]
""", resolv)
    assert c.cache == config.CacheConfig(50, 5, 600, 0, 1)
    assert c.upstreams == (
        config.UpstreamZone("cluster.local.", (("10.96.0.10", 53), ("10.96.0.11", 5353),
                                               ("2001:db8::1", 53), ("2001:db8::2", 53)), True, 1.0),
        config.UpstreamZone(".", (("10.0.0.53", 53), ("192.0.2.1", 53)), False, 0.5),
    )
    assert c.headers == (config.HeaderRule(".", frozenset({"ra"}), frozenset({"aa", "rd"})),)
    assert isinstance(c.upstreams[0].timeout, float)


def test_root_zone_is_added_when_only_stub_zones_are_configured(resolv):
    c = load('[[upstream]]\nzone = "cluster.local"\nservers = ["10.96.0.10"]\n', resolv)
    assert [z.zone for z in c.upstreams] == ["cluster.local.", "."]
    assert c.upstreams[1].servers == (("10.0.0.53", 53),)


def test_root_servers_replace_zone_root_only(resolv):
    c = load('[[upstream]]\nzone = "a"\nservers = ["10.96.0.10"]\n[[upstream]]\nservers = ["10.1.1.1"]\n',
             resolv, root_servers=["127.0.0.2:5300"])
    assert c.upstreams[0].servers == (("10.96.0.10", 53),)
    assert c.upstreams[1].servers == (("127.0.0.2", 5300),)


@pytest.mark.parametrize("text, expected", [
    ('[[upstream]]\ntimeout = "fast"',
     'twindns.toml: upstream[0].timeout = "fast": expected a number of seconds > 0'),
    ('[[upstream]]\nzone = "a"\nservers = ["10.1.1.1"]\n[[upstream]]\ntimeout = 0',
     "twindns.toml: upstream[1].timeout = 0: expected a number of seconds > 0"),
    ("[[upstream]]\ntimeout = -1.5", "upstream[0].timeout = -1.5: expected a number of seconds > 0"),
    ("[[upstream]]\ntimeout = inf", "upstream[0].timeout = inf: expected a number of seconds > 0"),
    ("[[upstream]]\ntimeout = true", "upstream[0].timeout = true: expected a number of seconds > 0"),
    ("[[upstream]]\nforce_tcp = 1", "upstream[0].force_tcp = 1: expected true or false"),
    ("[[upstream]]\nservers = []", "upstream[0].servers = []: expected at least one server"),
    ('[[upstream]]\nservers = "10.0.0.1"', 'upstream[0].servers = "10.0.0.1": expected an array of strings'),
    ('[[upstream]]\nservers = ["10.0.0.1", "dns.example"]',
     'upstream[0].servers[1] = "dns.example": expected IP, IP:PORT or [IPv6]:PORT'),
    ('[[upstream]]\nservers = ["10.0.0.1:99999"]', "upstream[0].servers[0] = \"10.0.0.1:99999\": expected IP"),
    ('[[upstream]]\nservers = ["[::1]x"]', 'upstream[0].servers[0] = "[::1]x": expected IP'),
    ('[[upstream]]\nservers = ["10.0.0.1", "10.0.0.1:53"]',
     'upstream[0].servers[1] = "10.0.0.1:53": expected each server listed once'),
    ('[[upstream]]\nzone = 5', "upstream[0].zone = 5: expected a domain name"),
    ('[[upstream]]\nzone = ""', 'upstream[0].zone = "": expected a valid domain name'),
    ('[[upstream]]\nzone = "a..b"', 'upstream[0].zone = "a..b": expected a valid domain name'),
    ('[[upstream]]\nzone = "Cluster.local"\n[[upstream]]\nzone = "cluster.LOCAL."',
     'upstream[1].zone = "cluster.LOCAL.": expected a zone not already configured in upstream[0]'),
    ("[[upstream]]\nport = 53", "twindns.toml: upstream[0].port: unknown key; expected one of zone, servers, force_tcp, timeout"),
    ("upstream = 3", "twindns.toml: upstream = 3: expected an array of tables ([[upstream]])"),
    ("[upstream]\nzone = '.'", "upstream = {zone = \".\"}: expected an array of tables ([[upstream]])"),
    ("[cache]\ncapacity = 0", "twindns.toml: cache.capacity = 0: expected a whole number from 1 to"),
    ("[cache]\nmax_in_flight = 0", "twindns.toml: cache.max_in_flight = 0: expected a whole number from 1 to 65536"),
    ("[cache]\nmax_ttl = 1.5", "cache.max_ttl = 1.5: expected a whole number from 0 to 2147483647"),
    ("[cache]\nservfail_ttl = -1", "cache.servfail_ttl = -1: expected a whole number from 0"),
    ('[cache]\nnegative_max_ttl = "1h"', 'cache.negative_max_ttl = "1h": expected a whole number'),
    ("[cache]\nmin_ttl = 100\nmax_ttl = 10", "cache.min_ttl = 100: expected at most cache.max_ttl (10)"),
    ("[cache]\nsize = 10", "twindns.toml: cache.size: unknown key; expected one of capacity, min_ttl"),
    ("cache = 1", "twindns.toml: cache = 1: expected a table ([cache])"),
    ('[[header]]\nset = ["ra"]\nclear = ["RA"]', 'header[0].clear = ["RA"]: expected flags not also in header[0].set (ra)'),
    ('[[header]]\nset = ["ad"]', 'header[0].set = ["ad"]: expected distinct flags among aa, ra, rd'),
    ('[[header]]\nset = ["ra", "ra"]', 'header[0].set = ["ra", "ra"]: expected distinct flags'),
    ('[[header]]\nclear = "ra"', 'header[0].clear = "ra": expected an array of strings'),
    ('[[header]]\nzone = "x"\n[[header]]\nzone = "X."', "header[1].zone = \"X.\": expected a zone not already configured in header[0]"),
    ("[[header]]\nflags = []", "header[0].flags: unknown key; expected one of zone, set, clear"),
    ("[cache\n", "twindns.toml: not valid TOML"),
])
def test_bad_values_name_file_key_value_and_expectation(resolv, text, expected):
    assert expected in error(text, resolv)


def test_explicit_upstream_that_is_our_listen_address_is_a_loop(resolv):
    msg = error('[[upstream]]\nservers = ["10.0.0.1", "169.254.20.10"]', resolv)
    assert msg.startswith('twindns.toml: upstream[0].servers[1] = "169.254.20.10": expected a server '
                          "other than our own listen addresses (169.254.20.10:53)")
    assert "loop" in msg


def test_same_ip_other_port_is_not_a_loop(resolv):
    c = load('[[upstream]]\nservers = ["127.0.0.1:53"]', resolv, listen=("127.0.0.1:5353",))
    assert c.upstreams[0].servers == (("127.0.0.1", 53),)


def test_wildcard_listener_loops_with_loopback_upstream_on_its_port(resolv):
    assert "loop" in error('[[upstream]]\nservers = ["127.0.0.5:5353"]', resolv, listen=("0.0.0.0:5353",))


def test_root_servers_are_checked_for_loops(resolv):
    msg = error("", resolv, listen=("127.0.0.1:5353",), root_servers=["127.0.0.1:5353"])
    assert "--upstream" in msg and "loop" in msg


def test_bad_listen_address_is_an_error(resolv):
    with pytest.raises(ConfigError, match="listen address 'nope'"):
        load("", resolv, listen=("nope",))


def test_load_file_names_the_file(tmp_path, resolv):
    path = tmp_path / "my.toml"
    path.write_text("[cache]\ncapacity = -1\n")
    with pytest.raises(ConfigError, match=f"^{path}: cache.capacity = -1"):
        config.load_file(str(path), resolv_conf=resolv)
    with pytest.raises(ConfigError, match="cannot read"):
        config.load_file(str(tmp_path / "absent.toml"))
    path.write_bytes(b"[cache]\ncapacity = 1 # \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.load_file(str(path))


def test_check_config_main_exit_codes(tmp_path, capsys, monkeypatch):
    good = tmp_path / "good.toml"
    good.write_text('[[upstream]]\nservers = ["192.0.2.1"]\n')
    assert config.check_config_main(str(good), ["127.0.0.1:53"]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[[upstream]]\nservers = ["192.0.2.1"]\ntimeout = "fast"\n')
    assert config.check_config_main(str(bad), ["127.0.0.1:53"]) == 78
    err = capsys.readouterr().err
    assert f'{bad}: upstream[0].timeout = "fast": expected a number of seconds > 0' in err


@pytest.mark.parametrize("text, expected", [
    ("10.0.0.1", ("10.0.0.1", 53)),
    ("10.0.0.1:5353", ("10.0.0.1", 5353)),
    ("[2001:DB8::1]:53", ("2001:db8::1", 53)),
    ("[::1]", ("::1", 53)),
    ("2001:db8::1", ("2001:db8::1", 53)),
])
def test_parse_server(text, expected):
    assert config.parse_server(text) == expected


@pytest.mark.parametrize("text", ["", "host", "10.0.0.1:", "10.0.0.1:x", "10.0.0.1:0",
                                  "[::1", "[::1]:", "[10.0.0.1]x", "1.2.3.4.5"])
def test_parse_server_rejects(text):
    with pytest.raises(ValueError, match="expected IP"):
        config.parse_server(text)


def test_resolvconf_parse():
    text = ("# comment\n; other\nsearch a b\nnameserver 10.0.0.1\nnameserver   10.0.0.2  # x\n"
            "nameserver bogus\nnameserver\nnameserver 10.0.0.1\nnameserver fe80::1%eth0\n"
            "options ndots:5\n")
    assert resolvconf.parse(text) == ["10.0.0.1", "10.0.0.2", "fe80::1%eth0"]


def test_wildcard_listener_on_53_excludes_loopback_resolv_conf_nameservers(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 127.0.0.53\nnameserver 10.0.0.53\n")
    c = config.default_config(["0.0.0.0:53"], resolv_conf=str(path))
    assert c.upstreams[0].servers == (("10.0.0.53", 53),)


# -- arbitrary documents: a ConfigError or a valid config, never a crash ------

_KEYS = ["capacity", "min_ttl", "max_ttl", "negative_max_ttl", "servfail_ttl", "zone", "servers",
         "force_tcp", "timeout", "set", "clear", "bogus"]
_scalars = st.one_of(
    st.booleans(), st.integers(min_value=-2**63, max_value=2**63 - 1), st.floats(),
    st.sampled_from([".", "a.test", "Cluster.Local.", "resolv.conf", "10.0.0.1", "[::1]:53",
                     "169.254.20.10", "ra", "aa", "rd", "a..b", ""]),
    st.text(max_size=8))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4)),
    max_leaves=10)
_tables = st.dictionaries(st.sampled_from(_KEYS), _values, max_size=5)
_documents = st.fixed_dictionaries({}, optional={
    "cache": st.one_of(_tables, _values),
    "upstream": st.one_of(st.lists(_tables, max_size=3), _values),
    "header": st.one_of(st.lists(_tables, max_size=3), _values),
    "listen": _values,
})


def _toml(value) -> str:
    """A value as an inline TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if value != value else ("inf" if value == float("inf") else
                                             "-inf" if value == float("-inf") else repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"


@settings(max_examples=300, deadline=None)
@given(_documents)
def test_any_document_gives_a_config_or_a_config_error(tmp_path_factory, doc):
    resolv = tmp_path_factory.getbasetemp() / "resolv.conf"
    resolv.write_text(RESOLV)
    text = "".join(f"{k} = {_toml(v)}\n" for k, v in doc.items())
    try:
        c = load(text, str(resolv))
    except ConfigError as e:
        assert str(e).startswith("twindns.toml: ")
        return
    assert c.upstreams[-1].zone == "." or any(z.zone == "." for z in c.upstreams)
    for zone in c.upstreams:
        assert zone.zone.endswith(".") and zone.zone == zone.zone.lower() and zone.servers
        assert zone.timeout > 0
    for rule in c.headers:
        assert rule.set <= {"aa", "ra", "rd"} and not rule.set & rule.clear
