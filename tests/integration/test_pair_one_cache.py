"""The pair behaves as one cache (worker/peer.py): what one worker learns
from upstream the other serves as a hit, and identical misses arriving at
both workers at once go upstream once. Clients are real sockets with fresh
source ports, so the kernel spreads them over both workers."""
from __future__ import annotations

import os
import re
import select
import signal
import time

import dns.message
import dns.rrset
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


def upstream_ports(netns, pid: int) -> set[int]:
    """The local ports of the UDP sockets process `pid` has open (its upstream sockets among them)."""
    out = netns.run(["ss", "-Huanp"]).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if f"pid={pid}," in line}


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


def test_negative_answers_are_one_upstream_query_per_name_across_the_pair(sup, netns, upstream):
    """NXDOMAIN and NODATA (cached for the SOA minimum, 30 s) reach the other worker too."""
    import dns.rcode
    names = [(f"nx{i}.test", "A", dns.rcode.NXDOMAIN) for i in range(40)] + \
            [("a.test", rdtype, dns.rcode.NOERROR) for rdtype in ("MX", "TXT", "SRV", "CAA", "NS", "PTR")]
    before = upstream.queries()
    for times in (1, 5):        # apart by more than a claim outlives its miss: told, not asked for
        for name, rdtype, rcode in names:
            for _ in range(times):
                reply = ns_query(netns, (LISTEN, 53), dns.message.make_query(name, rdtype))
                assert reply.rcode() == rcode and not reply.answer and reply.authority, reply
        time.sleep(0.2)
    assert upstream.queries() - before == len(names)


def counter(netns, name: str) -> float:
    """A twindns_<name>_total counter, summed over the workers (the supervisor's /metrics)."""
    body = netns.run(["curl", "-sS", "--max-time", "5", f"http://{LISTEN}:9253/metrics"]).stdout
    found = re.search(rf"^twindns_{name}_total (\S+)$", body, re.M)
    assert found, f"no twindns_{name}_total in /metrics"
    return float(found.group(1))


def counted(netns, name: str, at_least: float, timeout: float = 5.0) -> float:
    """The counter once it reaches `at_least` (the workers' STATS are polled every probe)."""
    deadline = time.monotonic() + timeout
    while (value := counter(netns, name)) < at_least and time.monotonic() < deadline:
        time.sleep(0.2)
    return value


def test_identical_misses_at_both_workers_go_upstream_once(sup, netns, upstream):
    names = [f"burst{i}.hit.test" for i in range(60)]
    before, asks = upstream.queries(), counter(netns, "peer_asks")
    for name in names:
        burst(netns, name, 16)
    assert upstream.queries() - before == len(names)
    # The second worker to miss a name asked the first (twindns_peer_asks_total), not upstream.
    assert counted(netns, "peer_asks", asks + 1) > asks


def test_a_lone_miss_goes_upstream_from_the_worker_it_reached(sup, netns, upstream):
    """A new name is resolved by whichever worker got it (worker/claims.py),
    not asked of the other: with B stopped, every name that reached A is
    answered at once. (Under the crc32 owner rule alone, A asked the stopped
    B for half of them and answered those after its 0.5 s fallback.) The
    names queued at B are answered once it runs again."""
    names = [f"lone{i}.hit.test" for i in range(40)]
    asks, misses = counter(netns, "peer_asks"), counter(netns, "cache_misses")
    pid_b = sup.workers()["B"]["pid"]
    socks = [ns_socket(netns) for _ in names]
    arrived: dict[int, float] = {}
    os.kill(pid_b, signal.SIGSTOP)
    try:
        sent = time.monotonic()
        for name, s in zip(names, socks):
            s.sendto(dns.message.make_query(name, "A").to_wire(), (LISTEN, 53))
        while time.monotonic() < sent + 1.0:
            ready, _, _ = select.select(socks, [], [], max(0.0, sent + 1.0 - time.monotonic()))
            for s in ready:
                reply = dns.message.from_wire(s.recv(4096))
                assert reply.answer and reply.answer[0][0].address == "192.0.2.1", reply
                arrived[socks.index(s)] = time.monotonic() - sent
    finally:
        os.kill(pid_b, signal.SIGCONT)
    try:
        assert len(arrived) >= 5, f"only {len(arrived)} of 40 fresh ports reached A"
        slow = {names[i]: round(t, 3) for i, t in arrived.items() if t > 0.3}
        assert not slow, f"answered by A only after a wait on B: {slow}"
        for i, s in enumerate(socks):
            if i not in arrived:
                s.settimeout(3)
                assert dns.message.from_wire(s.recv(4096)).answer
    finally:
        for s in socks:
            s.close()
    # Once both workers' counts are in (every miss of this test), no worker asked the other.
    counted(netns, "cache_misses", misses + len(names))
    assert counter(netns, "peer_asks") == asks


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


