"""Letting the unprivileged worker user run the Python twindns is installed in.

A Python below a directory that user may not enter (pyenv in /root, mode
0700) cannot be exec'd by it. Rather than refuse, the worker then starts in
a private mount namespace of its own (`unshare --mount`) where a tmpfs
covers that directory and only the interpreter's tree is bind-mounted back
(through a directory fd opened just before the path is covered); `setpriv` drops to the user, clears the capability
bounding set and sets no_new_privs before exec'ing the worker. Nothing
changes outside that namespace. A layout this cannot fix is refused with
the reason.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass

# bash for `exec {d}<`: the directory is opened inside the new namespace
# (a bind mount's source must be in the caller's), before the tmpfs covers it.
MOUNT_SCRIPT = ('set -e; exec {d}<"$1"; mount -t tmpfs -o mode=0755,size=64k twindns-reach "$2"; '
                'mkdir "$1"; mount --no-canonicalize --bind "/proc/self/fd/$d" "$1"; exec {d}<&-; '
                'shift 2; exec "$@"')


class InterpreterUnreachable(RuntimeError):
    """The worker user cannot reach the interpreter or our code, and no bind mount would help."""


@dataclass(frozen=True)
class Reach:
    covered: str       # directory the user may not enter, covered by a tmpfs in the worker's namespace
    exposed: str       # its child on the way to the interpreter, bind-mounted back


def _searchable(path: str, uid: int, gid: int) -> bool:
    st = os.stat(path)
    if st.st_uid == uid:
        return bool(st.st_mode & 0o100)
    if st.st_gid == gid:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


def _ancestors(target: str) -> list[str]:
    """Directories from / down to the parent of `target`."""
    parts = []
    parent = os.path.dirname(target)
    while parent not in parts:
        parts.append(parent)
        parent = os.path.dirname(parent)
    return parts[::-1]


def closed_on_the_way(target: str, uid: int, gid: int) -> list[str]:
    """Directories on the way to `target` that uid/gid may not enter."""
    return [d for d in _ancestors(target) if not _searchable(d, uid, gid)]


def worker_package_dir() -> str:
    """Where the worker package's files are, found as `python -m worker` would
    find them, without importing it (the supervisor imports no worker code)."""
    spec = importlib.util.find_spec("worker")
    if spec is None or spec.origin is None:
        raise InterpreterUnreachable("the worker package is not installed beside the supervisor")
    return os.path.dirname(os.path.realpath(spec.origin))


def plan(uid: int, gid: int, user: str) -> Reach | None:
    """None when the user reaches the interpreter and the worker code as they
    are; a Reach when exactly one closed directory is in the way."""
    targets = (os.path.realpath(sys.executable), worker_package_dir())
    closed = {d for t in targets for d in closed_on_the_way(t, uid, gid)}
    if not closed:
        return None
    interpreter = targets[0]
    covered = min(closed, key=len)
    exposed = os.path.join(covered, os.path.relpath(interpreter, covered).split(os.sep)[0])
    for target in targets:
        if closed_on_the_way(target, uid, gid) and (closed_on_the_way(target, uid, gid) != [covered]
                                                    or not target.startswith(exposed + os.sep)):
            raise InterpreterUnreachable(f"user {user!r} cannot reach {target} ({', '.join(sorted(closed))} closed to it); "
                              "install twindns into a Python every user can run (e.g. the system python3)")
    if not private_mounts_permitted():
        raise InterpreterUnreachable(f"user {user!r} cannot reach {covered}, and this supervisor may not make a "
                          "private mount namespace (under the shipped unit: RestrictNamespaces=yes, no "
                          "CAP_SYS_ADMIN); install twindns into a Python every user can run "
                          "(e.g. the system python3)")
    return Reach(covered=covered, exposed=exposed)


def private_mounts_permitted(probe: tuple[str, ...] = ("unshare", "--mount", "true")) -> bool:
    """Whether we may make a private mount namespace: a systemd unit with
    RestrictNamespaces= or a capability set without CAP_SYS_ADMIN forbids it,
    and workers that cannot start would crash-loop instead of saying why."""
    try:
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def wrap(argv: list[str], reach: Reach, uid: int, gid: int) -> list[str]:
    """`argv` run in a private mount namespace where `reach.exposed` is visible, as uid/gid."""
    return ["unshare", "--mount", "bash", "-c", MOUNT_SCRIPT, "twindns-worker", reach.exposed, reach.covered,
            "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
            "--bounding-set=-all", "--no-new-privs", "--", *argv]
