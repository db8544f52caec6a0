"""Logging for the supervisor: one line per event on stderr.

Under systemd, stderr goes to journald, which stamps the time itself and
reads a `<N>` syslog priority prefix (so `journalctl -p warning` works); the
line then carries no timestamp. Anywhere else each line starts with an ISO
8601 UTC time. Events are logged, never queries.

    from supervisor import logs
    logs.setup("info")
    log = logging.getLogger("twindns.arbiter")
    logs.event(log, "worker_state", slot="A", generation=3, old="starting", new="ready")
    # -> "worker_state slot=A generation=3 old=starting new=ready"
"""
from __future__ import annotations

import logging
import os
import sys
import time
from types import MappingProxyType
from typing import IO, Mapping

LEVELS = ("debug", "info", "warning", "error")

# RFC 5424 severities journald understands as a line prefix.
_SYSLOG_PRIORITY = MappingProxyType({
    logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4,
    logging.ERROR: 3, logging.CRITICAL: 2,
})


class LevelError(ValueError):
    """A log level name that is not one of LEVELS."""


def under_journald(stream: IO, environ: Mapping[str, str] = os.environ) -> bool:
    """True when `stream` is the journal stream systemd set up for us.

    JOURNAL_STREAM ("dev:inode") is inherited by children whose stderr may be
    redirected elsewhere, so it only counts if it names this very stream.
    """
    value = environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (ValueError, OSError, AttributeError):
        return False


class JournalFormatter(logging.Formatter):
    """`<priority>logger: message`; journald adds time, host and pid."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _SYSLOG_PRIORITY.get(record.levelno, 6)
        return f"<{prio}>{record.name}: {_one_line(super().format(record))}"


class IsoFormatter(logging.Formatter):
    """`2026-11-23T01:25:00.123Z LEVEL logger: message` (UTC)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        millis = int(record.msecs)
        text = _one_line(super().format(record))
        return f"{stamp}.{millis:03d}Z {record.levelname} {record.name}: {text}"


def _one_line(text: str) -> str:
    # A traceback or a multi-line message must stay one journal entry.
    return text.replace("\n", " | ")


def parse_level(name: str) -> int:
    """Map a config level name ("info") to a logging level."""
    if not isinstance(name, str) or name.lower() not in LEVELS:
        raise LevelError(f"log level {name!r}: expected one of {', '.join(LEVELS)}")
    return getattr(logging, name.upper())


def setup(level: str = "info", stream: IO | None = None,
          environ: Mapping[str, str] = os.environ) -> logging.Handler:
    """Route the `twindns` logger tree to `stream` (stderr) at `level`.

    Idempotent: calling it again (a reload that changed log_level) replaces
    the handler installed before instead of adding a second one.
    """
    stream = sys.stderr if stream is None else stream
    logger = logging.getLogger("twindns")
    for old in [h for h in logger.handlers if getattr(h, "twindns_handler", False)]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(stream)
    handler.twindns_handler = True
    handler.setFormatter(JournalFormatter() if under_journald(stream, environ) else IsoFormatter())
    logger.addHandler(handler)
    logger.setLevel(parse_level(level))
    logger.propagate = False
    return handler


def format_event(name: str, fields: Mapping[str, object]) -> str:
    """`name key=value ...`, values with spaces or quotes quoted."""
    parts = [name]
    for key, value in fields.items():
        text = str(value)
        if not text or any(c in text for c in ' "=\n\t'):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: object) -> None:
    """Log one event line: a name then key=value pairs (grep- and parse-friendly)."""
    if logger.isEnabledFor(level):
        logger.log(level, "%s", format_event(name, fields))
