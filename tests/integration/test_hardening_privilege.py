"""Issue 14 item 9: workers never share an account with other services, and
other processes of their uid cannot read their memory. A missing `user` is
created as a system account at `run`; where /etc cannot be written, workers
get a uid nobody uses. Each supervisor runs in a private mount namespace
whose /etc is a copy, so the host's accounts are never touched."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from helpers.twindns import Supervisor, write_config

pytestmark = pytest.mark.netns

NOBODY_UID = 65534


def private_etc(tmp_path, read_only: bool) -> tuple[str, ...]:
    """A `prefix` for Supervisor: /etc replaced by a copy (read-only if asked)."""
    copy = tmp_path / "etc"
    subprocess.run(["cp", "-a", "/etc", str(copy)], check=True)
    script = 'mount --bind "$0" /etc' + (" && mount -o remount,bind,ro /etc" if read_only else "") + ' && exec "$@"'
    return ("sh", "-c", script, str(copy))


def worker_uids(sup: Supervisor) -> list[int]:
    uids = []
    for w in sup.workers().values():
        with open(f"/proc/{w['pid']}/status") as f:
            uids.append(next(int(l.split()[1]) for l in f if l.startswith("Uid:")))
    return uids


def readable_by_same_uid(pid: int, uid: int) -> bool:
    """Whether another process of the worker's uid can read its environment (its memory likewise)."""
    p = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                        "cat", f"/proc/{pid}/environ"], capture_output=True)
    return p.returncode == 0


@pytest.mark.parametrize("read_only", [False, True], ids=["created", "dynamic"])
def test_workers_get_an_account_of_their_own_and_are_not_dumpable(netns, upstream, tmp_path, read_only):
    user = f"twtest{abs(hash(str(tmp_path))) % 100000}"
    config = write_config(tmp_path / "twindns.toml")
    config.write_text(config.read_text().replace('user = "nobody"', f'user = "{user}"'))
    sup = Supervisor(netns, config, prefix=private_etc(tmp_path, read_only))
    try:
        sup.wait_ready()
        uids = worker_uids(sup)
        assert len(set(uids)) == 1 and uids[0] not in (0, NOBODY_UID), uids
        passwd = (tmp_path / "etc" / "passwd").read_text()
        if read_only:
            assert 61184 <= uids[0] <= 65519 and f":{uids[0]}:" not in passwd
            assert "could not be created" in sup.output()
        else:
            entry = next(l for l in passwd.splitlines() if l.startswith(f"{user}:"))
            assert int(entry.split(":")[2]) == uids[0] and entry.endswith("/usr/sbin/nologin")
        for w in sup.workers().values():
            assert not readable_by_same_uid(w["pid"], uids[0]), "a worker is dumpable"
        assert user not in open("/etc/passwd").read(), "the host's accounts were touched"
    finally:
        sup.terminate()


def test_a_worker_does_not_hold_the_supervisors_log(netns, upstream, tmp_path):
    sup = Supervisor(netns, write_config(tmp_path / "twindns.toml"))
    try:
        sup.wait_ready()
        for w in sup.workers().values():
            for fd in ("1", "2"):
                target = subprocess.run(["readlink", f"/proc/{w['pid']}/fd/{fd}"], capture_output=True,
                                        text=True).stdout.strip()
                assert target.startswith("pipe:"), f"worker {w['slot']} fd {fd} is {target}"
        assert "worker" in sup.output() and "serving" in sup.output(), "worker lines still reach the log"
    finally:
        sup.terminate()
