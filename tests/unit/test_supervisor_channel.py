"""hand_fds() (supervisor/channel.py) says what went wrong when a worker
does not take its fd: the text goes into the peer_link_failed and cache
handoff events an operator reads. A worker stopped with SIGSTOP neither
replies nor closes; one that exits closes its end."""
from __future__ import annotations

import asyncio
import os
import socket

from supervisor.channel import ControlChannel, hand_fds


def outcome(close_worker_end: bool) -> str | None:
    async def scenario():
        ours, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        channel = ControlChannel(ours, asyncio.get_running_loop(), lambda _event: None)
        r, w = os.pipe()
        try:
            if close_worker_end:
                asyncio.get_running_loop().call_later(0.05, worker.close)
            return await hand_fds([(channel, "peer", (r,))], reply_within=0.3)
        finally:
            channel.close()
            for fd in (r, w):
                os.close(fd)
            ours.close()
            worker.close()
    return asyncio.run(scenario())


def test_a_silent_worker_is_named_by_op_and_how_long_it_was_waited_for():
    assert outcome(close_worker_end=False) == "peer: no reply within 0.3 s"


def test_a_worker_that_closes_its_channel_is_told_apart_from_a_silent_one():
    error = outcome(close_worker_end=True)
    assert error and error.startswith("peer") and "closed" in error and "no reply" not in error
