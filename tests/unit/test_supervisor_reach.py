"""Which directories keep the worker user from our Python, and the command
that works around one (pure logic on a scratch tree)."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from supervisor import reach

UID = GID = 65534


@pytest.fixture
def tmp_path():
    """A scratch dir others may enter (pytest's own tmp dirs are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="twreach", dir="/tmp"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


def tree(tmp_path, closed_mode=0o700):
    top = tmp_path / "home"
    interp = top / "pyenv" / "bin" / "python3"
    code = top / "pyenv" / "lib" / "site-packages" / "worker"
    interp.parent.mkdir(parents=True)
    code.mkdir(parents=True)
    interp.write_text("")
    for d in (tmp_path, top / "pyenv", interp.parent, code.parent.parent, code.parent, code):
        os.chmod(d, 0o755)
    os.chmod(top, closed_mode)
    return top, interp, code


def test_closed_directories_on_the_way(tmp_path):
    top, interp, _ = tree(tmp_path)
    assert reach.closed_on_the_way(str(interp), UID, GID) == [str(top)]
    os.chmod(top, 0o711)
    assert reach.closed_on_the_way(str(interp), UID, GID) == []
    os.chmod(top, 0o710)       # group may search: fine for a member, not for others
    assert reach.closed_on_the_way(str(interp), UID, os.stat(top).st_gid) == []
    assert reach.closed_on_the_way(str(interp), UID, GID) == [str(top)]


def test_plan_exposes_the_interpreters_tree(tmp_path, monkeypatch):
    top, interp, code = tree(tmp_path)
    monkeypatch.setattr(sys, "executable", str(interp))
    monkeypatch.setattr(reach, "worker_package_dir", lambda: str(code))
    assert reach.plan(UID, GID, "nobody") == reach.Reach(covered=str(top), exposed=str(top / "pyenv"))
    os.chmod(top, 0o755)
    assert reach.plan(UID, GID, "nobody") is None


def test_plan_refuses_what_a_bind_mount_cannot_fix(tmp_path, monkeypatch):
    top, interp, code = tree(tmp_path)
    monkeypatch.setattr(sys, "executable", str(interp))
    other = top / "src" / "worker"
    other.mkdir(parents=True)
    monkeypatch.setattr(reach, "worker_package_dir", lambda: str(other))
    with pytest.raises(reach.InterpreterUnreachable, match="cannot reach .*src/worker"):
        reach.plan(UID, GID, "nobody")
    os.chmod(code.parent, 0o700)          # closed below the exposed tree as well
    monkeypatch.setattr(reach, "worker_package_dir", lambda: str(code))
    with pytest.raises(reach.InterpreterUnreachable, match="install twindns into a Python every user can run"):
        reach.plan(UID, GID, "nobody")


def test_wrap_drops_to_the_user_with_nothing_left():
    argv = reach.wrap(["python", "-m", "worker"], reach.Reach("/root", "/root/.pyenv"), 65534, 65534)
    assert argv[:3] == ["unshare", "--mount", "bash"]
    i = argv.index("setpriv")
    assert argv[i - 2:i] == ["/root/.pyenv", "/root"]
    assert {"--reuid=65534", "--regid=65534", "--clear-groups", "--bounding-set=-all",
            "--no-new-privs"} <= set(argv[i:])
    assert argv[-3:] == ["python", "-m", "worker"]


def test_private_mounts_permitted_follows_the_probe_command():
    """Where namespaces are forbidden (the shipped unit), the probe fails and
    the supervisor refuses with the reason instead of crash-looping workers."""
    assert reach.private_mounts_permitted(("true",)) is True
    assert reach.private_mounts_permitted(("false",)) is False
    assert reach.private_mounts_permitted(("/nonexistent/unshare",)) is False


def test_the_worker_package_is_found_without_importing_it():
    import subprocess
    import sys
    code = ("import sys; from supervisor import reach; d = reach.worker_package_dir(); "
            "print(d, 'worker' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    where, imported = out.stdout.split()
    import worker
    assert where == os.path.dirname(os.path.realpath(worker.__file__))
    assert imported == "False"
