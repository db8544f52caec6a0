"""The worker's end of the supervisor's control channel: an AF_UNIX
SOCK_SEQPACKET socket, one JSON object per message (docs/internals.md)."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Callable

log = logging.getLogger(__name__)

MAX_MESSAGE = 65536
MAX_FDS = 2                     # `peer`: the link's socket and the pair's claim table
# Well below a SOCK_SEQPACKET socket's default send buffer (~208 KiB).
MAX_REPLY = 65536
DEFAULT_DRAIN_TIMEOUT = 5.0


CACHE_OPS = {"cache_send": "send", "cache_receive": "receive"}
TCP_OPS = {"tcp_send": "send", "tcp_receive": "receive"}


class ControlChannel:
    """Answers `stats`, `drain`, `cache_send`, `cache_receive`, `tcp_send`,
    `tcp_receive` and `peer` requests. The handlers only record what was
    asked (`request_drain`, `cache_pipe`, `tcp_pipe`, `link_peer`); the
    service does the work."""

    def __init__(self, sock: socket.socket, stats: Callable[[], dict],
                 request_drain: Callable[[float], None],
                 cache_pipe: Callable[[str, int], None] = lambda direction, fd: os.close(fd),
                 on_lost: Callable[[], None] | None = None,
                 link_peer: Callable[[int, int | None], None] | None = None,
                 tcp_pipe: Callable[[str, int], None] = lambda direction, fd: os.close(fd)) -> None:
        self.sock = sock
        # The supervisor is gone (the channel closed): by default drain; a supervised
        # worker instead serves on as an orphan (worker/orphan.py).
        self.on_lost = on_lost or (lambda: request_drain(DEFAULT_DRAIN_TIMEOUT))
        self.stats = stats
        self.request_drain = request_drain
        self.cache_pipe = cache_pipe
        self.link_peer = link_peer or _close_both
        self.tcp_pipe = tcp_pipe
        self.loop = asyncio.get_running_loop()

    def start(self) -> None:
        self.sock.setblocking(False)
        self.loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(self.sock, MAX_MESSAGE, MAX_FDS)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            msg, fds = b"", []
        if not msg:
            log.warning("control channel closed")
            self.loop.remove_reader(self.sock.fileno())
            self.on_lost()
            return
        self._send(self._handle(msg, fds))

    def _handle(self, msg: bytes, fds: list[int]) -> dict:
        """The reply; every fd that came with msg is taken over or closed."""
        reply, taken = self._reply(msg, fds)
        for fd in fds[taken:]:
            os.close(fd)
        return reply

    def _reply(self, msg: bytes, fds: list[int]) -> tuple[dict, int]:
        """(the reply, how many of the request's fds were handed on, from the first)."""
        fd = fds[0] if fds else None
        try:
            req = json.loads(msg)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return {"id": None, "ok": False, "error": f"not a JSON object: {e}"}, 0
        if not isinstance(req, dict):
            return {"id": None, "ok": False, "error": "not a JSON object"}, 0
        rid, op = req.get("id"), req.get("op")
        if op == "stats":
            return {"id": rid, "ok": True, "stats": self.stats()}, 0
        if op == "drain":
            timeout = req.get("timeout", DEFAULT_DRAIN_TIMEOUT)
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
                return {"id": rid, "ok": False, "error": f"drain timeout {timeout!r}: expected seconds >= 0"}, 0
            self.request_drain(float(timeout))
            return {"id": rid, "ok": True}, 0
        if op in CACHE_OPS:
            if fd is None:
                return {"id": rid, "ok": False, "error": f"{op}: expected a pipe end passed with the message"}, 0
            self.cache_pipe(CACHE_OPS[op], fd)
            return {"id": rid, "ok": True}, 1
        if op in TCP_OPS:
            if fd is None:
                return {"id": rid, "ok": False, "error": f"{op}: expected a socket passed with the message"}, 0
            self.tcp_pipe(TCP_OPS[op], fd)
            return {"id": rid, "ok": True}, 1
        if op == "peer":
            if fd is None:
                return {"id": rid, "ok": False, "error": "peer: expected a socket passed with the message"}, 0
            # The pair's claim table (worker/claims.py) comes second, from a supervisor that makes one.
            table = fds[1] if len(fds) > 1 else None
            self.link_peer(fd, table)
            return {"id": rid, "ok": True}, len(fds[:2])
        return {"id": rid, "ok": False, "error": f"unknown op {op!r}: expected 'stats', 'drain', 'cache_send', "
                                                 f"'cache_receive', 'tcp_send', 'tcp_receive' or 'peer'"}, 0

    def _send(self, obj: dict) -> None:
        data = json.dumps(obj).encode()
        if len(data) > MAX_REPLY:
            # Never the case with bounded counters; an error the supervisor
            # can read beats a message the socket refuses (EMSGSIZE).
            log.warning("control channel: reply of %d bytes exceeds %d; sending an error", len(data), MAX_REPLY)
            data = json.dumps({"id": obj.get("id"), "ok": False,
                               "error": f"reply of {len(data)} bytes exceeds {MAX_REPLY}"}).encode()
        try:
            self.sock.send(data)
        except OSError as e:
            log.warning("control channel: cannot send: %s", e)

    def send_final_stats(self) -> None:
        """The last word before a clean exit; waits briefly for buffer room."""
        self.loop.remove_reader(self.sock.fileno())
        self.sock.settimeout(1.0)
        self._send({"event": "stats", "stats": self.stats()})


def _close_both(link: int, table: int | None) -> None:
    """A worker that keeps no peer link (tests, tools) closes what it was handed."""
    os.close(link)
    if table is not None:
        os.close(table)
