"""The supervisor's end of a worker's control channel: JSON objects over a
SOCK_SEQPACKET socketpair, requests with ids, unsolicited events
(docs/internals.md, "Control channel")."""
from __future__ import annotations

import asyncio
import itertools
import json
import socket
from typing import Callable

MAX_MESSAGE = 1 << 20


class ChannelClosed(ConnectionError):
    """The worker's end of the control channel is gone."""


class ControlChannel:
    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop,
                 on_event: Callable[[dict], None]) -> None:
        self._sock = sock
        self._loop = loop
        self._on_event = on_event
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self.closed = False
        loop.add_reader(sock.fileno(), self._readable)

    async def request(self, op: str, reply_within: float, fds: tuple[int, ...] = (), **fields) -> dict:
        """Send {"op": op, ...} (with `fds` attached, SCM_RIGHTS; ours stay
        open); return the reply, or raise ChannelClosed / TimeoutError."""
        if self.closed:
            raise ChannelClosed(op)
        rid = next(self._ids)
        fut = self._loop.create_future()
        self._waiting[rid] = fut
        try:
            socket.send_fds(self._sock, [json.dumps({"id": rid, "op": op, **fields}).encode()], list(fds))
            return await asyncio.wait_for(fut, reply_within)
        except TimeoutError:
            # An OSError too: caught below, it became a ChannelClosed with no text.
            raise
        except OSError as e:
            raise ChannelClosed(f"{op}: {e}") from None
        finally:
            self._waiting.pop(rid, None)

    def _readable(self) -> None:
        while True:
            try:
                data = self._sock.recv(MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self.close()
                return
            try:
                msg = json.loads(data)
            except ValueError:
                continue   # a garbled message is dropped; the request that wanted it times out
            if not isinstance(msg, dict):
                continue
            fut = self._waiting.get(msg.get("id")) if "id" in msg else None
            if fut is not None and not fut.done():
                fut.set_result(msg)
            elif "event" in msg:
                self._on_event(msg)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._loop.remove_reader(self._sock.fileno())
        except (ValueError, OSError):
            pass
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(ChannelClosed("worker closed the control channel"))


async def hand_fds(requests: list[tuple["ControlChannel", str, tuple[int, ...]]],
                   reply_within: float = 1.0) -> str | None:
    """Send each (channel, op, fds) in turn (SCM_RIGHTS; the caller closes
    its fds afterwards); None when every worker took its fds, else what
    went wrong (e.g. a worker older than the op). Used for the cache
    handoff and the peer link."""
    try:
        for channel, op, fds in requests:
            reply = await channel.request(op, reply_within, fds=fds)
            if not reply.get("ok"):
                return f"{op}: {reply.get('error')}"
    except TimeoutError:
        # A stopped (SIGSTOP) or hung worker: no text in the exception to show.
        return f"{op}: no reply within {reply_within:g} s"
    except ChannelClosed as e:
        return str(e) or f"{op}: the worker closed its channel"
    return None
