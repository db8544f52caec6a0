"""How a worker's log lines look on its stderr.

Under systemd a worker's stderr is the supervisor's journal stream
($JOURNAL_STREAM names it). journald takes a line's priority from a
`<N>` prefix (sd-daemon(3)); without one every line is stored at 6 (info),
so `journalctl -p warning` would miss a worker's warnings.
"""
from __future__ import annotations

import logging
import os
from typing import IO, Mapping

# syslog priorities (sd-daemon.h): SD_ERR 3, SD_WARNING 4, SD_INFO 6, SD_DEBUG 7
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def under_journald(stream: IO, environ: Mapping[str, str]) -> bool:
    """True when `stream` is the very stream $JOURNAL_STREAM ("dev:inode") names."""
    dev, _, ino = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (ValueError, OSError, AttributeError):
        return False


class PriorityFormatter(logging.Formatter):
    """`<priority>` + the plain line; one journal entry per record."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\n", " | ")
        return f"<{_PRIORITY.get(record.levelno, 6)}>{text}"


def setup(stream: IO, environ: Mapping[str, str] = os.environ, level: int = logging.INFO) -> logging.Handler:
    """The root logger's one handler, writing to `stream`."""
    fmt = f"worker[{os.getpid()}] %(levelname)s %(message)s"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(PriorityFormatter(fmt) if under_journald(stream, environ) else logging.Formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
