"""The pair behaves as one cache (worker/peer.py): what one worker learns
from upstream the other serves as a hit, and identical misses arriving at
both workers at once go upstream once. Clients are real sockets with fresh
source ports, so the kernel spreads them over both workers."""
from __future__ import annotations

import os
import signal

import dns.message
import pytest

from helpers.twindns import LISTEN, Supervisor, write_config
from helpers.worker import ns_socket, query as ns_query

pytestmark = pytest.mark.netns


def linked(sup, times: int = 1) -> None:
    sup.wait(lambda st: sup.output().count("peers_linked") >= times, 10, "the two workers linked")


def ask_each(netns, names: list[str], times: int) -> None:
    """Each name `times` times in a row, each from a fresh socket (a fresh source port)."""
    for name in names:
        for _ in range(times):
            reply = ns_query(netns, (LISTEN, 53), dns.message.make_query(name, "A"))
            assert reply.answer and reply.answer[0][0].address == "192.0.2.1", reply


def burst(netns, name: str, sockets: int) -> None:
    """The same new name from `sockets` sockets at once: misses in flight at both workers."""
    socks = [ns_socket(netns) for _ in range(sockets)]
    try:
        for s in socks:
            s.settimeout(5)
            s.sendto(dns.message.make_query(name, "A").to_wire(), (LISTEN, 53))
        for s in socks:
            reply = dns.message.from_wire(s.recv(4096))
            assert reply.answer, reply
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def sup(netns, upstream, tmp_path):
    s = Supervisor(netns, write_config(tmp_path / "twindns.toml"))
    s.wait_ready()
    linked(s)
    yield s
    s.terminate()


def test_one_upstream_query_per_name_across_the_pair(sup, netns, upstream):
    names = [f"pair{i}.hit.test" for i in range(200)]
    before = upstream.queries()
    ask_each(netns, names, 6)
    assert upstream.queries() - before == len(names)
    # both workers hold every name, though each was fetched by one of them
    sup.wait(lambda st: all(w["cache_entries"] >= len(names) for w in st["workers"]), 5, "every name in both")


def test_identical_misses_at_both_workers_go_upstream_once(sup, netns, upstream):
    names = [f"burst{i}.hit.test" for i in range(60)]
    before = upstream.queries()
    for name in names:
        burst(netns, name, 16)
    assert upstream.queries() - before == len(names)


def test_a_lone_worker_resolves_everything_and_the_respawn_links_again(sup, netns, upstream):
    victim = sup.workers()["B"]["pid"]
    os.kill(victim, signal.SIGKILL)
    names = [f"alone{i}.hit.test" for i in range(30)]
    ask_each(netns, names, 2)                        # answered meanwhile, by A alone or the respawn
    sup.wait(lambda st: st["ready_workers"] == 2 and st["workers"][1]["pid"] != victim, 20, "B respawned")
    linked(sup, 2)
    names = [f"again{i}.hit.test" for i in range(100)]
    before = upstream.queries()
    ask_each(netns, names, 4)
    assert upstream.queries() - before == len(names)
