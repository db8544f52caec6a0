"""The worker's end of the supervisor's control channel: an AF_UNIX
SOCK_SEQPACKET socket, one JSON object per message (docs/internals.md)."""
from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Callable

log = logging.getLogger(__name__)

MAX_MESSAGE = 65536
DEFAULT_DRAIN_TIMEOUT = 5.0


class ControlChannel:
    """Answers `stats` and `drain` requests. The handlers only record what was
    asked (`request_drain`); the service's main coroutine does the work."""

    def __init__(self, sock: socket.socket, stats: Callable[[], dict],
                 request_drain: Callable[[float], None]) -> None:
        self.sock = sock
        self.stats = stats
        self.request_drain = request_drain
        self.loop = asyncio.get_running_loop()

    def start(self) -> None:
        self.sock.setblocking(False)
        self.loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            msg = self.sock.recv(MAX_MESSAGE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            msg = b""
        if not msg:
            # The supervisor is gone: nobody will ever ask us to drain.
            log.warning("control channel closed; draining")
            self.loop.remove_reader(self.sock.fileno())
            self.request_drain(DEFAULT_DRAIN_TIMEOUT)
            return
        self._send(self._handle(msg))

    def _handle(self, msg: bytes) -> dict:
        try:
            req = json.loads(msg)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return {"id": None, "ok": False, "error": f"not a JSON object: {e}"}
        if not isinstance(req, dict):
            return {"id": None, "ok": False, "error": "not a JSON object"}
        rid, op = req.get("id"), req.get("op")
        if op == "stats":
            return {"id": rid, "ok": True, "stats": self.stats()}
        if op == "drain":
            timeout = req.get("timeout", DEFAULT_DRAIN_TIMEOUT)
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
                return {"id": rid, "ok": False, "error": f"drain timeout {timeout!r}: expected seconds >= 0"}
            self.request_drain(float(timeout))
            return {"id": rid, "ok": True}
        return {"id": rid, "ok": False, "error": f"unknown op {op!r}: expected 'stats' or 'drain'"}

    def _send(self, obj: dict) -> None:
        try:
            self.sock.send(json.dumps(obj).encode())
        except OSError as e:
            log.warning("control channel: cannot send: %s", e)

    def send_final_stats(self) -> None:
        """The last word before a clean exit; waits briefly for buffer room."""
        self.loop.remove_reader(self.sock.fileno())
        self.sock.settimeout(1.0)
        self._send({"event": "stats", "stats": self.stats()})
