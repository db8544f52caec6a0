"""How a worker's log lines look: `worker[PID] LEVEL message`, one line per
record, on its stderr. Supervised, stderr is a pipe the supervisor reads
(supervisor/workerlog.py): it takes the level word from each line and logs
it again at that level, so under systemd a worker's warning reaches the
journal at priority 4, like the supervisor's own."""
from __future__ import annotations

import logging
import logging.handlers
import os
import socket
from typing import IO


class OneLineFormatter(logging.Formatter):
    """A traceback or multi-line message stays one line, with its level word in front."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


def setup(stream: IO, level: int = logging.INFO) -> logging.Handler:
    """The root logger's one handler, writing to `stream`."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(OneLineFormatter(f"worker[{os.getpid()}] %(levelname)s %(message)s"))
    _only(handler).setLevel(level)
    return handler


def _only(handler: logging.Handler) -> logging.Logger:
    """Make `handler` the root logger's one handler; returns the root logger."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    return root


SYSLOG_SOCKET = "/dev/log"


def to_syslog(address: str = SYSLOG_SOCKET) -> bool:
    """Log to the host's syslog socket from now on (journald's, under systemd,
    which files the lines under our service by cgroup); False, and stderr
    kept, when there is none. For an orphan: its stderr was a pipe to the
    supervisor that died, so its lines would reach nobody."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
            probe.connect(address)      # SysLogHandler would only retry on each record
    except OSError:
        return False
    handler = logging.handlers.SysLogHandler(address=address, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
    handler.setFormatter(OneLineFormatter(f"twindns-worker[{os.getpid()}]: %(levelname)s %(message)s"))
    _only(handler)
    return True
