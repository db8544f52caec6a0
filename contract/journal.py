"""Logging to journald through stderr, the same for the supervisor and its
workers: journald takes a line's priority from a `<N>` prefix
(sd-daemon(3)); without one every line is stored at 6 (info), and
`journalctl -p warning` misses warnings."""
from __future__ import annotations

import logging
import os
from types import MappingProxyType
from typing import IO, Mapping

# syslog priorities (sd-daemon.h): SD_CRIT 2, SD_ERR 3, SD_WARNING 4, SD_INFO 6, SD_DEBUG 7
SYSLOG_PRIORITY = MappingProxyType({logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4,
                                    logging.INFO: 6, logging.DEBUG: 7})


def priority(levelno: int) -> int:
    return SYSLOG_PRIORITY.get(levelno, 6)


def under_journald(stream: IO, environ: Mapping[str, str] = os.environ) -> bool:
    """True when `stream` is the journal stream systemd set up.

    JOURNAL_STREAM ("dev:inode") is inherited by children whose stderr may be
    redirected elsewhere, so it only counts if it names this very stream.
    """
    dev, _, ino = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (ValueError, OSError, AttributeError):
        return False
