"""The container image (deploy/build-image.sh) run as the DaemonSet runs it:
with podman, in a network namespace the test makes, host networking there
as a node's pod has, the DaemonSet's capabilities and the shipped ConfigMap.
It brings up the link-local address and the intercepted kube-dns ClusterIP
with their rules, answers dig on both, serves /health and /metrics with the
coredns_* names, and a rollout (a second pod of the image, started beside
the first, as maxSurge 1 does) loses nothing at 20,000 qps (issue 13, item 4)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from helpers import chaos
from helpers.podman_image import Pod, image
from helpers.twindns import LISTEN

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
CLUSTER_IP = "10.96.0.10"
# The pod's environment on a node: kube-dns and kube-dns-upstream as service links; the cluster
# domain of the test upstream's data (helpers/unbound.py serves "test.").
NODE_ENV = {"KUBE_DNS_SERVICE_HOST": CLUSTER_IP, "KUBE_DNS_UPSTREAM_SERVICE_HOST": "127.0.0.2",
            "CLUSTER_DOMAIN": "test"}


@pytest.fixture(scope="module")
def twindns_image():
    tag, _ = image()
    return tag


@pytest.fixture
def node(tmp_path) -> Path:
    """The node's directories behind the DaemonSet's volumes, with the shipped ConfigMap mounted."""
    [cm] = [d for d in yaml.safe_load_all((REPO / "deploy/kubernetes/configmap.yaml").read_text())]
    (tmp_path / "config").mkdir()
    (tmp_path / "config/twindns.toml").write_text(cm["data"]["twindns.toml"])
    return tmp_path


def dig(netns, server: str, name: str = "a.test") -> str:
    return netns.run(["dig", "+tries=1", "+time=2", "+short", f"@{server}", name, "A"], check=False).stdout.strip()


def http(netns, host: str, port: int, path: str) -> str:
    return netns.run(["curl", "-s", "--max-time", "3", f"http://{host}:{port}{path}"], check=False).stdout


def worker_facts(netns) -> list[tuple[str, str]]:
    """(Uid line, CapEff) of every worker process in the namespace."""
    out = []
    for pid in netns.pids():
        try:
            if b"-m\0worker" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        except OSError:
            continue
        out.append((status["Uid"].split()[0], status["CapEff"].strip()))
    return out


def test_image_serves_as_a_node_local_dns_pod(netns, upstream, node, twindns_image):
    with Pod(netns, twindns_image, node, "a", env=NODE_ENV) as pod:
        pod.wait_log("supervisor_ready")
        addrs = netns.run(["ip", "-o", "addr", "show", "dev", "nodelocaldns"]).stdout
        assert f"{LISTEN}/32" in addrs and f"{CLUSTER_IP}/32" in addrs, addrs
        raw = netns.run(["iptables-save", "-t", "raw"]).stdout
        assert f"-d {CLUSTER_IP}/32 -p udp -m udp --dport 53" in raw and "--notrack" in raw, raw
        assert dig(netns, LISTEN) == "192.0.2.10"
        assert dig(netns, CLUSTER_IP) == "192.0.2.10"            # interception: the ClusterIP answered here
        assert dig(netns, CLUSTER_IP, "n1.hit.test") == "192.0.2.1"
        assert http(netns, LISTEN, 8080, "/health").startswith("ok")
        metrics = http(netns, "127.0.0.1", 9253, "/metrics")     # metrics_listen 0.0.0.0:9253, as :9253
        assert (f'coredns_dns_requests_total{{family="1",proto="udp",server="dns://{LISTEN}:53",'
                f'type="A",view="",zone="."}}') in metrics, metrics[:2000]
        assert 'coredns_cache_hits_total{server="dns://' in metrics
        assert 'coredns_forward_requests_total{to="127.0.0.2:53"}' in metrics
        assert "twindns_workers_ready 2.0" in metrics
        facts = worker_facts(netns)
        assert len(facts) == 2 and all(uid != "0" and cap == "0000000000000000" for uid, cap in facts), facts
        assert pod.stop() == 0
        # a pod deleted for good (a drain, an uninstall) takes its address and rules with it
        assert netns.run(["ip", "link", "show", "nodelocaldns"], check=False).returncode != 0
        assert "twindns" not in netns.run(["iptables-save", "-t", "raw"]).stdout


@pytest.mark.chaos
def test_rollout_to_a_new_pod_loses_nothing_at_20k_qps(netns, upstream, node, twindns_image):
    queries = chaos.hit_queries(node / "hits.txt")
    with Pod(netns, twindns_image, node, "old", env=NODE_ENV) as old, \
            Pod(netns, twindns_image, node, "new", env=NODE_ENV, start=False) as new:
        old.wait_log("supervisor_ready")
        chaos.warm(netns, queries)
        # outstanding above qps x any outage: a gap in service shows as lost queries, not as a paused
        # client; 5 s: a stub resolver's timeout (as tests/chaos/test_replace_service.py)
        load = chaos.Load(netns, queries, seconds=14, qps=20000, timeout=5.0, outstanding=20000)
        load.wait_until(3.0)
        new.start()
        new.wait_log("takeover_done", timeout=30)
        # the old pod's supervisor handed over and is gone; its container waits to be deleted
        old.wait_log("handed the node to a successor", timeout=30)
        assert old.running()
        load.wait_until(10.0)
        assert old.stop() == 0                              # the DaemonSet controller deletes the old pod
        result = load.result()
        assert result.lost == 0, (result.raw, new.logs()[-3000:])
        assert result.sent >= 14 * 20000 * 0.9 and set(result.rcodes) == {"NOERROR"}, result.raw
        assert dig(netns, CLUSTER_IP) == "192.0.2.10"       # the new pod holds the node now
        assert "cache handoff: stored" in new.logs()
        assert new.stop() == 0
