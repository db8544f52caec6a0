"""The control socket: AF_UNIX stream at `control_socket`, mode 0660, one JSON
object per line each way. `{"op": "status"}` is for anyone who can connect;
mutating ops need uid 0 (SO_PEERCRED). A long op (restart) streams
`{"progress": "..."}` lines before its final reply (`{"ok": ...}`).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
from pathlib import Path
from typing import Awaitable, Callable

log = logging.getLogger("twindns.control")

MAX_REQUEST = 64 * 1024
READ_TIMEOUT = 10.0
SOCKET_MODE = 0o660
MUTATING = frozenset({"restart", "reload", "upgrade", "step_down"})

Progress = Callable[[str], None]
Handler = Callable[[dict, Progress], Awaitable[dict]]


class ControlSocketBusy(RuntimeError):
    """Another supervisor already answers on the control socket."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


def peer_pid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0]


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def bind_control_socket(path: str) -> socket.socket:
    """Bind the control socket; refuse if a live supervisor owns it, replace a stale file."""
    p = Path(path)
    p.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    if p.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
            pid = peer_pid(probe)
            raise ControlSocketBusy(f"{path}: another twindns supervisor is running (pid {pid}); "
                                    "`twindns run --takeover` replaces it without losing a query", pid)
        except (ConnectionRefusedError, FileNotFoundError):
            p.unlink(missing_ok=True)
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o117)     # never world-accessible, not even between bind and chmod
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)
    os.chmod(path, SOCKET_MODE)
    sock.listen(16)
    sock.setblocking(False)
    return sock


class Reporter:
    """Sends `{"progress": text}` lines for one request. `connection` is the
    client's socket: `twindns upgrade` hands it to the re-executed image,
    which sends the final reply."""

    def __init__(self, send: Callable[[dict], None], connection) -> None:
        self.send = send
        self.connection = connection

    def __call__(self, text: str) -> None:
        self.send({"progress": text})


class ControlServer:
    def __init__(self, handlers: dict[str, Handler]) -> None:
        self._handlers = handlers
        self._server: asyncio.AbstractServer | None = None
        self._path: str | None = None
        self._connections: set[asyncio.Task] = set()
        self._closing = False

    async def start(self, path: str) -> None:
        sock = bind_control_socket(path)
        self._path = path
        self._server = await asyncio.start_unix_server(self._accepted, sock=sock, limit=MAX_REQUEST)

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A connection's task is known from the moment it exists, so close() ends
        every one: a client accepted just before close() (its connection_made runs
        a turn or two later) was served by a task that outlived the loop and
        failed against it when collected."""
        if self._closing:               # close() began: not served
            writer.close()
            return
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._path is not None:
            Path(self._path).unlink(missing_ok=True)
            self._path = None
        # Connections still open (a client that sent nothing yet) end here,
        # not later against a closed loop.
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def send(obj: dict) -> None:
            writer.write(json.dumps(obj).encode() + b"\n")

        try:
            uid = peer_uid(writer.get_extra_info("socket"))
            try:
                line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
            except ValueError:          # the line outgrew the reader's limit
                send({"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"})
                await asyncio.wait_for(self._discard_rest(reader, writer), READ_TIMEOUT)
                return
            if not line:
                return
            reply = await self._dispatch(line, uid, Reporter(send, writer.get_extra_info("socket")))
            send(reply)
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError, asyncio.LimitOverrunError, ValueError) as e:
            log.debug("control connection dropped: %s", e)
        finally:
            writer.close()

    @staticmethod
    async def _discard_rest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """After an oversized request: our error is sent and our side shut;
        read the client's remaining bytes away, so closing does not reset
        the connection before the client has read the error."""
        await writer.drain()
        writer.write_eof()
        while await reader.read(MAX_REQUEST):
            pass

    async def _dispatch(self, line: bytes, uid: int, progress: Progress) -> dict:
        if len(line) > MAX_REQUEST:
            return {"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"}
        try:
            request = json.loads(line)
        except RecursionError:
            return {"ok": False, "error": "request nested too deeply: send one flat object, e.g. {\"op\": \"status\"}"}
        except ValueError:
            return {"ok": False, "error": 'not JSON: send one object per line, e.g. {"op": "status"}'}
        op = request.get("op") if isinstance(request, dict) else None
        handler = self._handlers.get(op) if isinstance(op, str) else None
        if handler is None:
            return {"ok": False, "error": f"unknown op {op!r}; known: {', '.join(sorted(self._handlers))}"}
        if op in MUTATING and uid != 0:
            return {"ok": False, "error": f"{op} needs root (uid 0); you are uid {uid}"}
        return await handler(request, progress)