# A long timeout: no re-ask of a held name (at half of it) while the test holds it,
# and the asker's fallback (timeout + 0.5 s) comes long after the 1.6 s allowed.
HELD_ZONE = '[[upstream]]\nzone = "held.test"\nservers = ["127.0.0.9:53"]\ntimeout = 4.0\n'


def test_a_worker_busy_for_a_moment_still_gets_the_answers_it_asked_its_peer_for(netns, upstream, tmp_path):
    """Worker A asks B for names B resolves (each name comes from 4 fresh
    ports at once, so most reach both workers, and the second to miss one
    asks the first, worker/claims.py), then A stops reading (SIGSTOP: busy, as on
    a 2-core node during a burst or a sibling's start) while B answers a flood of
    other misses, each told to A over the link. When B's answers for A's asks
    come, the link is full: they must wait for A, not be dropped (a dropped one
    left A's clients waiting out the 2.5 s fallback, lost to a client with a 2 s
    timeout; tests/integration/test_ops_upgrade.py lost 18-420 that way)."""
    held = ns_socket(netns)
    held.bind(("127.0.0.9", 53))                 # held.test's upstream: answered by hand, below
    held.settimeout(5)
    sup = Supervisor(netns, write_config(tmp_path / "twindns.toml", extra=HELD_ZONE))
    clients: list = []
    try:
        sup.wait_ready()
        linked(sup)
        pid_a = sup.workers()["A"]["pid"]
        names = [f"h{i}.held.test" for i in range(64)]
        for name in names:                       # fresh ports: spread over both workers
            for _ in range(4):
                s = ns_socket(netns)
                s.settimeout(5)
                s.sendto(dns.message.make_query(name, "A").to_wire(), (LISTEN, 53))
                clients.append((name, s))
        asked = []
        while len(asked) < len(names):           # one upstream query per name, from the first to miss it
            data, addr = held.recvfrom(4096)
            asked.append((dns.message.from_wire(data), addr))
        assert sorted(str(q.question[0].name).lower() for q, _ in asked) == sorted(n + "." for n in names)
        ports_of_a = upstream_ports(netns, pid_a)
        resolved_by_a = {str(q.question[0].name).lower() for q, addr in asked if addr[1] in ports_of_a}
        assert 8 <= len(resolved_by_a) <= 56, resolved_by_a      # both resolve some: each asks the other
        started = time.monotonic()
        os.kill(pid_a, signal.SIGSTOP)
        try:
            flood = [ns_socket(netns) for _ in range(32)]
            for i in range(6000):                # ~3,000 land on B: each told to A, >> the default 208 KiB
                flood[i % 32].sendto(dns.message.make_query(f"f{i}.hit.test", "A").to_wire(), (LISTEN, 53))
            time.sleep(0.5)                      # B resolves its share and tells A
            for q, addr in asked:
                reply = dns.message.make_response(q)
                reply.answer.append(dns.rrset.from_text(q.question[0].name, 300, "IN", "A", "192.0.2.9"))
                held.sendto(reply.to_wire(), addr)
            time.sleep(0.2)
        finally:
            os.kill(pid_a, signal.SIGCONT)
        for name, s in clients:
            s.settimeout(max(0.01, started + 1.6 - time.monotonic()))
            try:
                reply = dns.message.from_wire(s.recv(4096))
            except TimeoutError:
                raise AssertionError(f"{name}: no answer 1.6 s after the pause (the peer fallback "
                                     "is at 4.5 s: its answer was dropped)") from None
            assert reply.answer and reply.answer[0][0].address == "192.0.2.9", (name, reply)
        answered = 0
        for s in flood:
            s.settimeout(3)
            while True:
                try:
                    s.recv(4096)
                except TimeoutError:
                    break
                answered += 1
                s.settimeout(0.2)
        assert answered == 6000
        # A did not give up on B and ask B's held names upstream itself (B's
        # replies were waiting when it woke: it polls the link first). B may
        # have given up on the stopped A and asked the names A resolves again,
        # which is right (A sent nothing for 0.5 s).
        asked_again = []
        held.settimeout(0.2)
        try:
            while True:
                asked_again.append(dns.message.from_wire(held.recvfrom(4096)[0]).question[0].name)
        except TimeoutError:
            pass
        assert {str(n).lower() for n in asked_again} <= resolved_by_a, [str(n) for n in asked_again]
    finally:
        for _, s in clients:
            s.close()
        held.close()
        sup.terminate()


