"""Standing in for a systemd that does not read its notify socket."""
from __future__ import annotations

import socket


def fill_queue(path: str) -> int:
    """Send to `path` until the receiver's queue is full (whatever
    net.unix.max_dgram_qlen is: 10 by kernel default, 512 under systemd)."""
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    sent = 0
    try:
        while True:
            filler.sendto(b"STATUS=filler", path)
            sent += 1
    except BlockingIOError:
        return sent
    finally:
        filler.close()
