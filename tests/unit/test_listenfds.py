"""sd_listen_fds intake (supervisor/listenfds.py) with real fds at 3, 4, 5 in a
child process: sockets by FDNAME, the cache memfd as an fd, others closed,
and the variables removed. No root."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

CHILD = """
import json, os, socket
from supervisor.listenfds import take_listen_fds
os.environ["LISTEN_PID"] = str(os.getpid())
taken = take_listen_fds()
out = {name: ("socket", v.type.name) if isinstance(v, socket.socket) else ("fd", os.read(v, 5).decode())
       for name, v in taken.items()}
out["env"] = [k for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES") if k in os.environ]
try:
    os.fstat(5)
    out["closed"] = False
except OSError:
    out["closed"] = True
print(json.dumps(out))
"""


def test_sockets_by_name_the_cache_as_an_fd_and_nothing_else():
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cache = os.memfd_create("cache", 0)
    os.write(cache, b"TWC1x")
    os.lseek(cache, 0, os.SEEK_SET)
    other_r, other_w = os.pipe()
    # the child sees them at 3, 4, 5, as systemd passes them
    script = "import os,sys\nfor i, fd in enumerate(map(int, sys.argv[1:])): os.dup2(fd, 3 + i)\n" \
             f"os.execv(sys.executable, [sys.executable, '-c', {CHILD!r}])\n"
    env = {**os.environ, "LISTEN_FDS": "3", "LISTEN_FDNAMES": "udp-127.0.0.1-53:cache:junk"}
    p = subprocess.run([sys.executable, "-c", script, str(udp.fileno()), str(cache), str(other_r)],
                       pass_fds=(udp.fileno(), cache, other_r), env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["udp-127.0.0.1-53"] == ["socket", "SOCK_DGRAM"]
    assert out["cache"] == ["fd", "TWC1x"]
    assert "junk" not in out and out["closed"], out
    assert out["env"] == [], "nothing we start may inherit them"
    for fd in (cache, other_r, other_w):
        os.close(fd)
    udp.close()


def test_fds_for_another_pid_are_not_taken():
    from supervisor.listenfds import take_listen_fds
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x"}
    assert take_listen_fds(env) == {} and env == {}