def test_a_popular_name_is_refreshed_once_for_the_pair_and_stays_a_hit_at_both(netns, upstream, tmp_path):
    """prefetch with max_ttl = 10: a hit in the last second of the answer's
    life refreshes it from upstream; hits at the other worker a moment later,
    before the refreshed answer has reached it (it rides the next datagram,
    up to 20 ms), ask the first worker for its fresh copy instead of
    upstream. So the pair refreshes the name once, and every ask after the
    old expiry is a hit at either worker."""
    sup = Supervisor(netns, write_config(tmp_path / "twindns.toml", top="[cache]\nmax_ttl = 10\nprefetch = true\n"))
    socks = [ns_socket(netns) for _ in range(16)]
    try:
        sup.wait_ready()
        linked(sup)
        name = "popular.hit.test"
        before = upstream.queries()
        stored = time.monotonic()
        ask_each(netns, [name], 1)                      # fetched by one worker, told to the other
        time.sleep(max(0.0, stored + 9.3 - time.monotonic()))
        first = ns_query(netns, (LISTEN, 53), dns.message.make_query(name, "A"))
        assert first.answer[0].ttl <= 1, "a hit in the last second: its worker refreshes the name"
        time.sleep(0.005)                               # refreshed there, not yet told to the other
        for s in socks:
            s.settimeout(5)
            s.sendto(dns.message.make_query(name, "A").to_wire(), (LISTEN, 53))
        ttls = [dns.message.from_wire(s.recv(4096)).answer[0].ttl for s in socks]
        assert all(t <= 1 or t >= 9 for t in ttls), ttls
        time.sleep(max(0.0, stored + 10.6 - time.monotonic()))      # the first answer has expired
        after = [ns_query(netns, (LISTEN, 53), dns.message.make_query(name, "A")) for _ in range(16)]
        assert all(r.answer and r.answer[0][0].address == "192.0.2.1" for r in after)
        assert upstream.queries() - before == 2, "the first fetch and one refresh, for both workers"
        assert all(8 <= r.answer[0].ttl <= 10 for r in after), "from the refreshed entry, at both workers"
    finally:
        for s in socks:
            s.close()
        sup.terminate()


