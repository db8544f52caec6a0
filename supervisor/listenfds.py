"""sd_listen_fds(3): the sockets systemd hands a started service, here the
ones the previous supervisor put into the service's fd store (FDSTORE=1,
supervisor/sockets.py HeldSockets) before a `systemctl restart` or a crash.

    taken = take_listen_fds()     # {FDNAME: socket}, {} when there are none
    cache = taken.pop(CACHE_FDNAME, None)   # an int: the previous workers' cache, a memfd

Reads and removes $LISTEN_PID, $LISTEN_FDS and $LISTEN_FDNAMES (so nothing
we start inherits them); the fds start at 3 (SD_LISTEN_FDS_START). Sockets
come as socket objects, the cache file as its fd number; anything else is
closed.
"""
from __future__ import annotations

import os
import socket
import stat
from typing import MutableMapping

SD_LISTEN_FDS_START = 3
CACHE_FDNAME = "cache"
ENV_KEYS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def take_listen_fds(environ: MutableMapping[str, str] | None = None, pid: int | None = None) -> dict:
    environ = os.environ if environ is None else environ
    values = {k: environ.pop(k, None) for k in ENV_KEYS}
    try:
        if int(values["LISTEN_PID"] or -1) != (os.getpid() if pid is None else pid):
            return {}
        count = int(values["LISTEN_FDS"] or 0)
    except ValueError:
        return {}
    names = (values["LISTEN_FDNAMES"] or "").split(":") if values["LISTEN_FDNAMES"] else []
    taken: dict = {}
    for i in range(count):
        fd = SD_LISTEN_FDS_START + i
        name = names[i] if i < len(names) else f"unknown-{i}"
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            continue
        os.set_inheritable(fd, False)
        if name in taken:
            os.close(fd)
        elif stat.S_ISSOCK(mode):
            taken[name] = socket.socket(fileno=fd)
        elif name == CACHE_FDNAME and stat.S_ISREG(mode):
            taken[name] = fd
        else:
            os.close(fd)
    return taken
