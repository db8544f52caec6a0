"""`twindns install/uninstall --root DIR`: layout, idempotence, reversal, and
the installed unit passing `systemd-analyze verify`."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from supervisor.config import EMBEDDED_CONFIG
from supervisor.install import packaged_unit

REPO = Path(__file__).resolve().parents[2]
UNIT = "etc/systemd/system/twindns.service"
NET_UNIT = "etc/systemd/system/twindns-net.service"
WANTS = "etc/systemd/system/multi-user.target.wants/twindns.service"
CONFIG = "etc/twindns/twindns.toml"
needs_systemctl = pytest.mark.skipif(shutil.which("systemctl") is None, reason="systemctl not installed")


def twindns(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "supervisor", *args],
                          capture_output=True, text=True, timeout=60)


def image_with_passwd(root: Path) -> Path:
    """A tree with the account files useradd --root edits."""
    etc = root / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\n")
    for name, text in (("shadow", "root:*:19000:0:99999:7:::\n"), ("gshadow", "root:*::\n")):
        (etc / name).write_text(text)
        os.chmod(etc / name, 0o640)
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_mode, st.st_mtime_ns,
                                         os.readlink(p) if p.is_symlink() else None)
    return out


def test_packaged_units_are_the_canonical_ones():
    assert packaged_unit() == (REPO / "systemd/twindns.service").read_text()
    assert packaged_unit("twindns-net.service") == (REPO / "systemd/twindns-net.service").read_text()


@needs_systemctl
def test_install_lays_out_unit_config_and_enablement(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    p = twindns("install", "--root", str(root))
    assert p.returncode == 0, p.stderr
    unit = (root / UNIT).read_text()
    m = re.search(r"^ExecStart=(.+) run --keep-network --config /etc/twindns/twindns.toml$", unit, re.M)
    assert m and os.access(m.group(1).split()[0], os.X_OK), unit
    # the network state has a unit of its own that a restart of the service does not stop
    assert re.search(r"^Requires=twindns-net.service$", unit, re.M) and "FileDescriptorStoreMax=" in unit
    net = (root / NET_UNIT).read_text()
    assert re.search(rf"^ExecStart={re.escape(m.group(1))} net ensure --config /etc/twindns/twindns.toml$", net, re.M)
    assert re.search(rf"^ExecStop={re.escape(m.group(1))} net release --config /etc/twindns/twindns.toml$", net, re.M)
    assert "StopWhenUnneeded=yes" in net and "RemainAfterExit=yes" in net
    assert re.search(r"^ExecReload=.+ reload --config /etc/twindns/twindns.toml$", unit, re.M)
    assert os.readlink(root / WANTS) == "/etc/systemd/system/twindns.service"
    installed = (root / CONFIG).read_text()
    assert tomllib.loads(installed) == tomllib.loads(Path(EMBEDDED_CONFIG).read_text())
    # its header is true on the installed host: what the file is, and a reference that exists there
    header = [line for line in installed.splitlines() if line.startswith("#")]
    assert "/etc/twindns/twindns.toml: written by `twindns install`" in header[0]
    assert "embedded" not in installed
    ref = re.search(r"Every key explained: (/\S+)", installed).group(1)
    assert (root / ref.lstrip("/")).read_text() == (REPO / "docs/config.md").read_text()
    assert "skipped" in p.stdout                     # says what it did not do
    assert "systemctl daemon-reload" in p.stdout


@needs_systemctl
def test_install_twice_changes_nothing(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    assert twindns("install", "--root", str(root)).returncode == 0
    before = snapshot(root)
    p = twindns("install", "--root", str(root))
    assert p.returncode == 0, p.stderr
    assert snapshot(root) == before
    assert "unchanged" in p.stdout and "kept as it is" in p.stdout


@needs_systemctl
def test_existing_config_is_never_overwritten(tmp_path):
    root = tmp_path / "root"
    (root / "etc/twindns").mkdir(parents=True)
    (root / CONFIG).write_text('listen = ["169.254.20.11"]\n')
    assert twindns("install", "--root", str(root)).returncode == 0
    assert (root / CONFIG).read_text() == 'listen = ["169.254.20.11"]\n'


@needs_systemctl
@pytest.mark.skipif(os.geteuid() != 0, reason="useradd needs root")
def test_install_creates_the_system_user_once(tmp_path):
    root = image_with_passwd(tmp_path / "root")
    p = twindns("install", "--root", str(root))
    assert p.returncode == 0, p.stderr
    users = [l.split(":") for l in (root / "etc/passwd").read_text().splitlines()]
    twin = [u for u in users if u[0] == "twindns"]
    assert len(twin) == 1
    assert 0 < int(twin[0][2]) < 1000 and twin[0][6] == "/usr/sbin/nologin"
    assert "user twindns: created" in p.stdout
    p = twindns("install", "--root", str(root))
    assert "user twindns: exists" in p.stdout
    assert (root / "etc/passwd").read_text().count("twindns:") == 1


@needs_systemctl
def test_uninstall_reverses_install_and_keeps_the_config(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    assert twindns("install", "--root", str(root)).returncode == 0
    p = twindns("uninstall", "--root", str(root))
    assert p.returncode == 0, p.stderr
    assert not (root / UNIT).exists() and not (root / WANTS).is_symlink() and not (root / NET_UNIT).exists()
    assert (root / CONFIG).exists() and "kept" in p.stdout
    assert "network teardown: skipped" in p.stdout
    p = twindns("uninstall", "--root", str(root))     # idempotent
    assert p.returncode == 0, p.stderr
    assert "not installed" in p.stdout


def test_root_that_is_not_a_directory_is_refused(tmp_path):
    p = twindns("install", "--root", str(tmp_path / "nope"))
    assert p.returncode == 2
    assert "not a directory" in p.stderr


def verify_root(tmp_path: Path) -> tuple[Path, Path]:
    """An installed tree systemd-analyze can resolve: the distribution's units,
    the executables the unit names."""
    root = tmp_path / "root"
    root.mkdir()
    assert twindns("install", "--root", str(root)).returncode == 0
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    unit = root / UNIT
    exes = re.findall(r"^Exec\w+=[+\-@!:]*(/\S+)", unit.read_text() + (root / NET_UNIT).read_text(), re.M)
    assert exes
    for exe in exes:
        target = root / exe.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.write_text("#!/bin/sh\n")
            target.chmod(0o755)
    return root, unit


def analyze(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}", "twindns.service"],
                          capture_output=True, text=True, timeout=60)


@needs_systemctl
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_installed_unit_passes_systemd_analyze_verify(tmp_path):
    root, unit = verify_root(tmp_path)
    p = analyze(root)
    assert p.returncode == 0 and "twindns.service" not in p.stderr, p.stderr
    # the check is real: a misspelt directive is reported
    unit.write_text(unit.read_text().replace("ProtectHome=yes", "ProtectHomes=yes"))
    assert "Unknown key 'ProtectHomes'" in analyze(root).stderr


@pytest.mark.parametrize("where", ["/root/venv/bin/twindns", "/home/sre/.venv/bin/twindns",
                                   "/tmp/tw/bin/twindns", "/var/tmp/tw/bin/twindns"])
def test_install_on_this_host_from_a_hidden_place_is_refused_before_any_change(where):
    """ProtectHome=yes / PrivateTmp=yes hide these from the service: its unit
    would fail 203/EXEC in a restart loop. Refused, naming the command that works."""
    from supervisor.install import InstallError, install
    watched = [Path("/etc/systemd/system/twindns.service"), Path("/usr/local/bin/twindns"),
               Path("/etc/twindns/twindns.toml")]
    before = [p.exists() or p.is_symlink() for p in watched]
    said = []
    with pytest.raises(InstallError) as err:
        install(Path("/"), now=True, say=said.append, command=where)
    assert said == []
    assert [p.exists() or p.is_symlink() for p in watched] == before
    message = str(err.value)
    assert where in message and "nothing was changed" in message
    assert f"sudo {REPO}/install.sh --service" in message


@needs_systemctl
def test_install_puts_twindns_on_path_and_uninstall_removes_only_its_link(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    p = twindns("install", "--root", str(root))
    assert p.returncode == 0, p.stderr
    link = root / "usr/local/bin/twindns"
    assert os.readlink(link) == re.search(r"^ExecStart=(\S+)", (root / UNIT).read_text(), re.M).group(1)
    assert twindns("uninstall", "--root", str(root)).returncode == 0
    assert not link.is_symlink()
    # a twindns of someone else's on PATH is never replaced nor removed
    link.parent.mkdir(parents=True, exist_ok=True)
    link.write_text("#!/bin/sh\n")
    p = twindns("install", "--root", str(root))
    assert "exists and is left alone" in p.stdout
    assert twindns("uninstall", "--root", str(root)).returncode == 0
    assert link.read_text() == "#!/bin/sh\n"
