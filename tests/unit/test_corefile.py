"""`twindns import-corefile`: the node-local-dns Corefile template becomes a twindns.toml that validates
on a node (its placeholders as environment references), and what has no equivalent is named."""
from __future__ import annotations

import subprocess
import sys

import pytest

from supervisor.corefile import CorefileError, parse, translate

# The shape of the Corefile in kubernetes/kubernetes cluster/addons/dns/nodelocaldns (placeholders and
# directives as there), plus a `log` line that has no twindns equivalent.
TEMPLATE = """\
__PILLAR__DNS__DOMAIN__:53 {
    errors
    cache {
            success 9984 30
            denial 9984 5
    }
    reload
    loop
    bind __PILLAR__LOCAL__DNS__ __PILLAR__DNS__SERVER__
    forward . __PILLAR__CLUSTER__DNS__ {
            force_tcp
    }
    prometheus :9253
    health __PILLAR__LOCAL__DNS__:8080
    }
in-addr.arpa:53 {
    errors
    cache 30
    reload
    loop
    bind __PILLAR__LOCAL__DNS__ __PILLAR__DNS__SERVER__
    forward . __PILLAR__CLUSTER__DNS__ {
            force_tcp
    }
    prometheus :9253
    }
ip6.arpa:53 {
    errors
    cache 30
    reload
    loop
    bind __PILLAR__LOCAL__DNS__ __PILLAR__DNS__SERVER__
    forward . __PILLAR__CLUSTER__DNS__ {
            force_tcp
    }
    prometheus :9253
    }
.:53 {
    errors
    cache 30
    reload
    loop
    bind __PILLAR__LOCAL__DNS__ __PILLAR__DNS__SERVER__
    forward . __PILLAR__UPSTREAM__SERVERS__
    prometheus :9253
    log
    }
"""
NODE_ENV = {"KUBE_DNS_SERVICE_HOST": "10.96.0.10", "KUBE_DNS_UPSTREAM_SERVICE_HOST": "10.96.0.11"}


def test_template_translates():
    t = translate(TEMPLATE, "Corefile")
    assert t.top["listen"] == ["169.254.20.10", "${KUBE_DNS_SERVICE_HOST}"]
    assert t.top["port"] == 53
    assert t.top["metrics_listen"] == "0.0.0.0:9253" and t.top["metrics_names"] == "coredns"
    assert t.top["health_listen"] == "169.254.20.10:8080"
    assert t.supervisor == {"reload_on_change": True}
    assert t.cache == {"max_ttl": 30, "negative_max_ttl": 5, "capacity": 19968}
    assert [(u["zone"], u["servers"], u.get("force_tcp", False)) for u in t.upstreams] == [
        ("${CLUSTER_DOMAIN:-cluster.local}", ["${KUBE_DNS_UPSTREAM_SERVICE_HOST}"], True),
        ("in-addr.arpa", ["${KUBE_DNS_UPSTREAM_SERVICE_HOST}"], True),
        ("ip6.arpa", ["${KUBE_DNS_UPSTREAM_SERVICE_HOST}"], True),
        (".", ["resolv.conf"], False)]
    assert any(n.startswith("Corefile:46: log: no twindns equivalent") for n in t.notes)
    assert any("Corefile:18: cache negative_max_ttl 30: twindns has one cache" in n for n in t.notes)


def test_output_is_a_valid_config_on_a_node(tmp_path):
    (tmp_path / "Corefile").write_text(TEMPLATE)
    out = tmp_path / "twindns.toml"
    p = subprocess.run([sys.executable, "-m", "supervisor", "import-corefile", str(tmp_path / "Corefile"),
                        "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "not translated: " in p.stderr and "log: no twindns equivalent" in p.stderr
    check = [sys.executable, "-m", "supervisor", "check-config", str(out)]
    ok = subprocess.run(check, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", **NODE_ENV})
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run(check, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert missing.returncode == 78 and "KUBE_DNS_SERVICE_HOST is not set" in missing.stderr


@pytest.mark.parametrize("text, message", [
    (".:53 {\n  errors\n", "line 1: '{' is never closed"),
    ("}\n", "line 1: '}' without a '{'"),
    (".:53\n", "line 1: server block .:53 has no '{'"),
])
def test_broken_corefile(text, message):
    with pytest.raises(CorefileError, match=message):
        parse(text)


def test_unreadable_file_exit_78(tmp_path):
    p = subprocess.run([sys.executable, "-m", "supervisor", "import-corefile", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 78 and "cannot read" in p.stderr
