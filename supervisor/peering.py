"""Linking the two serving workers so the pair acts as one cache
(worker/peer.py says what flows over the link, and why).

Each tick the pool asks `link_if_due()`: when both slots' current workers
are ready and are not the pair linked last, they get the two ends of a new
AF_UNIX SOCK_SEQPACKET socketpair over their control channels (op `peer`,
SCM_RIGHTS), with a new claim table both map (worker/claims.py: which of
them asks upstream for a key). A worker drops its older link when it gets a new one, so after
a replacement the new worker and its sibling are linked within a tick.
Best effort: unlinked, each worker resolves every key itself.
"""
from __future__ import annotations

import logging
import os
import socket

from contract.claimtable import make_table_fd
from supervisor import logs
from supervisor.channel import hand_fds
from supervisor.states import SlotState

log = logging.getLogger("twindns.peering")

LINK_REPLY_WITHIN = 1.0
# The socketpair keeps the kernel's default buffers (~208 KiB) on purpose: a
# reply to an ask never needs more (the owner holds it in a backlog until the
# link drains, worker/peer.py), and more room only lets more asks pile up in
# front of a sibling that has stopped reading (hung, until the probes replace
# it); the asker gives up on such a sibling after 0.5 s of silence
# (worker/peer_misses.py, PEER_STALL).


def serving_pair(pool) -> tuple | None:
    """The two current workers when both are ready and healthy, else None."""
    pair = []
    for slot in pool.slots.values():
        w = slot.current
        if w is None or w.state is not SlotState.READY or w.kill_cause is not None or w.runtime is None:
            return None
        pair.append(w)
    return tuple(pair) if len(pair) == 2 else None


def link_if_due(pool) -> None:
    pair = serving_pair(pool)
    if pair is None:
        return
    pids = tuple(w.pid for w in pair)
    if pool.peers_linked == pids:
        return
    pool.peers_linked = pids
    pool.background(link(*pair))


async def link(a, b) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        table = (make_table_fd(),)
    except OSError as e:        # the link still works: the workers split misses by the crc32 rule
        logs.event(log, "claim_table_failed", logging.WARNING, error=e)
        table = ()
    try:
        error = await hand_fds([(a.runtime.channel, "peer", (ours.fileno(), *table)),
                                (b.runtime.channel, "peer", (theirs.fileno(), *table))], LINK_REPLY_WITHIN)
    finally:
        ours.close()
        theirs.close()
        for fd in table:
            os.close(fd)
    if error is None:
        logs.event(log, "peers_linked", a=a.pid, b=b.pid)
    else:
        logs.event(log, "peer_link_failed", logging.WARNING, a=a.pid, b=b.pid, error=error)
