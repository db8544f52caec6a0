"""The worker's end of the control channel takes the fds a request brings:
`peer` hands on the link's socket and, second, the pair's claim table
(worker/claims.py); fds the request has no use for are closed."""
from __future__ import annotations

import asyncio
import json
import os
import socket

from worker.channel import ControlChannel


def exchange(op: str, fds: list[int]) -> tuple[dict, list[tuple]]:
    """(the worker's reply to `op` with `fds` attached, the link_peer calls it made)."""
    linked: list[tuple] = []

    async def scenario() -> dict:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        channel = ControlChannel(theirs, lambda: {}, lambda timeout: None,
                                 link_peer=lambda fd, table: linked.append((fd, table)))
        channel.start()
        try:
            socket.send_fds(ours, [json.dumps({"id": 1, "op": op}).encode()], fds)
            ours.setblocking(False)
            return json.loads(await asyncio.get_running_loop().sock_recv(ours, 65536))
        finally:
            ours.close()
            theirs.close()

    return asyncio.run(scenario()), linked


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def test_peer_hands_on_the_link_and_the_claim_table():
    link, table = os.memfd_create("link"), os.memfd_create("table")
    reply, linked = exchange("peer", [link, table])
    assert reply == {"id": 1, "ok": True}
    assert len(linked) == 1 and all(is_open(fd) for fd in linked[0])      # the worker's copies, handed on
    assert os.fstat(linked[0][1]).st_ino == os.fstat(table).st_ino
    for fd in (link, table, *linked[0]):
        os.close(fd)


def test_peer_from_a_supervisor_without_a_table_links_on_the_crc32_rule():
    link = os.memfd_create("link")
    reply, linked = exchange("peer", [link])
    assert reply["ok"] and len(linked) == 1 and linked[0][1] is None
    os.close(linked[0][0])
    os.close(link)


def copies(name: str) -> int:
    """How many fds of this process are open on the memfd called `name`
    (counted by what they point at: fd numbers of unrelated files, such as a
    finished event loop's not yet collected, come and go)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(f"/memfd:{name} ")
        except OSError:
            pass            # closed while we looked
    return count


def test_fds_that_come_with_any_other_request_are_closed():
    a, b = os.memfd_create("stats-a"), os.memfd_create("stats-b")
    reply, linked = exchange("stats", [a, b])
    assert reply["ok"] and not linked
    assert copies("stats-a") == copies("stats-b") == 1       # ours; the worker's copies did not stay open
    os.close(a)
    os.close(b)
