"""deploy/kubernetes/: every manifest valid against the API schemas of every supported Kubernetes
version (kubernetes-validate, strict: unknown fields are errors), the kustomization complete, and
the DaemonSet shaped as issue 13 asks (rollout by takeover, the supervisor's capabilities only,
node-local-dns's tolerations, measured resources, a ConfigMap that validates on a node)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "deploy/kubernetes"
# DaemonSet maxSurge is GA from 1.25; every version kubernetes-validate ships from there on.
SCHEMAS = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
VERSIONS = sorted({m.group(1) for p in SCHEMAS.iterdir() if (m := re.match(r"v(1\.\d+\.\d+)-local-strict$", p.name))
                   and int(m.group(1).split(".")[1]) >= 25}, key=lambda v: int(v.split(".")[1]))
NODE_ENV = {"KUBE_DNS_SERVICE_HOST": "10.96.0.10", "KUBE_DNS_UPSTREAM_SERVICE_HOST": "10.96.0.11"}


def documents() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            out += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def by_kind(kind: str) -> dict:
    [doc] = [d for _, d in documents() if d["kind"] == kind]
    return doc


def test_supported_versions_are_there():
    assert VERSIONS[0] == "1.25.0" and len(VERSIONS) >= 10, VERSIONS


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid(version):
    for name, doc in documents():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{name} ({doc['kind']}) invalid for Kubernetes {version}: {e.message} at {list(e.path)}")


def test_the_validator_rejects_a_wrong_field():
    ds = by_kind("DaemonSet")
    ds["spec"]["updateStrategy"]["rollingUpdate"]["maxSurges"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest():
    k = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert sorted(k["resources"]) == sorted(p.name for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml")
    assert k["namespace"] == "kube-system"
    assert {d["metadata"]["namespace"] for _, d in documents()} == {"kube-system"}


def test_daemonset_shape():
    ds = by_kind("DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert spec["hostNetwork"] and spec["hostPID"] and spec["dnsPolicy"] == "Default"
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["tolerations"] == [{"key": "CriticalAddonsOnly", "operator": "Exists"},
                                   {"effect": "NoExecute", "operator": "Exists"},
                                   {"effect": "NoSchedule", "operator": "Exists"}]
    # a drain: both workers' drain_timeout, one after the other, with room to spare
    assert spec["terminationGracePeriodSeconds"] >= 2 * 5.0 + 10
    [c] = spec["containers"]
    unit = (REPO / "systemd/twindns.service").read_text()
    caps = re.search(r"^CapabilityBoundingSet=(.*)$", unit, re.M).group(1).split()
    assert sorted(c["securityContext"]["capabilities"]["add"]) == sorted(x.removeprefix("CAP_") for x in caps)
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/run/xtables.lock"]]["hostPath"]["path"] == "/run/xtables.lock"
    assert volumes[mounts["/run/twindns"]]["hostPath"]["path"] == "/run/twindns"      # the takeover's socket
    assert volumes[mounts["/etc/twindns"]]["configMap"]["name"] == by_kind("ConfigMap")["metadata"]["name"]
    res = c["resources"]
    assert re.fullmatch(r"\d+m", res["requests"]["cpu"]) and re.fullmatch(r"\d+Mi", res["limits"]["memory"])


def test_configmap_config_is_valid_on_a_node(tmp_path):
    text = by_kind("ConfigMap")["data"]["twindns.toml"]
    (tmp_path / "twindns.toml").write_text(text)
    check = [sys.executable, "-m", "supervisor", "check-config", str(tmp_path / "twindns.toml")]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **NODE_ENV}
    p = subprocess.run(check, capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    zones = subprocess.run([sys.executable, "-m", "worker", "--check-config", str(tmp_path / "twindns.toml"),
                            "--listen", "169.254.20.10", "--listen", "10.96.0.10"],
                           capture_output=True, text=True, timeout=60, env=env)
    assert zones.returncode == 0, zones.stderr
    for zone in ("cluster.local.", "in-addr.arpa.", "ip6.arpa."):
        assert f"{zone} -> 10.96.0.11:53" in zones.stdout, zones.stdout
    unset = subprocess.run(check, capture_output=True, text=True, timeout=60, env={"PATH": env["PATH"]})
    assert unset.returncode == 78 and "KUBE_DNS_SERVICE_HOST is not set" in unset.stderr
