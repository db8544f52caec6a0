"""sd_listen_fds(3): the sockets systemd hands a started service, here the
ones the previous supervisor put into the service's fd store (FDSTORE=1,
supervisor/sockets.py HeldSockets) before a `systemctl restart` or a crash.

    taken = take_listen_fds()     # {FDNAME: socket}, {} when there are none

Reads and removes $LISTEN_PID, $LISTEN_FDS and $LISTEN_FDNAMES (so nothing
we start inherits them); the fds start at 3 (SD_LISTEN_FDS_START). Only
sockets are taken; anything else passed is closed.
"""
from __future__ import annotations

import os
import socket
import stat
from typing import MutableMapping

SD_LISTEN_FDS_START = 3
ENV_KEYS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def take_listen_fds(environ: MutableMapping[str, str] | None = None, pid: int | None = None) -> dict[str, socket.socket]:
    environ = os.environ if environ is None else environ
    values = {k: environ.pop(k, None) for k in ENV_KEYS}
    try:
        if int(values["LISTEN_PID"] or -1) != (os.getpid() if pid is None else pid):
            return {}
        count = int(values["LISTEN_FDS"] or 0)
    except ValueError:
        return {}
    names = (values["LISTEN_FDNAMES"] or "").split(":") if values["LISTEN_FDNAMES"] else []
    taken: dict[str, socket.socket] = {}
    for i in range(count):
        fd = SD_LISTEN_FDS_START + i
        name = names[i] if i < len(names) else f"unknown-{i}"
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode) or name in taken:
                os.close(fd)
                continue
        except OSError:
            continue
        os.set_inheritable(fd, False)
        taken[name] = socket.socket(fileno=fd)
    return taken
