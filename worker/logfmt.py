"""How a worker's log lines look on its stderr.

Under systemd a worker's stderr is the supervisor's journal stream
($JOURNAL_STREAM names it): each line then starts with its priority
(contract/journal.py says why).
"""
from __future__ import annotations

import logging
import os
from typing import IO, Mapping

from contract import journal


class PriorityFormatter(logging.Formatter):
    """`<priority>` + the plain line; one journal entry per record."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\n", " | ")
        return f"<{journal.priority(record.levelno)}>{text}"


def setup(stream: IO, environ: Mapping[str, str] = os.environ, level: int = logging.INFO) -> logging.Handler:
    """The root logger's one handler, writing to `stream`."""
    fmt = f"worker[{os.getpid()}] %(levelname)s %(message)s"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(PriorityFormatter(fmt) if journal.under_journald(stream, environ)
                         else logging.Formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
