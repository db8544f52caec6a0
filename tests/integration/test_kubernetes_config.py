"""A config mounted from a Kubernetes ConfigMap (issue 13): environment
references expanded on the node, the file re-read when kubelet swaps the
mount's `..data` symlink (a rolling restart onto a valid version, an invalid
one refused and kept, loudly), and the coredns_* metric names."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from helpers.twindns import LISTEN, Supervisor, write_config

pytestmark = pytest.mark.netns


def dig_flags(netns) -> str:
    out = netns.run(["dig", "+tries=1", "+time=2", f"@{LISTEN}", "a.test", "A"], check=False).stdout
    assert "192.0.2.10" in out, out
    return out.split("flags:")[1].split(";")[0]


def http(netns, port: int, path: str) -> str:
    return netns.run(["curl", "-s", "--max-time", "3", f"http://{LISTEN}:{port}{path}"], check=False).stdout


def publish(mount: Path, version: str, text: str) -> None:
    """What kubelet's atomic writer does: a new timestamped directory, then `..data` swapped by rename."""
    target = mount / f"..{version}"
    target.mkdir()
    (target / "twindns.toml").write_text(text)
    tmp = mount / "..data_tmp"
    tmp.symlink_to(target.name)
    os.rename(tmp, mount / "..data")
    if not (mount / "twindns.toml").is_symlink():
        (mount / "twindns.toml").symlink_to("..data/twindns.toml")


def generations(sup) -> dict[str, int]:
    return {w["slot"]: w["generation"] for w in sup.status()["workers"]}


def test_configmap_swap_rolls_onto_a_valid_version_and_keeps_running_on_an_invalid_one(netns, upstream, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setenv("TEST_UPSTREAM_HOST", "127.0.0.2")      # the pod's environment, for run and the CLI
    template = write_config(tmp_path / "template.toml", top='metrics_names = "both"\n',
                            supervisor="reload_on_change = true\n").read_text()
    template = template.replace('servers = ["127.0.0.2:53"]', 'servers = ["${TEST_UPSTREAM_HOST}:53"]')
    mount = tmp_path / "mount"
    mount.mkdir()
    publish(mount, "v1", template)
    sup = Supervisor(netns, mount / "twindns.toml")
    try:
        sup.wait_ready()
        assert " ra" in dig_flags(netns)
        before = generations(sup)

        publish(mount, "v2", template + '[[header]]\nzone = "."\nclear = ["ra"]\n')
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(g > before[s] for s, g in generations(sup).items()):
            time.sleep(0.5)
        assert all(g > before[s] for s, g in generations(sup).items()), sup.output()[-3000:]
        assert " ra" not in dig_flags(netns)
        assert "config_file_changed_reloading" in sup.output()
        rolled = generations(sup)

        publish(mount, "v3", template + "[cache]\ncapacity = -1\n")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "cache.capacity" not in http(netns, 8080, "/health"):
            time.sleep(0.5)
        assert "cache.capacity" in http(netns, 8080, "/health")
        time.sleep(3)                                            # past another re-read: nothing restarted
        assert generations(sup) == rolled
        assert " ra" not in dig_flags(netns)                     # still v2, still answering
        status = sup.status()
        assert status["config"]["file_valid"] is False and not status["healthy"]
        metrics = http(netns, 9253, "/metrics")
        assert "twindns_config_file_valid 0.0" in metrics
        assert (f'coredns_dns_requests_total{{family="1",proto="udp",server="dns://{LISTEN}:53",'
                f'type="A",view="",zone="."}}') in metrics, metrics
        assert 'coredns_cache_hits_total{server="dns://' in metrics
    finally:
        sup.terminate()
