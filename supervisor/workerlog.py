"""A worker's stderr and stdout: a pipe of its own, read on the supervisor's
loop and logged through the supervisor's logging (logger
`twindns.worker.SLOT`), so no worker holds the supervisor's log file or
journal stream (it could write into, or truncate, a file there).

Lines are cut at MAX_LINE, control characters replaced, and the worker's
own level word (`worker[PID] WARNING ...`) carried over; a line without one
(a traceback's) keeps the level of the line before it.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re

MAX_LINE = 4096
READ_SIZE = 65536
_LEVELED = re.compile(rb"^worker\[\d+\] (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class WorkerLog:
    """Reads one worker's log pipe `fd` (its WorkerHandles close it)."""

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop, slot: str) -> None:
        self.fd = fd
        self.loop = loop
        self.log = logging.getLogger(f"twindns.worker.{slot}")
        self.level = logging.INFO
        self.buf = b""
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self._take(data)

    def _take(self, data: bytes) -> None:
        lines = (self.buf + data).split(b"\n")
        self.buf = lines.pop()
        if len(self.buf) > MAX_LINE:
            lines.append(self.buf)
            self.buf = b""
        for line in lines:
            self._emit(line)

    def _emit(self, line: bytes) -> None:
        if not line:
            return
        cut = len(line) > MAX_LINE
        m = _LEVELED.match(line)
        if m:
            self.level = logging.getLevelName(m.group(1).decode())
        text = _CONTROL.sub("?", line[:MAX_LINE].decode(errors="replace"))
        self.log.log(self.level, "%s%s", text, " [line cut]" if cut else "")

    def close(self) -> None:
        """Log what is left in the pipe and stop reading (the worker has exited)."""
        if self.fd < 0:
            return
        self.loop.remove_reader(self.fd)
        while True:
            try:
                data = os.read(self.fd, READ_SIZE)
            except OSError:
                break
            if not data:
                break
            self._take(data)
        self._emit(self.buf)
        self.buf = b""
        self.fd = -1
