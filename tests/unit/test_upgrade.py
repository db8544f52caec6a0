"""The mechanics of `twindns upgrade` without a supervisor: state and fds
crossing a real execve, and the pre-flight check of the code on disk."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from helpers.image import break_image, make_image
from supervisor.upgrade import HANDOFF_ENV, UpgradeHandoffError, UpgradeError, preflight, take_handoff

# Run as a script: first pass builds state with live fds and re-executes
# itself through upgrade.reexec(); the second pass (same pid) reads it back.
EXEC_TWICE = textwrap.dedent("""
    import json, os, signal, socket, sys
    from supervisor import upgrade
    from supervisor.snapshot import SlotRecord, SupervisorRecord, SupervisorSnapshot, WorkerFds, WorkerRecord
    state = upgrade.take_handoff()
    if state is None:
        ours, theirs = socket.socketpair()
        ours.send(b"queued before the exec")
        r, w = os.pipe()
        fds = WorkerFds(pidfd=os.pidfd_open(os.getpid()), control=theirs.fileno(), probe=r)
        state = SupervisorSnapshot(SupervisorRecord(pid=os.getpid(), generation=1, uptime=0.0, slots={
            "A": SlotRecord("A", WorkerRecord("A", 1, os.getpid(), "ready", 0.0, fds)), "B": SlotRecord("B")}))
        upgrade.reexec(state)
    fds = state.supervisor.slots["A"].current.fds
    inheritable = [os.get_inheritable(f) for f in (fds.pidfd, fds.control, fds.probe)]
    control = socket.socket(fileno=fds.control)
    print(json.dumps({
        "same_pid": state.supervisor.pid == os.getpid(),
        "received": control.recv(100).decode(),
        "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
        "inheritable_after": inheritable,
        "env_cleared": upgrade.HANDOFF_ENV not in os.environ,
    }))
""")


def test_state_and_fds_cross_a_real_exec(tmp_path):
    script = tmp_path / "exec_twice.py"
    script.write_text(EXEC_TWICE)
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["same_pid"]
    assert out["received"] == "queued before the exec"
    assert {15, 2, 1} <= set(out["blocked"])          # TERM INT HUP wait for the new image's handlers
    assert out["inheritable_after"] == [False, False, False]
    assert out["env_cleared"]


def test_no_handoff_on_a_normal_start():
    assert take_handoff({}) is None


def test_unreadable_handoff_is_a_clear_error(tmp_path):
    r, w = os.pipe()
    os.write(w, b"{not json")
    os.close(w)
    with pytest.raises(UpgradeHandoffError, match="malformed handoff"):
        take_handoff({HANDOFF_ENV: str(r)})
    with pytest.raises(UpgradeHandoffError, match=HANDOFF_ENV):
        take_handoff({HANDOFF_ENV: "99999"})


CONFIG = 'listen = ["127.0.0.53"]\n[[upstream]]\nzone = "."\nservers = ["127.0.0.2:53"]\n'


@pytest.fixture
def image():
    # not under pytest's 0700 tmp: the tree must be readable as any user
    with tempfile.TemporaryDirectory(prefix="twindns-image-") as d:
        os.chmod(d, 0o755)
        yield make_image(Path(d) / "site", "7.7.7")


def env_for(image: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(image)}


def test_preflight_reports_the_version_on_disk(image, tmp_path):
    cfg = tmp_path / "twindns.toml"
    cfg.write_text(CONFIG)
    assert asyncio.run(preflight(CONFIG, str(cfg), env=env_for(image))) == "7.7.7"


def test_preflight_catches_a_broken_release(image, tmp_path):
    cfg = tmp_path / "twindns.toml"
    cfg.write_text(CONFIG)
    break_image(image)
    with pytest.raises(UpgradeError, match="failed its check: ImportError: this release is broken"):
        asyncio.run(preflight(CONFIG, str(cfg), env=env_for(image)))


def test_preflight_catches_a_config_the_new_code_refuses(image, tmp_path):
    cfg = tmp_path / "twindns.toml"
    cfg.write_text(CONFIG)
    with pytest.raises(UpgradeError, match="failed its check: .*port"):
        asyncio.run(preflight("port = 0\n" + CONFIG, str(cfg), env=env_for(image)))


def test_preflight_checks_the_running_text_not_the_edited_file(image, tmp_path):
    cfg = tmp_path / "twindns.toml"
    cfg.write_text(CONFIG.replace("zone", "zoen"))          # edited since, not yet reloaded
    assert asyncio.run(preflight(CONFIG, str(cfg), env=env_for(image))) == "7.7.7"
    with pytest.raises(UpgradeError, match=r"twindns\.toml.*timeout"):
        asyncio.run(preflight(CONFIG + 'timeout = "fast"\n', str(cfg), env=env_for(image)))