def test_expired_names_are_served_stale_at_both_workers_while_the_upstream_is_silent(netns, upstream, tmp_path):
    """max_ttl = 2, upstream silent (SIGSTOP) after the names are cached at
    both workers: each name, asked from 16 sockets at once (so at both
    workers, one asking the other, which claimed it), is answered with its
    old address as a stale answer (TTL 30) after stale_client_timeout (1 s),
    not after the zone's 2 s timeout, by both workers."""
    sup = Supervisor(netns, write_config(tmp_path / "twindns.toml", top="[cache]\nmax_ttl = 2\n"))
    names = [f"stale{i}.hit.test" for i in range(4)]
    stopped = False
    try:
        sup.wait_ready()
        linked(sup)
        ask_each(netns, names, 1)
        sup.wait(lambda st: all(w["cache_entries"] >= len(names) for w in st["workers"]), 5, "every name in both")
        os.kill(upstream.proc.pid, signal.SIGSTOP)
        stopped = True
        time.sleep(2.2)                                  # every name has expired at both workers
        for name in names:
            socks = [ns_socket(netns) for _ in range(16)]
            try:
                started = time.monotonic()
                for s in socks:
                    s.settimeout(5)
                    s.sendto(dns.message.make_query(name, "A").to_wire(), (LISTEN, 53))
                replies = [dns.message.from_wire(s.recv(4096)) for s in socks]
                waited = time.monotonic() - started
            finally:
                for s in socks:
                    s.close()
            assert all(r.answer and r.answer[0][0].address == "192.0.2.1" and r.answer[0].ttl <= 30
                       for r in replies), [r.to_text() for r in replies if not r.answer]
            assert 0.9 <= waited < 1.6, f"{name}: answered after {waited:.2f} s"
    finally:
        if stopped:
            os.kill(upstream.proc.pid, signal.SIGCONT)
        sup.terminate()


def test_a_rolling_restart_hands_on_what_each_worker_was_told_too(sup, netns, upstream):
    """Names asked once each are an entry at the worker that fetched them and
    a told record at the other; `twindns restart` streams both kinds to the
    successors, so afterwards every name is a hit at either worker."""
    names = [f"told{i}.hit.test" for i in range(60)]
    ask_each(netns, names, 1)
    sup.wait(lambda st: all(w["cache_entries"] >= len(names) for w in st["workers"]), 5, "every name in both")
    seen = sup.output().count("cache handoff: stored")
    p = sup.cli("restart")
    assert p.returncode == 0, p.stderr
    sup.wait(lambda st: sup.output().count("cache handoff: stored") >= seen + 2, 10, "both caches handed on")
    before = upstream.queries()
    ask_each(netns, names, 4)
    assert upstream.queries() - before == 0, "every name a hit after the restart"


def test_a_silent_upstream_is_asked_only_by_the_worker_that_claimed_the_name(netns, upstream, tmp_path):
    """Zone slow.test's server never answers. A new name of it asked from 16
    sockets at once reaches both workers; the one that claimed it is heard
    from while it waits (worker/peer_misses.py HEARTBEAT), so the other does
    not take it for hung after PEER_STALL (0.5 s) and send the silent server
    the same query itself: every query the server gets comes from one worker."""
    silent = ns_socket(netns)
    silent.bind(("127.0.0.9", 53))
    silent.settimeout(0.05)
    slow_zone = '[[upstream]]\nzone = "slow.test"\nservers = ["127.0.0.9"]\ntimeout = 2.0\n'
    sup = Supervisor(netns, write_config(tmp_path / "twindns.toml", extra=slow_zone))
    socks = [ns_socket(netns) for _ in range(16)]
    try:
        pids = [w["pid"] for w in sup.wait_ready()["workers"]]
        linked(sup)
        for s in socks:
            s.sendto(dns.message.make_query("x.slow.test", "A").to_wire(), (LISTEN, 53))
        sources: list[int] = []
        ports: dict[int, set[int]] = {pid: set() for pid in pids}
        deadline = time.monotonic() + 1.8           # past PEER_STALL, within the zone's timeout
        while time.monotonic() < deadline:
            try:
                sources.append(silent.recvfrom(4096)[1][1])
            except TimeoutError:
                pass
            for pid in pids:
                ports[pid] |= upstream_ports(netns, pid)
        askers = {pid for pid in pids for port in sources if port in ports[pid]}
        assert sources and len(askers) == 1, (sources, ports)
    finally:
        for s in socks + [silent]:
            s.close()
        sup.terminate()
