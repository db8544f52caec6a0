"""The xtables lock: the flock(2) on /run/xtables.lock every iptables tool
takes before changing a legacy table.

A legacy table is replaced as a whole (read blob, edit, write blob back), so a
writer that does not hold this lock from read to commit can silently undo a
concurrent writer's change (kube-proxy's, or ours).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator

from netsetup.errors import FirewallBusy, NotPermitted

DEFAULT_PATH = "/run/xtables.lock"
POLL_INTERVAL = 0.02


def lock_path() -> str:
    # iptables >= 1.8.5 reads the same variable, so both agree on the file.
    return os.environ.get("XTABLES_LOCKFILE") or DEFAULT_PATH


@contextlib.contextmanager
def xtables_lock(timeout: float = 10.0, path: str | None = None) -> Iterator[None]:
    """Hold the xtables lock (exclusive flock), waiting at most timeout seconds."""
    path = path or lock_path()
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except PermissionError:
        raise NotPermitted(f"cannot open the xtables lock {path}: run as root") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise FirewallBusy(f"{path} has been held by another program (iptables, kube-proxy?) "
                                       f"for more than {timeout:g} s; try again") from None
                time.sleep(POLL_INTERVAL)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock
