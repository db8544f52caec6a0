"""The supervisor's HTTP endpoints (`/health`, `/metrics`): a deliberately
small asyncio HTTP/1.1 server. GET and HEAD only, one request per
connection (`Connection: close`), request head bounded in size and in time,
a bounded number of connections at once; when they are all taken, the one
that has been sending its request head longest is closed for a new one.

The arbiter supplies the handlers; each returns (status, content type, body)
and must not block:

    routes = {"/health": health_response, "/metrics": metrics_response}
    for endpoint, paths in plan(config.health_listen, config.metrics_listen):
        sock = bind_listener(endpoint)              # keep it: `twindns upgrade` hands it over
        server = HttpServer({p: routes[p] for p in paths})
        await server.start(sock)
    ...
    await server.close()

An endpoint of None disables that path. When health and metrics share an
address, one listener serves both.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import time
from http import HTTPStatus
from typing import Callable, Mapping, Protocol

Response = tuple[int, str, bytes]
Handler = Callable[[], Response]
TEXT = "text/plain; charset=utf-8"
MAX_REQUEST_HEAD = 8192
# The whole request head must arrive within this (not reset by each byte);
# short against a probe's timeout, so a held slot is soon free again.
READ_TIMEOUT = 2.0
MAX_CONNECTIONS = 64

log = logging.getLogger("twindns.http")


class Endpoint(Protocol):
    host: str
    port: int


def plan(health: Endpoint | None, metrics: Endpoint | None) -> list[tuple[Endpoint, tuple[str, ...]]]:
    """Listeners to open and the paths each serves (None disables a path)."""
    out: list[tuple[Endpoint, tuple[str, ...]]] = []
    for endpoint, path in ((health, "/health"), (metrics, "/metrics")):
        if not endpoint:
            continue
        for i, (ep, paths) in enumerate(out):
            if (ep.host, ep.port) == (endpoint.host, endpoint.port):
                out[i] = (ep, paths + (path,))
                break
        else:
            out.append((endpoint, (path,)))
    return out


def bind_listener(endpoint: Endpoint, backlog: int = 64) -> socket.socket:
    """A listening, non-blocking TCP socket on host:port (IPv4 or IPv6)."""
    family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((endpoint.host, endpoint.port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class HttpServer:
    """Serves `routes` ({path: handler}) on one listening socket."""

    def __init__(self, routes: Mapping[str, Handler], max_request_head: int = MAX_REQUEST_HEAD,
                 read_timeout: float = READ_TIMEOUT, max_connections: int = MAX_CONNECTIONS) -> None:
        self._routes = dict(routes)
        self._max_head = max_request_head
        self._read_timeout = read_timeout
        self._max_connections = max_connections
        # writer -> when its request head started, for connections still reading one
        self._reading: dict[asyncio.StreamWriter, float] = {}
        self._open = 0
        self.evicted = 0
        self._server: asyncio.base_events.Server | None = None
        self.sock: socket.socket | None = None     # the listener (`twindns upgrade` hands it over)

    async def start(self, sock: socket.socket) -> None:
        """Serve on an already listening socket."""
        self._server = await asyncio.start_server(self._serve, sock=sock, limit=self._max_head)
        self.sock = sock

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            self.sock = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= self._max_connections and not self._make_room():
            writer.close()                   # every slot is sending an answer: refuse at once
            return
        self._open += 1
        self._reading[writer] = time.monotonic()
        try:
            status, ctype, body, head_only = await self._respond(reader)
            self._reading.pop(writer, None)
            writer.write(_response_bytes(status, ctype, body, head_only))
            await asyncio.wait_for(writer.drain(), self._read_timeout)
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            self._reading.pop(writer, None)
            self._open -= 1
            writer.close()

    def _make_room(self) -> bool:
        """All slots are taken: the connection that has been sending its
        request head longest gives way, so clients holding half-written
        requests cannot starve a fresh probe (a kubelet liveness check)."""
        if not self._reading:
            return False
        oldest = min(self._reading, key=self._reading.__getitem__)
        del self._reading[oldest]
        self.evicted += 1
        oldest.transport.abort()      # its reader sees the end and its task frees the slot
        return True

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes, bool]:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self._read_timeout)
        except asyncio.TimeoutError:
            return 408, TEXT, b"request head not received in time\n", False
        except asyncio.LimitOverrunError:
            return 431, TEXT, b"request head too large\n", False
        except asyncio.IncompleteReadError:
            return 400, TEXT, b"incomplete request\n", False
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return 400, TEXT, b"bad request line\n", False
        method, target = parts[0], parts[1].split(b"?", 1)[0].decode("latin-1")
        if method not in (b"GET", b"HEAD"):
            return 405, TEXT, b"only GET and HEAD\n", False
        handler = self._routes.get(target)
        if handler is None:
            paths = " ".join(sorted(self._routes))
            return 404, TEXT, f"not found; try {paths}\n".encode(), method == b"HEAD"
        try:
            result = handler()
            # a handler may need to ask the workers first (/metrics: counters as of now)
            status, ctype, body = await result if inspect.isawaitable(result) else result
        except Exception:
            log.exception("handler for %s failed", target)
            return 500, TEXT, b"internal error\n", method == b"HEAD"
        return status, ctype, body, method == b"HEAD"


def _response_bytes(status: int, ctype: str, body: bytes, head_only: bool) -> bytes:
    reason = HTTPStatus(status).phrase
    extra = "Allow: GET, HEAD\r\n" if status == 405 else ""
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n"
            "Cache-Control: no-store\r\n\r\n")
    return head.encode("latin-1") + (b"" if head_only else body)


def text_response(status: int, body: str) -> Response:
    return status, TEXT, body.encode()
