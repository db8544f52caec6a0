"""The unit's privilege limits are enough, for real: `twindns run` under
exactly the unit's CapabilityBoundingSet and NoNewPrivileges (applied with
setpriv) sets up the network, serves, kills a hung worker (another uid:
CAP_KILL), rolls both workers, and tears everything down on SIGTERM."""
from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from helpers.twindns import LISTEN, Supervisor, write_config

pytestmark = pytest.mark.netns

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "twindns.service"


def unit_capabilities() -> list[str]:
    m = re.search(r"^CapabilityBoundingSet=(.+)$", UNIT.read_text(), re.M)
    return [c.lower().removeprefix("cap_") for c in m.group(1).split()]


def capability_bits(names: list[str]) -> int:
    numbers = {"kill": 5, "setgid": 6, "setuid": 7, "net_bind_service": 10, "net_admin": 12, "net_raw": 13}
    return sum(1 << numbers[n] for n in names)


def test_unit_bounding_set_and_no_new_privs_are_enough(netns, upstream, tmp_path):
    assert "NoNewPrivileges=yes" in UNIT.read_text()
    caps = unit_capabilities()
    limit = ("setpriv", "--bounding-set", "-all," + ",".join(f"+{c}" for c in caps),
             "--inh-caps", "-all", "--no-new-privs")
    sup = Supervisor(netns, write_config(tmp_path / "twindns.toml"), prefix=limit)
    try:
        status = sup.wait_ready(timeout=30)
        st = dict(line.split(":\t", 1) for line in open(f"/proc/{status['supervisor']['pid']}/status"))
        assert int(st["CapBnd"], 16) == capability_bits(caps), st["CapBnd"]
        assert st["NoNewPrivs"].strip() == "1"
        assert status["network"]["rules_ok"] is True
        assert netns.run(["dig", "+short", f"@{LISTEN}", "a.test"]).stdout.split() == ["192.0.2.10"]

        hung = next(w for w in status["workers"] if w["slot"] == "A")
        os.kill(hung["pid"], signal.SIGSTOP)       # probes go unanswered: the supervisor must SIGKILL it
        after = sup.wait(lambda s: s["workers"][0]["pid"] not in (None, hung["pid"]) and s["ready_workers"] == 2,
                         timeout=20, what="hung worker A killed and replaced")
        assert after["workers"][0]["restarts_by_cause"].get("hang") == 1

        p = sup.cli("restart", timeout=60)
        assert p.returncode == 0, p.stderr
        assert sup.terminate() == 0, sup.output()[-3000:]
        assert netns.run(["ip", "link", "show", "nodelocaldns"], check=False).returncode != 0
        assert "twindns" not in netns.run(["iptables-save"], check=False).stdout
        assert "twindns" not in netns.run(["iptables-nft-save"], check=False).stdout
    finally:
        if sup.proc.poll() is None:
            sup.terminate()
