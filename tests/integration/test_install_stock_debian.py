"""The README's first command on a stock Debian 12: a debootstrapped
bookworm with python3 and nothing of ours (no python3-venv, no iptables, no
compiler), `./install.sh` run in it as root. It must install what it needs
itself and leave a `twindns` that runs.

The root is made once and cached (like tests/helpers/systemd_container.py's);
each run works on a throwaway copy. apt and pip inside it reach the package
registries through this host's network and CA bundle, as a host's own
configuration would give them."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers.systemd_container import CACHE_DIR, SUITE, apt_mirror

REPO = Path(__file__).resolve().parents[2]
STOCK = CACHE_DIR / f"{SUITE}-stock-python3"
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap and chroot need root")


def stock_root() -> Path:
    if (STOCK / "usr/bin/python3").exists():
        return STOCK
    tmp = STOCK.with_name(STOCK.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["debootstrap", "--include=python3", SUITE, str(tmp), apt_mirror()],
                   check=True, capture_output=True, timeout=1800)
    tmp.rename(STOCK)
    return STOCK


def chroot(root: Path, script: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
           "LANG": "C.UTF-8", "PIP_CERT": "/etc/host-ca.crt", "REQUESTS_CA_BUNDLE": "/etc/host-ca.crt"}
    return subprocess.run(["chroot", str(root), "sh", "-c", script], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def stock_debian(tmp_path):
    root = tmp_path / "root"
    subprocess.run(["cp", "-a", str(stock_root()), str(root)], check=True, timeout=300)
    shutil.copy(HOST_CA, root / "etc/host-ca.crt")
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    mounts = []
    for fs, where in (("proc", "proc"), ("sysfs", "sys"), ("devtmpfs", "dev")):
        subprocess.run(["mount", "-t", fs, fs, str(root / where)], check=True)
        mounts.append(root / where)
    try:
        yield root
    finally:
        for m in reversed(mounts):
            subprocess.run(["umount", "-l", str(m)], check=False)


def test_install_sh_works_on_a_stock_debian_12(stock_debian):
    root = stock_debian
    before = chroot(root, "command -v gcc cc; dpkg-query -W python3-venv iptables 2>&1; python3 -V")
    assert "gcc" not in before.stdout and "no packages found" in before.stdout.lower(), before.stdout
    src = root / "root/twindns"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info"))
    p = chroot(root, "cd /root/twindns && ./install.sh")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "on PATH as /usr/local/bin/twindns" in p.stdout
    p = chroot(root, "twindns --version && twindns check-config /root/twindns/supervisor/default.toml")
    assert p.returncode == 0, p.stdout + p.stderr
    p = chroot(root, "for t in iptables-legacy-restore iptables-nft-restore gcc cc; do command -v $t; done")
    assert "iptables-legacy-restore" in p.stdout and "iptables-nft-restore" in p.stdout
    assert "gcc" not in p.stdout and "/cc" not in p.stdout, "a compiler came along"
