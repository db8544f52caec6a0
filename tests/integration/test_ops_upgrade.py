"""`twindns upgrade` for real: the code on disk changes version, the
supervisor re-executes in place under dnsperf load, adopts its workers and
rolls them onto the new code without losing a query; a broken release on
disk is refused and the running one keeps serving."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest

from helpers import dnsperf
from helpers.chaos import Load
from helpers.image import break_image, make_image, set_version
from helpers.twindns import LISTEN, Supervisor, write_config

pytestmark = pytest.mark.netns


@pytest.fixture
def image():
    # outside pytest's 0700 tmp: workers (nobody) import from it
    with tempfile.TemporaryDirectory(prefix="twindns-image-") as d:
        os.chmod(d, 0o755)
        yield make_image(Path(d) / "site", "0.1.0")


def queries_total(netns) -> float:
    body = netns.run(["curl", "-sS", "--max-time", "5", f"http://{LISTEN}:9253/metrics"]).stdout
    return sum(float(v) for v in re.findall(r"^twindns_queries_total\{.*\} (\S+)$", body, re.M))


def listener_inode(netns, port: int) -> str:
    """The inode of the TCP socket listening on `port` (state 0A in /proc/net/tcp)."""
    for line in netns.run(["cat", "/proc/net/tcp"]).stdout.splitlines()[1:]:
        cols = line.split()
        if cols[1].endswith(f":{port:04X}") and cols[3] == "0A":
            return cols[9]
    raise AssertionError(f"nothing listens on {port}")


def versions(status: dict) -> tuple:
    return status["version"], tuple(w.get("version") for w in status["workers"])


def test_upgrade_under_load_loses_nothing_and_a_broken_release_is_refused(netns, upstream, tmp_path, image):
    # cwd "/" as under systemd: `python -m` would put the repo's own copy first on sys.path
    sup = Supervisor(netns, write_config(tmp_path / "twindns.toml"), env={"PYTHONPATH": str(image)}, cwd="/")
    try:
        sup.wait(lambda s: s.get("ready_workers") == 2 and versions(s) == ("0.1.0", ("0.1.0", "0.1.0")),
                 timeout=30, what="0.1.0 serving")
        before = sup.status()
        pid = before["supervisor"]["pid"]
        worker_pids = [w["pid"] for w in before["workers"]]

        # a broken release on disk: refused before anything changes
        break_image(image)
        set_version(image, "0.3.0")
        p = sup.cli("upgrade", timeout=90)
        assert p.returncode == 1
        assert "failed its check: ImportError: this release is broken" in p.stderr
        assert "still running 0.1.0" in p.stderr
        after_refusal = sup.status()
        assert after_refusal["supervisor"]["pid"] == pid
        assert [w["pid"] for w in after_refusal["workers"]] == worker_pids
        assert versions(after_refusal) == ("0.1.0", ("0.1.0", "0.1.0"))

        # a good release: upgrade while dnsperf runs (half the names always miss)
        make_image(image, "0.2.0")
        queryfile = dnsperf.mixed_queries(tmp_path / "mixed.txt")
        counted_before = queries_total(netns)
        listeners = [listener_inode(netns, port) for port in (8080, 9253)]
        load = Load(netns, queryfile, seconds=8, qps=20000)
        load.wait_until(2.0)
        p = sup.cli("upgrade", timeout=90)
        result = load.result()
        assert p.returncode == 0, f"{p.stdout}\n{p.stderr}\n{sup.output()[-3000:]}"
        assert "new code checked: version 0.2.0" in p.stdout
        assert f"re-executing supervisor pid {pid}: 0.1.0 -> 0.2.0" in p.stdout
        assert "slot A: done" in p.stdout and "slot B: done" in p.stdout

        upgraded = sup.wait(lambda s: versions(s) == ("0.2.0", ("0.2.0", "0.2.0")), timeout=15,
                            what="0.2.0 in status for the supervisor and both workers")
        assert upgraded["supervisor"]["pid"] == pid                  # re-executed in place
        assert not set(w["pid"] for w in upgraded["workers"]) & set(worker_pids)
        assert upgraded["healthy"] is True
        print(f"upgrade under load: sent {result.sent} lost {result.lost} rcodes {result.rcodes}")
        assert result.sent > 100000 and result.lost == 0 and set(result.rcodes) == {"NOERROR"}, result.raw
        assert queries_total(netns) >= counted_before + result.completed * 0.5   # never went backwards
        assert netns.run(["curl", "-s", f"http://{LISTEN}:8080/health"]).stdout == "ok\n"
        # the very same listening sockets: no window where a probe or scrape is refused
        assert [listener_inode(netns, port) for port in (8080, 9253)] == listeners
    finally:
        if sup.proc.poll() is None:
            assert sup.terminate() == 0, sup.output()[-3000:]
