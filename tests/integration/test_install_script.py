"""`./install.sh`, the README's install command: a fresh venv, every
dependency from a wheel (no C compiler), `twindns` on PATH."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(os.geteuid() != 0, reason="install.sh runs as root")
def test_install_script_needs_no_compiler_and_puts_twindns_on_path(tmp_path):
    prefix, bindir = tmp_path / "opt/twindns", tmp_path / "bin"
    env = {**os.environ, "TWINDNS_PREFIX": str(prefix), "TWINDNS_BINDIR": str(bindir),
           # no compiler anywhere: a dependency pip had to build from source fails the install
           "CC": "/bin/false", "CXX": "/bin/false"}
    env.pop("VIRTUAL_ENV", None)
    p = subprocess.run([str(REPO / "install.sh")], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"on PATH as {bindir}/twindns" in p.stdout
    twindns = bindir / "twindns"
    assert os.readlink(twindns) == str(prefix / "bin/twindns")
    v = subprocess.run([str(twindns), "--version"], capture_output=True, text=True, timeout=60)
    assert v.returncode == 0 and v.stdout.strip(), v.stderr
    # the installed code really runs: the embedded default config validates
    c = subprocess.run([str(twindns), "check-config"], capture_output=True, text=True, timeout=60)
    assert c.returncode == 0, c.stdout + c.stderr
    installed = subprocess.run([str(prefix / "bin/python"), "-m", "pip", "list", "--format=freeze"],
                               capture_output=True, text=True, timeout=60).stdout.lower()
    assert "python-iptables" not in installed and "uvloop" in installed
    # run again: idempotent
    p = subprocess.run([str(REPO / "install.sh")], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr


def test_install_script_refuses_unknown_options():
    p = subprocess.run([str(REPO / "install.sh"), "--frobnicate"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "unknown option --frobnicate" in p.stderr
