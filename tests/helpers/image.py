"""A copy of twindns's code with a version of our choosing, to stand in for
"a new version installed on disk" in upgrade tests.

Put its directory first on PYTHONPATH: its packages shadow the editable
install and its dist-info answers importlib.metadata.version("twindns").
The tree is world-readable, because workers run as an unprivileged user.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("supervisor", "worker", "netsetup", "contract")


def _world_readable(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


def _copy_as_new_file(src: str, dst: str) -> str:
    """What pip does to every file it installs: a new file, never a write
    into the old one. Running workers have the old worker/_fastwire*.so
    mapped; rewriting it in place crashes them (SIGSEGV)."""
    if os.path.lexists(dst):
        os.unlink(dst)
    return shutil.copy2(src, dst)


def make_image(root: Path, version: str) -> Path:
    """Copy the packages into `root` and stamp `version`; returns `root`."""
    root.mkdir(parents=True, exist_ok=True)
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, root / pkg, symlinks=False, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"), copy_function=_copy_as_new_file)
    set_version(root, version)
    return root


def set_version(root: Path, version: str) -> None:
    """What `pip install` of another version would leave: a new dist-info."""
    for old in root.glob("twindns-*.dist-info"):
        shutil.rmtree(old)
    info = root / f"twindns-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: twindns\nVersion: {version}\n")
    _world_readable(root)


def break_image(root: Path, module: str = "supervisor/pool.py") -> None:
    """Make the code fail to import, as a bad release would."""
    with open(root / module, "a") as f:
        f.write("\nraise ImportError('this release is broken')\n")
