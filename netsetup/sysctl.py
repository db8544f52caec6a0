"""net.ipv4.tcp_migrate_req: lets a closing SO_REUSEPORT listener hand its
not-yet-accepted connections to a peer (Linux >= 5.14; per network namespace).

teardown leaves it set: it is harmless without reuseport listeners and we do
not know what other software on the node relies on it.
"""
from __future__ import annotations

import os

from netsetup.errors import NotPermitted

TCP_MIGRATE_REQ = "/proc/sys/net/ipv4/tcp_migrate_req"


def ensure_tcp_migrate_req(path: str = TCP_MIGRATE_REQ) -> list[str]:
    """Set it to 1 where the kernel has it; the change made, if any."""
    if not os.path.exists(path) or tcp_migrate_req_problems(path) == []:
        return []
    try:
        with open(path, "w") as f:
            f.write("1\n")
    except PermissionError:
        raise NotPermitted(f"cannot write {path}: run as root") from None
    return ["set net.ipv4.tcp_migrate_req = 1"]


def tcp_migrate_req_problems(path: str = TCP_MIGRATE_REQ) -> list[str]:
    # A kernel older than 5.14, or a read-only /proc/sys (an unprivileged pod,
    # ProtectKernelTunables=): nothing we can do, so nothing to report; it is
    # an optimisation for TCP handover, not a condition of serving.
    if not os.path.exists(path) or _read_only(path):
        return []
    with open(path) as f:
        value = f.read().strip()
    return [] if value == "1" else [f"net.ipv4.tcp_migrate_req is {value}, want 1"]


def _read_only(path: str) -> bool:
    """True on a read-only mount (access(2) says EROFS), not for a missing privilege."""
    if os.access(path, os.W_OK):
        return False
    return os.statvfs(path).f_flag & os.ST_RDONLY != 0
